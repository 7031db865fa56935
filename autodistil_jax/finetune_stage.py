"""The finetune stage: every model (the teacher, the exports, config.glue.models) on every task of
config.glue, one results.json per (model, task) in the workdir, reused on a re-run only when its
inputs match; then the summary table and the exports' cards. The training itself is
autodistil_jax.finetune's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from autodistil_jax import data, finetune_report, glue, hf_io, parallel, records, storage
from autodistil_jax.finetune import RunResult, finetune, finetune_seeds, task_features
from autodistil_jax.finetune_report import task_epochs
from autodistil_jax.model import count_params
from autodistil_jax.search_space import exact_flops
from autodistil_jax.workdir import Workdir, write_text_atomic


def finetune_models(config: ml_collections.ConfigDict, wd: Workdir,
                    extra: Sequence[str] = ()) -> dict[str, str]:
  """name -> checkpoint: the teacher first, then every export, then config.glue.models and
  `extra`."""
  models = {"teacher": str(config.teacher)} if config.glue.include_teacher else {}
  models.update({name: str(path) for name, path in wd.exports().items()})
  for path in (*config.glue.models, *extra):
    models[Path(path).name] = str(path)
  if not models:
    raise ValueError("nothing to fine-tune: no export in the workdir, config.glue.include_teacher "
                     "is off and config.glue.models is empty")
  return models


# Settings a result does not depend on: which other tasks and models are run beside it.
# seed_batching: how the seeds run, not what (finetune_seeds' docstring says how close).
# task_epochs: each task's own entry is already folded into `epochs` (task_settings).
_NOT_INPUTS = ("tasks", "models", "include_teacher", "eval_batch_size", "seed_batching", "task_epochs")


def task_settings(g: ml_collections.ConfigDict, task_name: str) -> ml_collections.ConfigDict:
  """config.glue as one task is fine-tuned under it: `epochs` is that task's (task_epochs)."""
  settings = ml_collections.ConfigDict(g.to_dict())
  settings.epochs = task_epochs(g, task_name)
  return settings


def result_inputs(config: ml_collections.ConfigDict, task: glue.Task, model_identity: dict | str) -> dict:
  """What one (model, task) result depends on: the fine-tuning settings as that task gets them
  (task_settings: another task's epochs do not count), the seed, the task's data and the model
  (records.model_identity, or a string naming it). A stored result is reused only when these
  match, the model's weights up to float rounding (records.model_change)."""
  flat = records.flatten(task_settings(config.glue, task.name))
  settings = {k: v for k, v in flat.items() if k.split(".")[0] not in _NOT_INPUTS}
  model = model_identity if isinstance(model_identity, dict) else {"model": model_identity}
  return {**settings, "seed": config.seed, "data": glue.identity([task], config.data.glue_dir), **model}


# The axes of a cell's grid. One run (a learning rate, a seed) depends on neither: the learning
# rate is a traced value and each seed trains alone (side by side, as closely as finetune_seeds
# says). So the runs already done carry over when seeds or learning rates are added.
_GRID_KEYS = ("learning_rates", "seeds")


def _run_inputs(inputs: dict) -> dict:
  """What one run of a cell depends on: the cell's inputs but its grid."""
  return {k: v for k, v in inputs.items() if k not in _GRID_KEYS}


def _stored_if_reusable(wd: Workdir, path: Path, stored: dict | None, inputs: dict, label: str,
                        fault: Callable[[dict], str | None] = lambda stored: None,
                        compared: Callable[[dict], dict] = lambda inputs: inputs) -> dict | None:
  """`stored`, the record read from `path` (records.read: None when absent; an unreadable one reads
  as made with other inputs), when it was made with `inputs` (both as `compared` keeps them) and
  `fault` finds nothing wrong in it; else None, with the file (if any) moved aside to wd's
  replaced/ and one line saying why."""
  if stored is None:
    return None
  changes = records.changed_keys(compared(stored["inputs"]), compared(inputs))
  why = "was made with other inputs: " + "; ".join(changes) if changes else fault(stored)
  if why is None:
    if stored["inputs"].get("model") != inputs.get("model"):
      difference = records.weights_difference(stored["inputs"]["model_weights"], inputs["model_weights"])
      apart = ("equal to the digest's 12 significant figures" if difference == 0
               else f"{difference:.2g} of their norm apart")
      print(f"{label} is reused: its model is the current one in other bytes (weights {apart}: float "
            "rounding, as on another CPU or device count)")
    return stored
  aside = wd.move_aside([path]) if jax.process_index() == 0 else None
  print(f"{label} {why}; not reused (old one in {aside})")
  return None


def _unfinite_score(result: dict) -> str | None:
  if not np.isfinite(result.get("score_mean", float("nan"))):
    return "has a score that is not finite"
  return None


