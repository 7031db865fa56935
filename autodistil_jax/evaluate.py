"""The task-agnostic quality suite: how good is an encoder, with no fine-tuning?

For any subject (the teacher, an export, a sliced or random student, or many students inside
their SuperLM through the masked model, side by side under one compiled program), four measures:
- relation: the held-out self-attention relation-distillation loss to the teacher (the search's
  criterion; lower is better);
- cka: linear CKA of its final token states against the teacher's on the same held-out text;
- sts_spearman / sts_pearson: zero-shot STS-B dev, cosine of pooled sentence embeddings;
- probe_<task>: logistic regression on frozen pooled features (pairs: u, v, |u-v|, u*v), scored on
  dev with GLUE's metric for that task; probe_avg is their mean.
Everything is deterministic: fixed subsets (seeded), no dropout, lbfgs on fixed features.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from autodistil_jax import distill, glue, measures
from autodistil_jax.model import (
  BertEncoder,
  EncoderConfig,
  count_params,
  extract_student,
  get_params,
  random_student,
)
from autodistil_jax.search_space import Arch, Vocab, arch_table, exact_flops, exact_params


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
  pooling: str
  probe_tasks: tuple[str, ...]
  probe_train_examples: int  # 0: the whole training set
  sts_examples: int  # 0: all of STS-B dev; else a seeded subset (quick configs and tests)
  seq_len: int
  batch_size: int
  students_per_call: int
  loss: str
  seed: int
  cost_seq_len: int  # FLOPs are reported at this length (the search's)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, pooling: str) -> SuiteSettings:
    """The suite's settings from config.evaluate, checked: one line per problem, before any work."""
    e = config.evaluate
    problems = []
    if e.pooling and e.pooling not in measures.POOLINGS:
      problems.append(f"config.evaluate.pooling={e.pooling!r} is not one of {measures.POOLINGS} (or '')")
    tasks = [glue.get_task(t) for t in e.probe_tasks]
    problems += [f"config.evaluate.probe_tasks: {t.name} is a regression task; probes classify"
                 for t in tasks if t.is_regression]
    for key, low in (("probe_train_examples", 0), ("sts_examples", 0), ("seq_len", 8), ("batch_size", 1),
                     ("students_per_call", 1)):
      if not isinstance(e[key], int) or e[key] < low:
        problems.append(f"config.evaluate.{key}={e[key]!r} must be an integer >= {low}")
    if problems:
      raise ValueError("; ".join(problems))
    return cls(pooling=e.pooling or pooling, probe_tasks=tuple(t.name for t in tasks),
               probe_train_examples=e.probe_train_examples, sts_examples=e.sts_examples,
               seq_len=e.seq_len, batch_size=e.batch_size, students_per_call=e.students_per_call,
               loss=config.train.loss, seed=int(config.seed), cost_seq_len=int(config.data.seq_len))


@dataclasses.dataclass
class Subject:
  """One model to score: dense at its full size (archs None) or students inside it by arch."""

  name: str
  kind: str  # teacher, searched, sliced, random, export, ...
  model: BertEncoder
  archs: Sequence[Arch] | None = None
  names: Sequence[str] | None = None  # one per arch (default: name + arch name)


@dataclasses.dataclass
class SuiteData:
  """Every input of the suite, tokenised once and shared by all subjects."""

  settings: SuiteSettings
  sentence_batches: list[tuple[dict[str, np.ndarray], np.ndarray]]  # (batch, sentence ids)
  num_sentences: int
  sts: tuple[np.ndarray, np.ndarray, np.ndarray]  # sentence ids a, b and gold scores
  probes: dict[str, dict[str, tuple]]  # task -> split -> (sentence ids per column, labels)
  heldout: list[dict[str, np.ndarray]]
  teacher_logits: list  # per held-out batch: Q-Q, K-K, V-V relation logits
  teacher_hidden: list  # per held-out batch: [B, T, H] final states
  teacher_sums: dict[str, np.ndarray]  # sy, yy, n for CKA


