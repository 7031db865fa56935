"""Unlabeled corpus input: text files, globs or tensorflow-datasets, tokenised with the teacher's
fast tokenizer, packed (or truncated) to seq_len with [CLS]/[SEP], split into train and held-out,
and served through a grain pipeline whose iterator state is checkpointed with the model.

Every host computes the same global order of examples and takes its own rows of each global
batch, so a run gives the same batches on any number of hosts.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import grain
import numpy as np
from absl import logging

from autodistil_jax import storage
from autodistil_jax.workdir import writing

# WikiText section headings look like " = = Title = = "; they are not paragraphs.
_HEADING = re.compile(r"^\s*(=\s*)+[^=].*?(\s*=)+\s*$")
_TOKENIZE_CHUNK = 1024


def load_tokenizer(checkpoint_dir: str | os.PathLike):
  """The teacher's fast tokenizer (tokenizer.json or vocab.txt in its directory)."""
  from transformers import BertTokenizerFast

  # BertTokenizerFast, not AutoTokenizer: the latter would read an exported student's config
  # and ask to run its remote code just to pick a tokenizer class.
  directory = Path(checkpoint_dir)
  if directory.is_dir() and not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
    raise FileNotFoundError(f"{directory} has neither tokenizer.json nor vocab.txt: copy the teacher's "
                            "tokenizer files into it (without them every word would be [UNK])")
  tokenizer_json = directory / "tokenizer.json"
  if tokenizer_json.is_file():
    try:
      json.loads(tokenizer_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{tokenizer_json} is not valid JSON ({e}); restore it or delete it to use "
                       "vocab.txt") from None
  tok = BertTokenizerFast.from_pretrained(str(checkpoint_dir))
  if not tok.is_fast:
    raise ValueError(f"{checkpoint_dir}: no fast tokenizer; it needs tokenizer.json or vocab.txt")
  tok.model_max_length = 1 << 40  # whole paragraphs are tokenised, then cut to seq_len by us
  return tok


def _corpus_items(spec: str) -> list[str]:
  items = [s.strip() for s in spec.split(",") if s.strip()]
  if not items:
    raise ValueError("config.data.corpus is empty: give a text file, a glob, a comma list, or tfds:NAME")
  return items


def _expand(item: str) -> list[Path]:
  paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(item)))
  files = [p for p in paths if p.is_file()]
  if not files:
    raise ValueError(f"corpus {item!r} matches no file; check config.data.corpus")
  return files


def _file_paragraphs(path: Path) -> Iterator[str]:
  try:
    text = path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8 "
                     "or drop it from config.data.corpus") from e
  yield from _text_paragraphs(text)


def _text_paragraphs(text: str) -> Iterator[str]:
  """Non-blank lines that are not WikiText headings, stripped."""
  for line in text.splitlines():
    line = line.strip()
    if line and not _HEADING.match(line):
      yield line


def _tfds_paragraphs(name: str, split: str, data_dir: str | None, text_key: str) -> Iterator[str]:
  import tensorflow_datasets as tfds

  source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  for record in source:
    if text_key not in record:
      raise ValueError(f"tfds:{name} records have no feature {text_key!r} (they have "
                       f"{sorted(record)}); set config.data.text_key")
    text = record[text_key]
    yield from _text_paragraphs(text.decode("utf-8") if isinstance(text, bytes) else str(text))


def paragraphs(spec: str, *, tfds_split: str = "train", tfds_data_dir: str | None = None,
               text_key: str = "text") -> Iterator[str]:
  """Every paragraph of the corpus: one per non-blank, non-heading line (or tfds text line)."""
  items = _corpus_items(spec)
  for item in items:  # a bad pattern fails before any tokenising
    if not item.startswith("tfds:"):
      _expand(item)
  for item in items:
    if item.startswith("tfds:"):
      yield from _tfds_paragraphs(item[5:], tfds_split, tfds_data_dir, text_key)
    else:
      for path in _expand(item):
        yield from _file_paragraphs(path)


def tokenize(texts: Iterator[str], tokenizer, seq_len: int, pack: bool = True) -> np.ndarray:
  """[N, seq_len] int32 token ids: [CLS] tokens [SEP], padded with the tokenizer's pad id.

  pack=True concatenates paragraphs and cuts the stream into full sequences (no padding);
  pack=False keeps one paragraph per sequence, truncated.
  """
  if seq_len < 8:
    raise ValueError(f"seq_len {seq_len} is too short; use at least 8")
  cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
  body = seq_len - 2
  rows: list[np.ndarray] = []
  stream: list[int] = []

  def flush_stream(final: bool):
    nonlocal stream
    n_full = len(stream) // body
    if n_full:
      chunk = np.asarray(stream[: n_full * body], np.int32).reshape(n_full, body)
      rows.append(np.concatenate([np.full((n_full, 1), cls, np.int32), chunk,
                                  np.full((n_full, 1), sep, np.int32)], axis=1))
      stream = stream[n_full * body:]
    if final and stream:  # the last partial sequence is kept, padded
      row = np.full((1, seq_len), pad, np.int32)
      row[0, : len(stream) + 2] = [cls, *stream, sep]
      rows.append(row)

  batch: list[str] = []
  for text in _chain_end(texts):
    if text is not None:
      batch.append(text)
      if len(batch) < _TOKENIZE_CHUNK:
        continue
    if batch:
      ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
      if pack:
        for seq in ids:
          stream.extend(seq)
        flush_stream(final=False)
      else:
        out = np.full((len(ids), seq_len), pad, np.int32)
        for i, seq in enumerate(ids):
          seq = [cls, *seq[:body], sep]
          out[i, : len(seq)] = seq
        rows.append(out)
      batch = []
  flush_stream(final=True)
  if not rows:
    raise ValueError("the corpus has no text: every file is empty or only headings/blank lines")
  return np.concatenate(rows)