def run_stage(config: ml_collections.ConfigDict, wd: Workdir, tasks: Sequence[str] | None = None,
              extra_models: Sequence[str] = (), on_result: Callable[[Path], None] | None = None) -> Path:
  """Fine-tunes every model (finetune_models) on `tasks` (default config.glue.tasks); one
  results.json per (model, task), reused on a re-run only when its inputs (result_inputs) match
  and its score is finite (others are moved aside to wd's replaced/ and recomputed), then the
  summary table. A cell interrupted part-way resumes after its last finished run (FinishedRuns);
  one whose seeds or learning rates changed keeps the runs it already has (_GRID_KEYS).
  `on_result` gets each record (results.json, finished_runs.json) as soon as it is written or
  removed (experiments keep a copy with their report)."""
  if not config.data.glue_dir:
    raise ValueError("config.data.glue_dir is not set: pass --config.data.glue_dir=PATH (the GLUE TSV root, "
                     "or tfds: for tensorflow-datasets)")
  tasks = [glue.get_task(t) for t in (config.glue.tasks if tasks is None else tasks)]
  mesh = parallel.make_mesh()
  models = finetune_models(config, wd, extra_models)
  splits = {t.name: {"train": glue.read_split(t, config.data.glue_dir, "train"),
                     **{s: glue.read_split(t, config.data.glue_dir, s) for s in t.dev_splits}}
            for t in tasks}
  for model_name, checkpoint in models.items():
    with storage.local_checkpoint(checkpoint) as local:
      encoder = hf_io.load_bert(local)
      tokenizer = data.load_tokenizer(hf_io.resolve_checkpoint(local))
      identity = records.model_identity(hf_io.resolve_checkpoint(local))
    for task in tasks:
      out, inputs = wd.glue_result(model_name, task.name), result_inputs(config, task, identity)
      label, stored = f"{model_name} {task.name}: the stored result", records.read(out)
      if _stored_if_reusable(wd, out, stored, inputs, label, _unfinite_score) is not None:
        continue
      finished = FinishedRuns.load(wd, wd.glue_finished_runs(model_name, task.name), inputs, on_result,
                                   carried=_runs_of_another_grid(stored, inputs, label))
      result = _finetune_task(encoder, task, splits[task.name], tokenizer, config, mesh, model_name, finished)
      result.update(checkpoint=checkpoint, inputs=inputs)
      if jax.process_index() == 0:
        if not np.isfinite(result["score_mean"]):
          print(f"warning: {model_name} {task.name} scored {result['score_mean']} (not finite); "
                "saved, and recomputed on the next run")
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
        if on_result is not None:
          on_result(out)
        finished.remove()
        print(f"{model_name} {task.name}: {100 * result['score_mean']:.1f} "
              f"(+-{100 * result['score_std']:.1f}, lr {result['best_lr']:g})")
  if jax.process_index() == 0:
    _update_cards(wd, [t.name for t in tasks])
  return finetune_report.write_summary(wd, list(models), [t.name for t in tasks])


def _runs_of_another_grid(stored: dict | None, inputs: dict, label: str) -> tuple[list[RunResult], float]:
  """The finite runs of a stored result not reused whose inputs differ from `inputs` in the grid
  alone (_GRID_KEYS: seeds or learning rates added or dropped; or nothing, when its score was not
  finite), and the seconds it took; else none."""
  if stored is None or "runs" not in stored or records.changed_keys(
      _run_inputs(stored["inputs"]), _run_inputs(inputs)):
    return [], 0.0
  runs = _finite_runs([RunResult(**r) for r in stored["runs"]], label)
  print(f"{label}'s {len(runs)} finite run(s) are kept; only the grid's other runs are fine-tuned")
  return runs, float(stored.get("seconds", 0.0))


def _finite_runs(runs: Sequence[RunResult], label: str) -> list[RunResult]:
  finite = [r for r in runs if all(np.isfinite(v) for v in next(iter(r.best.values())).values())]
  if len(finite) < len(runs):
    print(f"{label}: {len(runs) - len(finite)} run(s) with a score that is not finite; recomputing them")
  return finite


def _update_cards(wd: Workdir, tasks: Sequence[str]) -> None:
  """Each export's card gets its GLUE results (section and model-index) beside the teacher's."""
  from autodistil_jax import cards

  read = lambda model, task: (json.loads(wd.glue_result(model, task).read_text())
                              if wd.glue_result(model, task).is_file() else None)
  teacher = {t: r for t in tasks if (r := read("teacher", t))}
  for name, directory in wd.exports().items():
    if results := [r for t in tasks if (r := read(name, t))]:
      write_text_atomic(directory / "README.md", cards.put_glue(directory / "README.md", results, teacher))


SEED_BATCHING = ("auto", "vmap", "sequential")


def seeds_side_by_side(g: ml_collections.ConfigDict) -> bool:
  """config.glue.seed_batching: "vmap" (finetune_seeds), "sequential" (finetune per seed) or
  "auto": side by side on an accelerator, where a step of one seed is launch-bound, and one after
  another on a CPU, where the arithmetic is the cost either way."""
  way = g.get("seed_batching", "auto")
  return len(g.seeds) > 1 and (way == "vmap" or way == "auto" and jax.default_backend() != "cpu")


