"""The GLUE protocol flags the fine-tuning experiments share (--tasks, --seeds, --data_dir), checked
and written into config.glue / config.data once, before any work."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import ml_collections

from autodistil_jax import glue


def parse_seeds(values: Sequence[str]) -> tuple[int, ...]:
  """--seeds as integers, or one clear line naming the values that are not integers >= 0."""
  if bad := [s for s in values if not s.isdigit()]:
    raise ValueError(f"--seeds: {bad} are not integers >= 0")
  return tuple(int(s) for s in values)


def apply(config: ml_collections.ConfigDict, data_dir: str, tasks: Sequence[str],
          seeds: Sequence[str]) -> list[str]:
  """Sets the GLUE root (<data_dir>/glue), the seeds and the tasks on `config`; returns the task
  names. Bad seeds or an unknown task raise before anything is set."""
  seed_values = parse_seeds(seeds)
  names = [glue.get_task(t).name for t in tasks]
  config.data.glue_dir = str(pathlib.Path(data_dir).expanduser().absolute() / "glue")
  config.glue.seeds = seed_values
  config.glue.tasks = tuple(names)
  return names
