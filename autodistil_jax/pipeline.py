"""The stages a user runs from launch/main.py, wired from one config."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from autodistil_jax import data, hf_io, parallel
from autodistil_jax.metrics import read_metrics
from autodistil_jax.model import BertEncoder
from autodistil_jax.train import subspace_from_config, train_superlm


def setup_distributed(config: ml_collections.ConfigDict) -> None:
  d = config.distributed
  parallel.maybe_initialize_distributed(
      d.coordinator or None, d.num_processes if d.num_processes > 0 else None,
      d.process_id if d.process_id >= 0 else None)


def load_teacher(config: ml_collections.ConfigDict) -> BertEncoder:
  teacher = hf_io.load_bert(config.teacher)
  if config.data.seq_len > teacher.config.max_position:
    raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the teacher's "
                     f"max_position_embeddings ({teacher.config.max_position}); lower it")
  if not config.subspaces:
    raise ValueError("config.subspaces is empty: the config must define at least one sub-space")
  for name in config.subspaces:
    subspace_from_config(name, config.subspaces[name]).check_fits(teacher.config.teacher_shape)
  return teacher


def load_split_corpus(config: ml_collections.ConfigDict,
                      workdir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, train indices, held-out indices) of the configured corpus, tokenised once."""
  d = config.data
  if not d.corpus:
    raise ValueError("config.data.corpus is not set: pass --config.data.corpus=PATH_OR_GLOB (or tfds:NAME)")
  tokens = data.load_corpus(d.corpus, hf_io.resolve_checkpoint(config.teacher), d.seq_len, pack=d.pack,
                            cache_dir=workdir / "data_cache", tfds_split=d.tfds_split,
                            tfds_data_dir=d.tfds_data_dir or None, text_key=d.text_key)
  train_idx, heldout_idx = data.split_heldout(len(tokens), d.heldout, config.seed)
  return tokens, train_idx, heldout_idx


def check_workdir(workdir: str | os.PathLike) -> Path:
  path = Path(workdir).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {str(path)!r} cannot be written ({e.strerror}); "
                     "choose another --workdir") from e
  return path


def run_train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
  """Trains the SuperLM of every configured sub-space; returns their parameters by name."""
  workdir = check_workdir(workdir)
  teacher = load_teacher(config)
  tokens, train_idx, _ = load_split_corpus(config, workdir)
  mesh = parallel.make_mesh()
  logging.info("training on %d devices over %d processes; %d training sequences",
               jax.device_count(), jax.process_count(), len(train_idx))
  trained = {name: train_superlm(config, workdir, name, teacher, tokens, train_idx, mesh)
             for name in subspace_names(config)}
  if jax.process_index() == 0:
    print(training_summary(workdir, list(trained)))
  return trained


def training_summary(workdir: Path, names: list[str]) -> str:
  """Per sub-space: the distillation loss of each sampled size at the first and last log."""
  lines = ["SuperLM training: loss at first -> last logged step (largest / smallest / random)"]
  for name in names:
    records = read_metrics(workdir, f"superlm/{name}")
    if not records:
      continue
    first, last = records[0], records[-1]
    sizes = " / ".join(f"{first[k]:.4g} -> {last[k]:.4g}"
                       for k in ("loss/largest", "loss/smallest", "loss/random"))
    lines.append(f"  {name:>6} steps {first['step']}..{last['step']}: {sizes}")
  return "\n".join(lines)


def subspace_names(config: ml_collections.ConfigDict) -> list[str]:
  """The configured sub-spaces, smallest first."""
  spaces = [subspace_from_config(n, config.subspaces[n]) for n in config.subspaces]
  return [s.name for s in sorted(spaces, key=lambda s: (s.hidden[-1], s.layers[-1], s.name))]