def _finetune_task(encoder, task: glue.Task, splits, tokenizer, config, mesh, model_name: str,
                   finished: FinishedRuns) -> dict:
  """Every learning rate x seed of the grid on one task, but those `finished` already holds; the
  best learning rate by mean score."""
  g = task_settings(config.glue, task.name)
  train, dev = task_features(task, splits, tokenizer, g.seq_len, g.max_train_examples, config.seed)
  for lr in g.learning_rates:
    if seeds_side_by_side(g):  # the seeds of one learning rate are one run: all of them, or none
      if not all(finished.has(lr, s) for s in g.seeds):
        start = time.perf_counter()
        runs = finetune_seeds(encoder, task, train, dev, g, lr, list(g.seeds), mesh,
                              desc=f"{model_name} {task.name} lr={lr:g} seeds={','.join(map(str, g.seeds))}")
        finished.add(runs, time.perf_counter() - start)
      continue
    for seed in (s for s in g.seeds if not finished.has(lr, s)):
      start = time.perf_counter()
      run = finetune(encoder, task, train, dev, g, lr, seed, mesh,
                     desc=f"{model_name} {task.name} lr={lr:g} seed={seed}")
      finished.add([run], time.perf_counter() - start)
  runs = [finished.get(lr, seed) for lr in g.learning_rates for seed in g.seeds]
  by_lr = {lr: [glue.main_score(task, next(iter(r.best.values()))) for r in runs
                if r.learning_rate == lr] for lr in g.learning_rates}
  best_lr = max(by_lr, key=lambda lr: np.nan_to_num(np.mean(by_lr[lr]), nan=-np.inf))
  scores = by_lr[best_lr]
  return {"model": model_name, "task": task.name, "params": count_params(encoder),
          "flops": exact_flops(encoder.config.full_arch(), g.seq_len, encoder.config.head_size,
                               encoder.config.pooler), "best_lr": best_lr,
          "score_mean": float(np.mean(scores)), "score_std": float(np.std(scores)),
          "train_examples": int(len(train["labels"])),
          "trivial_score": glue.trivial_score(task, train["labels"], next(iter(dev.values()))["labels"]),
          "seconds": round(finished.seconds, 1),  # every run, compiles included, over every attempt
          "runs": [dataclasses.asdict(r) for r in runs]}


class FinishedRuns:
  """The runs (learning rate x seed) of one (model, task) cell finished so far, written to a file
  beside its results.json after each run, so that a cell stopped part-way (a teacher's CoLA cell is
  hours on a CPU) resumes after its last finished run instead of from nothing. Runs are reused only
  when the file's inputs (result_inputs) are the cell's and their score is finite; a file made
  with other inputs is moved aside. Its work is done once the cell's results.json is written."""

  def __init__(self, path: Path, inputs: dict, on_write: Callable[[Path], None] | None,
               runs: Sequence[RunResult] = (), seconds: float = 0.0):
    self.path, self.inputs, self.on_write, self.seconds = path, inputs, on_write, seconds
    self._runs = {(r.learning_rate, r.seed): r for r in runs}

  @classmethod
  def load(cls, wd: Workdir, path: Path, inputs: dict, on_write: Callable[[Path], None] | None = None,
           carried: tuple[Sequence[RunResult], float] = ((), 0.0)) -> FinishedRuns:
    """The file's finite runs (when made with the same run inputs: _run_inputs) after the
    `carried` (runs, seconds) of a result of another grid (_runs_of_another_grid)."""
    runs, seconds = carried
    stored = _stored_if_reusable(wd, path, records.read(path), inputs, f"{path}:", compared=_run_inputs)
    if stored is None:
      finished = cls(path, inputs, on_write, runs, seconds)
      if runs:  # their result was moved aside: written here, a stop before the next run keeps them
        finished.add([], 0.0)
      return finished
    finite = _finite_runs([RunResult(**r) for r in stored["runs"]], str(path))
    print(f"{path}: resuming after {len(finite)} finished run(s)")
    return cls(path, inputs, on_write, [*runs, *finite], seconds + float(stored["seconds"]))

  def has(self, learning_rate: float, seed: int) -> bool:
    return (learning_rate, seed) in self._runs

  def get(self, learning_rate: float, seed: int) -> RunResult:
    return self._runs[(learning_rate, seed)]

  def add(self, runs: Sequence[RunResult], seconds: float) -> None:
    """Records finished runs and the `seconds` they took, and writes the file."""
    self.seconds += seconds
    self._runs.update({(r.learning_rate, r.seed): r for r in runs})
    if jax.process_index() == 0:
      record = {"inputs": self.inputs, "seconds": round(self.seconds, 1),
                "runs": [dataclasses.asdict(r) for r in self._runs.values()]}
      write_text_atomic(self.path, json.dumps(record, indent=2) + "\n")
      self._notify()

  def remove(self) -> None:
    """Deletes the file (the cell's results.json now holds every run)."""
    if self.path.is_file():
      self.path.unlink()
      self._notify()

  def _notify(self) -> None:
    if self.on_write is not None:
      self.on_write(self.path)