def _chain_end(texts: Iterator[str]) -> Iterator[str | None]:
  yield from texts
  yield None


def corpus_files(spec: str) -> list[Path]:
  """The local files of a corpus spec (tfds: items have none)."""
  return [p for item in _corpus_items(spec) if not item.startswith("tfds:") for p in _expand(item)]


def corpus_fingerprint(spec: str, tokenizer_dir: str, seq_len: int, pack: bool, **tfds_args) -> str:
  """A key for the token cache: the sources (with sizes and mtimes), tokenizer and layout."""
  parts = [spec, str(tokenizer_dir), str(seq_len), str(pack), json.dumps(tfds_args, sort_keys=True)]
  for item in _corpus_items(spec):
    if not item.startswith("tfds:"):
      for path in _expand(item):
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_corpus(spec: str, tokenizer_dir: str | os.PathLike, seq_len: int, *, pack: bool = True,
                cache_dir: str | os.PathLike | None = None, tfds_split: str = "train",
                tfds_data_dir: str | None = None, text_key: str = "text",
                min_sequences: tuple[int, str] = (1, "one sequence")) -> np.ndarray:
  """Token ids of the whole corpus, cached as .npy in `cache_dir` (tokenised once per corpus).

  A corpus of fewer than `min_sequences` = (count, what needs them) sequences is an error, raised
  before anything is cached.
  """
  tfds_args = dict(tfds_split=tfds_split, tfds_data_dir=tfds_data_dir, text_key=text_key)
  cache = None
  if cache_dir is not None:
    key = corpus_fingerprint(spec, str(tokenizer_dir), seq_len, pack, **tfds_args)
    cache = storage.path(cache_dir) / f"corpus_{key}.npy"
  fresh = cache is None or not cache.is_file()
  if fresh:
    tokens = tokenize(paragraphs(spec, **tfds_args), load_tokenizer(tokenizer_dir), seq_len, pack)
    logging.info("tokenised %s: %d sequences of %d", spec, len(tokens), seq_len)
  else:
    if storage.is_local(cache):
      tokens = np.load(cache, mmap_mode="r")
    else:
      with cache.open("rb") as f:
        tokens = np.load(f)
  if len(tokens) < min_sequences[0]:
    raise ValueError(f"corpus {spec!r} gives {len(tokens)} sequences of {seq_len} tokens, fewer than "
                     f"the {min_sequences[0]} needed ({min_sequences[1]}): add text or lower those")
  if fresh and cache is not None:
    with writing(cache) as tmp, tmp.open("wb") as f:  # a half-written cache is never read
      np.save(f, tokens)
  return tokens


def split_heldout(num_sequences: int, n_held: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint (train, held-out) sequence indices, `n_held` of them held out, chosen by `seed`."""
  if n_held < 0 or n_held >= num_sequences:
    raise ValueError(f"holding out {n_held} sequences leaves no training data from {num_sequences} sequences")
  order = np.random.default_rng([seed, 7919]).permutation(num_sequences)
  return np.sort(order[n_held:]), np.sort(order[:n_held])


def batch_features(tokens: np.ndarray, pad_id: int = 0) -> dict[str, np.ndarray]:
  ids = np.asarray(tokens, np.int32)
  mask = (ids != pad_id).astype(np.int32)
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def train_dataset(tokens: np.ndarray, indices: np.ndarray, global_batch_size: int, seed: int, *,
                  process_index: int = 0, process_count: int = 1, pad_id: int = 0) -> grain.MapDataset:
  """Endless shuffled batches (reshuffled each epoch); this host's rows of each global batch."""
  if len(indices) < global_batch_size:
    raise ValueError(f"the corpus has {len(indices)} training sequences, fewer than one batch of "
                     f"{global_batch_size}: add text or lower config.train.batch_size")
  local = global_batch_size // process_count
  lo = process_index * local
  indices = np.asarray(indices)
  return (grain.MapDataset.range(len(indices)).shuffle(seed=seed).repeat(None)
          .batch(global_batch_size, drop_remainder=True)
          .map(lambda b: batch_features(tokens[indices[np.asarray(b)[lo:lo + local]]], pad_id)))


def heldout_batches(tokens: np.ndarray, indices: np.ndarray, batch_size: int,
                    pad_id: int = 0) -> list[dict[str, np.ndarray]]:
  """The held-out sequences in fixed order, in batches (the last one dropped if partial)."""
  n = len(indices) // batch_size
  if n == 0:
    raise ValueError(f"{len(indices)} held-out sequences are fewer than one batch of {batch_size}")
  return [batch_features(tokens[indices[i * batch_size:(i + 1) * batch_size]], pad_id) for i in range(n)]


def make_iterator(dataset: grain.MapDataset, prefetch: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator (get_state/set_state) with background prefetching."""
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)))
