"""What a searched student is measured against, for any architecture: (b) the same student sliced
from the teacher (its SuperLM initialisation, untrained), (c) the same student distilled alone (a
one-student sub-space: the same objective, steps and data, without weight sharing), and (d) the
same student randomly initialised. Each becomes an HF checkpoint under wd.baseline_dir; one that
exists is kept, so an interrupted run resumes. The caller's config is never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from autodistil_jax import export, hf_io
from autodistil_jax.defaults import subspace_config
from autodistil_jax.model import BertEncoder, random_student
from autodistil_jax.search_space import Arch, SubSpace
from autodistil_jax.train import load_superlm, train_superlm
from autodistil_jax.workdir import Workdir

KINDS = {"sliced": "(b) sliced from the teacher", "alone": "(c) distilled alone",
         "random": "(d) random init"}


def alone_config(config: ml_collections.ConfigDict, arch: Arch) -> tuple[str, ml_collections.ConfigDict]:
  """(sub-space name, a copy of `config` whose only sub-space is `arch`)."""
  name = "alone-" + arch.name.replace(".", "p")  # config keys cannot hold dots
  alone = ml_collections.ConfigDict(config.to_dict())
  alone.subspaces = ml_collections.ConfigDict({name: subspace_config(SubSpace.only(name, arch))})
  return name, alone


def distill_alone(config: ml_collections.ConfigDict, wd: Workdir, teacher: BertEncoder, arch: Arch,
                  corpus: tuple[np.ndarray, np.ndarray], mesh: jax.sharding.Mesh,
                  inputs: dict | None = None) -> BertEncoder:
  """`arch` distilled by itself with `config`'s training settings (resumable, as any SuperLM);
  `inputs` as train.train_superlm's for its sub-space."""
  name, alone = alone_config(config, arch)
  train_superlm(alone, wd, name, teacher, *corpus, mesh, inputs=inputs)
  return load_superlm(alone, wd, name, teacher, mesh)[0]


def build(config: ml_collections.ConfigDict, wd: Workdir, teacher: BertEncoder, archs: Sequence[Arch],
          kinds: Sequence[str] = tuple(KINDS), *, corpus: Callable[[], tuple] | None = None,
          mesh: jax.sharding.Mesh | None = None,
          alone_inputs: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
          timed: Callable = lambda label, fn, *a: fn(*a)) -> list[Path]:
  """The `kinds` of every arch as checkpoints (those present kept); their directories in order.

  `corpus()` gives (tokens, train indices) for "alone"; `alone_inputs(config, name)` its training
  record's inputs; `timed(label, fn, *args)` runs the training (to time it)."""
  if bad := [k for k in kinds if k not in KINDS]:
    raise ValueError(f"unknown baseline kinds {bad}: choose from {list(KINDS)}")
  if "alone" in kinds and (corpus is None or mesh is None):
    raise ValueError("distilling alone needs the corpus and a mesh")
  common = {"teacher_dir": hf_io.resolve_checkpoint(config.teacher), "teacher_name": str(config.teacher),
            "seq_len": config.data.seq_len}
  dirs = []
  for arch in dict.fromkeys(archs):
    for kind in kinds:
      target = wd.baseline_dir(kind, arch.name)
      dirs.append(target)
      if target.exists() or jax.process_index() != 0 and kind != "alone":
        continue
      if kind == "sliced":
        model = teacher
      elif kind == "random":
        model = random_student(teacher.config, arch, config.seed)
      else:
        name, alone = alone_config(config, arch)
        inputs = alone_inputs(alone, name) if alone_inputs else None
        model = timed(f"train alone {arch.name}", distill_alone, config, wd, teacher, arch,
                      corpus()[:2], mesh, inputs)
      if jax.process_index() == 0:
        export.export_student(model, arch, target, subspace=KINDS[kind], **common)
  return dirs

