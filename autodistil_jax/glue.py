"""GLUE: readers for the original TSV layout of all nine tasks, tokenisation, and the metrics
exactly as GLUE defines them.

The TSV quirks handled: CoLA has no header; MRPC's header starts with a byte-order mark; quoting
is off (RTE and others have sentences starting with a quote); MNLI has dev_matched and
dev_mismatched. A malformed row is an error naming its file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

import numpy as np

# config.glue.regression_bias: where a regression head's bias starts (finetune.head_bias).
REGRESSION_BIAS = ("zero", "label_mean")
# What the GLUE head reads (config.glue.head_input): "pooler", BERT's tanh(dense([CLS])) (the
# [CLS] state where the model has no pooler), as transformers' BertForSequenceClassification;
# "cls", the last layer's [CLS] state; "mean", the mean of the last layer's states over the real
# tokens (sentence-transformers' pooling, what a sentence-encoder teacher was trained to give).
HEAD_INPUTS = ("pooler", "cls", "mean")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  directory: str
  text_columns: tuple[str | int, ...]  # header names (or positions when there is no header)
  label_column: str | int
  labels: tuple[str, ...]  # empty: regression
  dev_splits: tuple[str, ...] = ("dev",)
  header: bool = True
  metrics: tuple[str, ...] = ("accuracy",)
  tfds_text: tuple[str, ...] = ("sentence1", "sentence2")  # text features in tfds glue/<name>

  @property
  def num_labels(self) -> int:
    return len(self.labels) or 1

  @property
  def is_regression(self) -> bool:
    return not self.labels


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", "CoLA", (3,), 1, ("0", "1"), header=False, metrics=("mcc",), tfds_text=("sentence",)),
    Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), tfds_text=("sentence",)),
    Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), metrics=("f1", "accuracy")),
    Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", (), metrics=("pearson", "spearman")),
    Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"),
         metrics=("f1", "accuracy"), tfds_text=("question1", "question2")),
    Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
         ("contradiction", "entailment", "neutral"), dev_splits=("dev_matched", "dev_mismatched"),
         tfds_text=("premise", "hypothesis")),
    Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
         tfds_text=("question", "sentence")),
    Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
    Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1")),
]}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


def get_task(name: str) -> Task:
  key = ALIASES.get(name.lower(), name.lower())
  if key not in TASKS:
    raise ValueError(f"unknown GLUE task {name!r}; choose from {sorted(TASKS)}")
  return TASKS[key]


@dataclasses.dataclass
class Examples:
  texts: list[tuple[str, ...]]
  labels: np.ndarray  # int32 class ids, or float32 scores for regression


TFDS_PREFIX = "tfds:"


def read_split(task: Task, glue_dir: str | os.PathLike, split: str) -> Examples:
  """A split from the GLUE TSV root `glue_dir`, or from tensorflow-datasets when `glue_dir` is
  "tfds:" (optionally "tfds:DATA_DIR"): both give the same examples in the same order."""
  if str(glue_dir).startswith(TFDS_PREFIX):
    return read_tfds(task, split, str(glue_dir)[len(TFDS_PREFIX):] or None)
  return read_tsv(task, glue_dir, split)


def read_tfds(task: Task, split: str, data_dir: str | None = None) -> Examples:
  """One split of tfds glue/<task> (prepared in the array_record format; no TensorFlow needed).

  GLUE's "dev" is tfds's "validation"; records are put back in file order (tfds shuffles them
  when preparing) and tfds class ids are mapped onto this task's label order (they differ for
  MNLI), so the examples equal read_tsv's.
  """
  import tensorflow_datasets as tfds
  import tensorflow_datasets.text.glue  # noqa: F401  (registers the glue builder)

  tfds_split = "validation" + split[3:] if split.startswith("dev") else split
  try:
    builder = tfds.builder(f"glue/{task.name}", data_dir=data_dir)
    source = builder.as_data_source(split=tfds_split)
  except Exception as e:  # not prepared, or no such split: say how to get it
    raise FileNotFoundError(f"tfds glue/{task.name} split {tfds_split!r} is not readable in "
                            f"{data_dir or 'the default tfds data_dir'} ({e}); prepare it with "
                            f"tfds.builder('glue/{task.name}').download_and_prepare("
                            "file_format='array_record') or use the GLUE TSV files") from e
  names = builder.info.features["label"].names if not task.is_regression else None
  if names is not None:  # tfds names for the 0/1 tasks ("acceptable", ...) stand for "0"/"1"
    ours = [str(i) if task.labels[0] == "0" else n for i, n in enumerate(names)]
    mapping = np.asarray([task.labels.index(label) for label in ours], np.int32)
  records = sorted(source, key=lambda r: int(r["idx"]))
  texts = [tuple(_text(r[f]) for f in task.tfds_text) for r in records]
  labels = [r["label"] if names is None else mapping[int(r["label"])] for r in records]
  if not texts:
    raise ValueError(f"tfds glue/{task.name} split {tfds_split!r} has no examples")
  return Examples(texts, np.asarray(labels, np.float32 if task.is_regression else np.int32))


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tsv_path(task: Task, glue_dir: str | os.PathLike, split: str) -> Path:
  return Path(glue_dir) / task.directory / f"{split}.tsv"


def identity(tasks: list[Task] | tuple[Task, ...], glue_dir: str) -> str:
  """What the tasks' data is: their TSV files' contents (records.files_identity), or the tfds spec."""
  from autodistil_jax import records

  if str(glue_dir).startswith(TFDS_PREFIX):
    return str(glue_dir)
  return records.files_identity(tsv_path(t, glue_dir, s) for t in tasks for s in ("train", *t.dev_splits))


def read_tsv(task: Task, glue_dir: str | os.PathLike, split: str) -> Examples:
  """One split of a task from the original GLUE TSV files under `glue_dir`."""
  path = tsv_path(task, glue_dir, split)
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: set config.data.glue_dir to the GLUE TSV root "
                            f"(the folder holding {task.directory}/)")
  raw_bytes = path.read_bytes()
  try:
    text = raw_bytes.decode("utf-8-sig")  # -sig drops MRPC's byte-order mark
  except UnicodeDecodeError as e:
    line = raw_bytes[:e.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (bad byte at offset {e.start}); convert the "
                     "file to UTF-8") from None
  rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
  if not any(rows):
    raise ValueError(f"{path} is empty: restore the task's {split}.tsv")
  if task.header:
    header, rows, first_line = rows[0], rows[1:], 2
    try:
      text_idx = [header.index(c) for c in task.text_columns]
      label_idx = header.index(task.label_column)
    except ValueError as e:
      raise ValueError(f"{path}:1: header {header} lacks a column {task.text_columns} / "
                       f"{task.label_column!r}") from e
    width = len(header)
  else:
    text_idx, label_idx, width, first_line = list(task.text_columns), task.label_column, None, 1
  texts, labels = [], []
  for n, row in enumerate(rows, start=first_line):
    if not row:
      continue
    if (width is not None and len(row) < width) or len(row) <= max(*text_idx, label_idx):
      raise ValueError(f"{path}:{n}: malformed row with {len(row)} columns (expected "
                       f"{width or max(*text_idx, label_idx) + 1}); fix or remove the line")
    raw = row[label_idx].strip()
    if task.is_regression:
      try:
        score = float(raw)
      except ValueError as e:
        raise ValueError(f"{path}:{n}: label {raw!r} is not a number") from e
      if not np.isfinite(score):
        raise ValueError(f"{path}:{n}: label {raw!r} is not a finite number; fix or remove the line")
      labels.append(score)
    else:
      if raw not in task.labels:
        raise ValueError(f"{path}:{n}: label {raw!r} is not one of {list(task.labels)}")
      labels.append(task.labels.index(raw))
    texts.append(tuple(row[i] for i in text_idx))
  if not texts:
    raise ValueError(f"{path} has no examples")
  dtype = np.float32 if task.is_regression else np.int32
  return Examples(texts, np.asarray(labels, dtype))


def write_training_sentences(glue_dir: str | os.PathLike, tasks: list[str], target: Path) -> Path:
  """The unlabeled sentences of the tasks' training sets (labels are not read), one per line,
  each once, written to `target` (kept when it exists): a transfer corpus of sentences."""
  from autodistil_jax.workdir import write_text_atomic

  target = Path(target)
  if target.is_file():
    return target
  seen: dict[str, None] = {}
  for name in tasks:
    for row in read_split(get_task(name), glue_dir, "train").texts:
      seen.update(dict.fromkeys(t.strip() for t in row if t.strip()))
  target.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomic(target, "\n".join(seen) + "\n")
  return target


def seeded_subset(n: int, keep: int, seed: int) -> np.ndarray:
  """Sorted indices of a seeded random `keep` of `n` examples (all of them when keep is 0 or >= n)."""
  if keep <= 0 or keep >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).permutation(n)[:keep])


def encode(examples: Examples, tokenizer, seq_len: int) -> dict[str, np.ndarray]:
  """Single sentences or sentence pairs -> padded ids, mask and segment ids of length seq_len."""
  columns = list(zip(*examples.texts, strict=True))
  second = list(columns[1]) if len(columns) > 1 else None
  enc = tokenizer(list(columns[0]), second, truncation="longest_first" if second else True,
                  max_length=seq_len, padding="max_length", return_tensors="np")
  return {"input_ids": enc["input_ids"].astype(np.int32),
          "attention_mask": enc["attention_mask"].astype(np.int32),
          "token_type_ids": enc["token_type_ids"].astype(np.int32), "labels": examples.labels}


def compute_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """GLUE's metrics for `task`: predictions are class ids (or scores for STS-B)."""
  from scipy import stats
  from sklearn import metrics

  out = {}
  for name in task.metrics:
    if name == "accuracy":
      out[name] = float(metrics.accuracy_score(labels, predictions))
    elif name == "f1":
      out[name] = float(metrics.f1_score(labels, predictions))
    elif name == "mcc":
      out[name] = float(metrics.matthews_corrcoef(labels, predictions))
    elif name == "pearson":
      out[name] = float(stats.pearsonr(predictions, labels)[0])
    elif name == "spearman":
      out[name] = float(stats.spearmanr(predictions, labels)[0])
  return out


def main_score(task: Task, scores: dict[str, float]) -> float:
  """The one number per task in a GLUE table (F1/accuracy and Pearson/Spearman averaged)."""
  return float(np.mean([scores[m] for m in task.metrics]))


def trivial_score(task: Task, train_labels: np.ndarray, dev_labels: np.ndarray) -> float:
  """The main score of a model that learnt nothing: the training set's majority class predicted
  for every dev example (0 for STS-B, whose correlations a constant cannot have)."""
  if task.is_regression:
    return 0.0
  majority = np.bincount(np.asarray(train_labels, np.int64)).argmax()
  return main_score(task, compute_metrics(task, np.full(len(dev_labels), majority), dev_labels))