def _sentence_batches(texts: list[str], tokenizer, seq_len: int, batch_size: int, multiple: int = 16):
  """Sentences sorted by length, in batches padded to the longest row rounded up to `multiple`:
  a few compiled shapes, little padding."""
  ids = tokenizer(texts, truncation=True, max_length=seq_len)["input_ids"]
  order = np.argsort([len(x) for x in ids], kind="stable")
  out = []
  for start in range(0, len(order), batch_size):
    chosen = order[start:start + batch_size]
    length = min(seq_len, -(-max(len(ids[i]) for i in chosen) // multiple) * multiple)
    tokens = np.zeros((batch_size, length), np.int32)
    for row, i in enumerate(chosen):
      tokens[row, :len(ids[i])] = ids[i]
    lengths = [len(ids[i]) for i in chosen] + [1] * (batch_size - len(chosen))  # filler rows: 1 token
    mask = np.arange(length)[None] < np.asarray(lengths)[:, None]
    out.append(({"input_ids": tokens, "attention_mask": mask.astype(np.int32),
                 "token_type_ids": np.zeros_like(tokens)}, chosen))
  return out


@dataclasses.dataclass
class SuiteTexts:
  """The suite's sentences (distinct, in first-seen order) and the measures' views of them."""

  sentences: list[str]
  sts: tuple[np.ndarray, np.ndarray, np.ndarray]  # sentence ids a, b and gold scores
  probes: dict[str, dict[str, tuple]]  # task -> "train"/"dev" -> (sentence ids per column, labels)


def read_texts(settings: SuiteSettings, glue_dir: str) -> SuiteTexts:
  """STS-B dev and the probe tasks' train (seeded subset) and dev splits. Cheap, and run before any
  other work, so a missing or malformed GLUE file stops the stage at once, naming the file."""
  sentences: dict[str, int] = {}
  index = lambda texts: np.asarray([sentences.setdefault(t, len(sentences)) for t in texts], np.int64)
  sts_dev = glue.read_split(glue.get_task("stsb"), glue_dir, "dev")
  keep = glue.seeded_subset(len(sts_dev.labels), settings.sts_examples, settings.seed)
  sts = (index([sts_dev.texts[i][0] for i in keep]), index([sts_dev.texts[i][1] for i in keep]),
         sts_dev.labels[keep])
  probes = {}
  for name in settings.probe_tasks:
    task = glue.get_task(name)
    probes[name] = {}
    for split in ("train", task.dev_splits[0]):
      ex = glue.read_split(task, glue_dir, split)
      keep = (glue.seeded_subset(len(ex.labels), settings.probe_train_examples, settings.seed)
              if split == "train" else np.arange(len(ex.labels)))
      columns = tuple(index([ex.texts[i][c] for i in keep]) for c in range(len(ex.texts[0])))
      probes[name]["train" if split == "train" else "dev"] = (columns, ex.labels[keep])
  return SuiteTexts(list(sentences), sts, probes)


def build_suite(settings: SuiteSettings, texts: SuiteTexts, tokenizer, teacher: BertEncoder,
                heldout: list[dict[str, np.ndarray]]) -> SuiteData:
  """Tokenises every distinct sentence of `texts` (read_texts) once and computes the teacher's
  held-out relation targets and token states."""
  batches = _sentence_batches(texts.sentences, tokenizer, settings.seq_len, settings.batch_size)
  graphdef, params = nnx.graphdef(teacher), get_params(teacher)
  relations = jax.jit(lambda p, b: _teacher_targets(nnx.merge(graphdef, p), b))
  targets = [relations(params, b) for b in heldout]
  sums = {"sy": 0.0, "yy": 0.0, "n": 0}
  for b, (_, hidden) in zip(heldout, targets, strict=True):
    y = np.asarray(hidden, np.float64)[b["attention_mask"].astype(bool)]
    sums = {"sy": sums["sy"] + y.sum(0), "yy": sums["yy"] + y.T @ y, "n": sums["n"] + len(y)}
  return SuiteData(settings, batches, len(texts.sentences), texts.sts, texts.probes, heldout,
                   [t[0] for t in targets], [t[1] for t in targets], sums)


def _teacher_targets(teacher: BertEncoder, batch):
  out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
  return distill.teacher_relations(out, teacher.config.heads), out.hidden


@functools.lru_cache(maxsize=32)
def _programs(config: EncoderConfig, masked: bool, pooling: str, loss: str):
  """(embed, heldout) jitted and vmapped over a chunk of archs; one compilation per shape."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0))))

  def forward(params, batch, arch):
    return nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"],
                                       batch["token_type_ids"], arch if masked else None)

  def embed(params, batch, arch):
    return measures.pool(forward(params, batch, arch).hidden, batch["attention_mask"], pooling)

  def heldout(params, batch, teacher_logits, teacher_hidden, arch):
    out = forward(params, batch, arch)
    width = arch[3] * config.head_size if masked else config.qkv_width
    relation = distill.distill_loss(teacher_logits, out, width, batch["attention_mask"], loss)
    valid = batch["attention_mask"].reshape(-1, 1).astype(jnp.float32)
    x = out.hidden.reshape(-1, out.hidden.shape[-1]) * valid
    y = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]) * valid
    return relation, x.sum(0), x.T @ x, y.T @ x

  return (jax.jit(jax.vmap(embed, in_axes=(None, None, 0))),
          jax.jit(jax.vmap(heldout, in_axes=(None, None, None, None, 0))))


def _arch_table(subject: Subject, chunk: int) -> list[np.ndarray]:
  """The subject's archs as [chunk, 4] int32 tables, the last one padded by repetition."""
  if subject.archs is None:
    return [subject.model.config.full_arch().as_array()[None]]
  archs = list(subject.archs)
  return [arch_table(archs[start:start + chunk], chunk) for start in range(0, len(archs), chunk)]


def _widths(subject: Subject) -> list[int]:
  return ([subject.model.config.hidden] if subject.archs is None else [a.hidden for a in subject.archs])


def score(subject: Subject, suite: SuiteData) -> list[dict]:
  """One row of measures per student of `subject` (one row for a dense model)."""
  s = suite.settings
  embed, heldout = _programs(subject.model.config, subject.archs is not None, s.pooling, s.loss)
  params = get_params(subject.model)
  widths = _widths(subject)
  rows = []
  for table in _arch_table(subject, s.students_per_call):
    count = min(len(table), len(widths) - len(rows))
    emb = np.zeros((len(table), suite.num_sentences, subject.model.config.hidden), np.float32)
    for batch, ids in suite.sentence_batches:
      emb[:, ids] = np.asarray(embed(params, batch, table))[:, :len(ids)]
    totals = [0.0, 0.0, 0.0, 0.0]
    for batch, logits, hidden in zip(suite.heldout, suite.teacher_logits, suite.teacher_hidden, strict=True):
      totals = [t + np.asarray(v, np.float64) for t, v in
                zip(totals, heldout(params, batch, logits, hidden, table), strict=True)]
    for k in range(count):
      width = widths[len(rows)]
      sums = {"sx": totals[1][k][:width], "xx": totals[2][k][:width, :width], "yx": totals[3][k][:, :width],
              **suite.teacher_sums}
      row = {"relation": float(totals[0][k] / len(suite.heldout)), "cka": measures.linear_cka(sums)}
      row.update(_sentence_measures(emb[k, :, :width], suite))
      rows.append(row)
  return rows


def _sentence_measures(emb: np.ndarray, suite: SuiteData) -> dict[str, float]:
  a, b, gold = suite.sts
  out = measures.zero_shot_sts(emb[a], emb[b], gold)
  main = []
  for name, splits in suite.probes.items():
    task = glue.get_task(name)
    feats = {}
    for split, (columns, _) in splits.items():
      parts = [emb[c] for c in columns]
      feats[split] = parts[0] if len(parts) == 1 else measures.pair_features(*parts)
    preds = measures.probe(feats["train"], splits["train"][1], feats["dev"], task)
    metrics = glue.compute_metrics(task, preds, splits["dev"][1])
    out.update({f"probe_{name}_{m}": 100 * v for m, v in metrics.items()})
    out[f"probe_{name}"] = 100 * glue.main_score(task, metrics)
    main.append(out[f"probe_{name}"])
  if main:
    out["probe_avg"] = float(np.mean(main))
  return out


def workdir_subjects(teacher: BertEncoder, exports: dict[str, BertEncoder],
                     in_superlm: dict[str, tuple[BertEncoder, Sequence[Arch]]], selected: set[str],
                     baselines: bool, seed: int) -> list[Subject]:
  """The teacher; each export ("searched" when the search selected it); selected students that
  were not exported, inside their SuperLM; and per architecture, when `baselines`, the same
  student sliced from the teacher and randomly initialised, right after it (gains at a glance)."""
  subjects = [Subject("teacher", "teacher", teacher)]

  def add_baselines(arch: Arch) -> None:
    if baselines:
      subjects.append(Subject(f"sliced-{arch.name}", "sliced", extract_student(teacher, arch)))
      subjects.append(Subject(f"random-{arch.name}", "random", random_student(teacher.config, arch, seed)))

  for name, model in exports.items():
    subjects.append(Subject(name, "searched" if name in selected else "export", model))
    add_baselines(model.config.full_arch())
  for space, (superlm, archs) in in_superlm.items():
    for arch in archs:
      subjects.append(Subject(space, "searched", superlm, [arch], [f"{space}-{arch.name}"]))
      add_baselines(arch)
  return subjects


def describe(subject: Subject, seq_len: int) -> list[dict]:
  """Name, kind, architecture and costs of each row `score` gives for `subject`."""
  c = subject.model.config
  if subject.archs is None:
    archs, names = [c.full_arch()], [subject.name]
    params = [count_params(subject.model)]
  else:
    archs = list(subject.archs)
    names = list(subject.names or [f"{subject.name}-{a.name}" for a in archs])
    vocab = Vocab(c.vocab_size, c.max_position, c.type_vocab_size)
    params = [exact_params(a, c.head_size, vocab, c.pooler) for a in archs]
  return [{"model": n, "kind": subject.kind, "arch": a.name, "params": p,
           "gflops": exact_flops(a, seq_len, c.head_size, c.pooler) / 1e9}
          for n, a, p in zip(names, archs, params, strict=True)]


def run_suite(subjects: Sequence[Subject], suite: SuiteData) -> list[dict]:
  """Every subject's rows: description and measures."""
  rows = []
  for subject in subjects:
    for info, measured in zip(describe(subject, suite.settings.cost_seq_len), score(subject, suite),
                              strict=True):
      rows.append({**info, **measured})
  return rows


# --- the stage -----------------------------------------------------------------------------------

def read_inputs(config: ml_collections.ConfigDict) -> tuple[SuiteSettings, SuiteTexts]:
  """The suite's settings and texts, checked and read before any other work (bad settings or GLUE
  files stop the stage here, naming the key or file)."""
  if not config.data.glue_dir:
    raise ValueError("config.data.glue_dir is not set: the suite reads STS-B dev and the probe tasks "
                     "from it; pass --config.data.glue_dir=PATH (the GLUE TSV root)")
  from autodistil_jax import hf_io

  pooling = measures.read_pooling(hf_io.resolve_checkpoint(config.teacher))
  settings = SuiteSettings.from_config(config, pooling)
  return settings, read_texts(settings, config.data.glue_dir)


def run_stage(config: ml_collections.ConfigDict, wd, inputs: tuple[SuiteSettings, SuiteTexts],
              teacher: BertEncoder, selected: Sequence[dict], load_superlms,
              corpus: tuple[np.ndarray, np.ndarray, np.ndarray]):
  """Scores the teacher, every export of `wd` (selected students not exported: inside their
  SuperLM, from `load_superlms(names)`), their twins and config.evaluate.models; writes
  wd.evaluate_dir and each export's card section. Returns the suite table's path."""
  from pathlib import Path

  from autodistil_jax import data, evaluate_report, hf_io, storage

  settings, texts = inputs
  exports = wd.exports()
  not_exported: dict[str, list[Arch]] = {}
  for row in selected:
    if f"{row['subspace']}-{row['name']}" not in exports:
      not_exported.setdefault(row["subspace"], []).append(Arch.from_row(row))
  superlms = load_superlms(list(not_exported)) if not_exported else {}
  def load(p):
    with storage.local_checkpoint(str(p)) as local:
      return hf_io.load_bert(local)

  subjects = workdir_subjects(
      teacher, {n: load(p) for n, p in exports.items()},
      {n: (superlms[n][0], a) for n, a in not_exported.items()},
      {f"{r['subspace']}-{r['name']}" for r in selected}, config.evaluate.baselines, config.seed)
  subjects += [Subject(Path(p).name, "model", hf_io.load_bert(p)) for p in config.evaluate.models]
  tokens, _, heldout_idx = corpus
  heldout = data.heldout_batches(tokens, heldout_idx, config.search.batch_size, teacher.config.pad_token_id)
  tokenizer = data.load_tokenizer(hf_io.resolve_checkpoint(config.teacher))
  rows = run_suite(subjects, build_suite(settings, texts, tokenizer, teacher, heldout))
  if jax.process_index() == 0:
    out = evaluate_report.write_report(wd.evaluate_dir, rows, exports)
    print(f"evaluation suite ({out}):\n" + evaluate_report.markdown_table(rows))
  return wd.suite_file("md")
