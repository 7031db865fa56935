"""One validation pass over the config and the inputs a mode will reach, before anything is
computed or written: every problem found is reported together, one line each naming the key or
file and what to do (runner.run raises them as one ValueError: `error: ...`, exit status 2).

The stages check their own inputs again where they read them; this pass exists so that a run never
fails after minutes of work on something that could be known at the start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections

from autodistil_jax.glue import HEAD_INPUTS, REGRESSION_BIAS, TASKS

# key -> (kind, check, what it must be). kind: "int", "float", "str", "bool", "ints", "floats",
# "strs" (a list or tuple of those).
_Rule = tuple[str, Callable[[Any], bool], str]
_POSITIVE_INT: _Rule = ("int", lambda v: v >= 1, "an integer >= 1")
_COUNT: _Rule = ("int", lambda v: v >= 0, "an integer >= 0")
_RATE: _Rule = ("float", lambda v: 0 <= v < 1, "a number in [0, 1)")
_POSITIVE: _Rule = ("float", lambda v: v > 0, "a finite number > 0")
_NON_NEGATIVE: _Rule = ("float", lambda v: v >= 0, "a finite number >= 0")
_SEQ_LEN: _Rule = ("int", lambda v: v >= 8, "an integer >= 8")
_BOOL: _Rule = ("bool", lambda v: True, "True or False")  # the kind is the whole check

RULES: dict[str, _Rule] = {
    "seed": _COUNT,
    "teacher": ("str", bool, "a Hugging Face directory or hub name"),
    "data.seq_len": _SEQ_LEN, "data.heldout": _POSITIVE_INT, "data.pack": _BOOL,
    "train.batch_size": _POSITIVE_INT, "train.num_steps": _POSITIVE_INT,
    "train.learning_rate": _POSITIVE, "train.warmup_steps": _COUNT, "train.weight_decay": _NON_NEGATIVE,
    "train.b1": _RATE, "train.b2": _RATE, "train.eps": _POSITIVE, "train.clip_norm": _NON_NEGATIVE,
    "train.dropout": _RATE, "train.hidden_relation_weight": _NON_NEGATIVE,
    "train.embedding_relation_weight": _NON_NEGATIVE,
    "train.num_random": _COUNT, "train.grad_accum": _POSITIVE_INT, "train.log_every": _POSITIVE_INT,
    "train.checkpoint_every": _POSITIVE_INT, "train.keep_checkpoints": _POSITIVE_INT,
    "train.max_nonfinite_steps": _COUNT,
    "search.batch_size": _POSITIVE_INT, "search.num_batches": _COUNT,
    "search.students_per_call": _POSITIVE_INT, "search.latency_batch_size": _POSITIVE_INT,
    "search.latency_seq_len": _SEQ_LEN, "search.max_latency_trials": _POSITIVE_INT,
    "search.budgets": ("strs", bool, "a non-empty list of budgets such as 'flops<=0.5*teacher'"),
    "glue.learning_rates": ("floats", lambda v: all(x > 0 for x in v), "a non-empty list of numbers > 0"),
    "glue.seeds": ("ints", lambda v: all(x >= 0 for x in v), "a non-empty list of integers >= 0"),
    "glue.batch_size": _POSITIVE_INT, "glue.eval_batch_size": _POSITIVE_INT, "glue.epochs": _POSITIVE_INT,
    "glue.warmup_ratio": _RATE, "glue.seq_len": _SEQ_LEN, "glue.pad_multiple": _COUNT,
    "glue.seed_batching": ("str", lambda v: v in ("auto", "vmap", "sequential"), "auto, vmap or sequential"),
    "glue.regression_bias": ("str", lambda v: v in REGRESSION_BIAS, "zero or label_mean"),
    "glue.head_input": ("str", lambda v: v in HEAD_INPUTS, "pooler, cls or mean"),
    "glue.dropout": _RATE, "glue.attention_dropout": _RATE, "glue.max_train_examples": _COUNT,
    "evaluate.probe_train_examples": _COUNT, "evaluate.sts_examples": _COUNT,
    "evaluate.seq_len": _SEQ_LEN, "evaluate.batch_size": _POSITIVE_INT,
    "evaluate.students_per_call": _POSITIVE_INT,
    **{f"glue.task_epochs.{name}": ("int", lambda v: v >= 0, "an integer >= 0 (0: glue.epochs)")
       for name in TASKS},
}


def _kind_ok(kind: str, value: Any) -> bool:
  number = lambda v, t: isinstance(v, t) and not isinstance(v, bool)
  if kind == "int":
    return number(value, int)
  if kind == "float":
    return number(value, int | float) and math.isfinite(value)
  if kind == "str":
    return isinstance(value, str)
  if kind == "bool":
    return isinstance(value, bool)
  inner = {"ints": "int", "floats": "float", "strs": "str"}[kind]
  return isinstance(value, list | tuple) and len(value) > 0 and all(_kind_ok(inner, v) for v in value)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every key of RULES whose value has the wrong type or range, and the settings that must agree
  with each other."""
  problems = []
  for key, (kind, check, what) in RULES.items():
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue  # a config without that group does not run the stage that reads it
    if not (_kind_ok(kind, value) and check(value)):
      problems.append(f"config.{key}={value!r} must be {what}")
  problems += _search_problems(config)
  t = config.train
  if _kind_ok("int", t.warmup_steps) and _kind_ok("int", t.num_steps) and t.warmup_steps >= t.num_steps > 0:
    problems.append(f"config.train.warmup_steps={t.warmup_steps} must be below train.num_steps={t.num_steps}")
  return problems


def _search_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Budgets that do not parse and a selection that names no criterion: known before any scoring."""
  from autodistil_jax import search

  if "search" not in config:
    return []
  problems = []
  if _kind_ok("strs", config.search.budgets):
    for text in config.search.budgets:
      try:
        search.parse_budget(text, dict.fromkeys(search.METRICS, 1.0))
      except ValueError as e:
        problems.append(f"config.search.budgets: {e}")
  try:
    search.check_selection(config.search.selection, config.search.proxy.enabled)
  except ValueError as e:
    problems.append(str(e))
  return problems


def mode_problems(mode: str, modes: Iterable[str], workdir: str) -> list[str]:
  problems = []
  if mode not in modes:
    problems.append(f"--mode={mode!r} is not one of {', '.join(modes)}")
  if not str(workdir).strip():
    problems.append("--workdir is empty: give the directory for checkpoints and outputs")
  return problems


def input_problems(config: ml_collections.ConfigDict, stages: Iterable[str]) -> list[str]:
  """The GLUE files each of `stages` will read, checked whole (header, columns, encoding, labels,
  finite scores; a bad row named by file and line); the GLUE root that a stage needs, set."""
  from autodistil_jax import glue

  stages = set(stages)
  needs: dict[str, set[str]] = {}
  if "evaluate" in stages:
    needs["evaluate"] = {"stsb", *config.evaluate.probe_tasks}
  if "finetune" in stages:
    needs["finetune"] = set(config.glue.tasks)
  if "search" in stages and config.search.proxy.enabled:
    from autodistil_jax import proxy

    try:
      needs["search (proxy)"] = {proxy.ProxySettings.from_config(config).task.name}
    except ValueError as e:
      return [str(e)]
  problems = []
  if "export" in stages and config.export.push_to_hub:
    from autodistil_jax import hub

    try:
      hub.repo_ids(config.export.push_to_hub, ["base-L1_H1_R1_A1"])
      hub.token()
    except ValueError as e:
      problems.append(str(e))
  if not needs:
    return problems
  if not config.data.glue_dir:
    return problems + [f"config.data.glue_dir is not set but {', '.join(sorted(needs))} read GLUE tasks "
                       "from it: pass --config.data.glue_dir=PATH (the GLUE TSV root, or tfds: for "
                       "tensorflow-datasets)"]
  if config.data.glue_dir.startswith(glue.TFDS_PREFIX):
    return problems  # tensorflow-datasets checks its own files when it reads them
  for name in sorted(set().union(*needs.values())):
    try:
      task = glue.get_task(name)
    except ValueError as e:
      problems.append(str(e))
      continue
    for split in ("train", *task.dev_splits):
      try:
        glue.read_tsv(task, config.data.glue_dir, split)
      except (ValueError, FileNotFoundError) as e:
        problems.append(str(e))
  return problems


def check(config: ml_collections.ConfigDict, mode: str, modes: Iterable[str], stages: Iterable[str],
          workdir: str) -> None:
  """Raises one ValueError listing every problem of the config and of the inputs `stages` read."""
  problems = mode_problems(mode, list(modes), workdir)
  problems += config_problems(config)
  if not problems:
    problems += input_problems(config, stages)
  if problems:
    raise ValueError("; ".join(problems))
