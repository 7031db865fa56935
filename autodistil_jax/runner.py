"""What runs when a user runs a mode: the workdir held by one process, leftovers of killed runs
cleared, --redo's outputs moved aside, and each stage run, reused or refused by its record
(records.py): a finished stage is reused only while everything it depends on is unchanged."""

from __future__ import annotations

import os
import time

import jax
import ml_collections

from autodistil_jax import records, validate
from autodistil_jax.pipeline import MODES, STAGES, stage_inputs
from autodistil_jax.workdir import Workdir

# What a user got wrong (config, paths, inputs): launch/main.py prints these as one line and exits 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)  # StaleInputs, WorkdirBusy included


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        redo: tuple[str, ...] = (), last: str = STAGES[-1]):
  """Runs `mode` (a stage, or "all": every stage up to `last`) holding the workdir. A stage's
  record says what it ran with: "all" skips a stage whose record matches the config and stops at
  one whose does not, naming the keys; a stage named in `redo` (and every later one) has its
  outputs moved aside and runs again. A single stage always runs, after checking the records of
  the stages it reads from."""
  chosen = STAGES[:STAGES.index(last) + 1] if mode == "all" else (mode,)
  validate.check(config, mode, ("all", *STAGES), chosen if mode in ("all", *STAGES) else (), str(workdir))
  wd = Workdir.at(workdir)
  if bad := [s for s in redo if s not in chosen]:
    raise ValueError(f"--redo={','.join(bad)} is not a stage that --mode={mode} runs ({', '.join(chosen)})")
  with wd.held(primary=jax.process_index() == 0):
    if jax.process_index() == 0 and (left := wd.remove_leftovers()):
      print(f"removed {len(left)} temporary file(s) left by a killed run: {', '.join(map(str, left))}")
    if redo and jax.process_index() == 0:
      first = min(STAGES.index(s) for s in redo)
      if aside := wd.move_aside([p for s in STAGES[first:] for p in wd.stage_outputs(s)]):
        print(f"--redo: the outputs of {', '.join(STAGES[first:])} moved to {aside}")
    if mode != "all":
      for earlier in STAGES[:STAGES.index(mode)]:
        _check_stage(config, wd, earlier)
    return _run_stages(config, wd, chosen, skip_finished=mode == "all")


def _check_stage(config, wd: Workdir, stage: str) -> bool:
  if not wd.stage_record(stage).is_file():  # nothing to compare (and no input to identify)
    return False
  way_on = (f"Use a new --workdir, or --redo={stage} to run it again (its outputs and those of the "
            f"stages after it are moved to {wd.root / 'replaced'}/)")
  return records.check(wd.stage_record(stage), stage_inputs(config, stage),
                       f"the {stage} stage in {wd.root}", way_on)


def _matches(config, wd: Workdir, stage: str) -> bool:
  try:
    return _check_stage(config, wd, stage)
  except records.StaleInputs:
    return False


def _run_stages(config, wd: Workdir, stages: tuple[str, ...], skip_finished: bool):
  result, start = None, time.perf_counter()
  for stage in stages:
    label = f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}"
    # Fine-tuning re-runs when its settings changed (no refusal): each result carries its own
    # inputs, and only those that match are reused (finetune_stage.run_stage).
    finished = _matches if stage == "finetune" else _check_stage
    if skip_finished and finished(config, wd, stage):
      print(f"{label}: done before with these settings, skipped")
      continue
    print(f"{label} ...")
    t0 = time.perf_counter()
    # An export interrupted under "all" is redone whole (its finished targets replaced).
    run_config = _with(config, "export.overwrite", True) if skip_finished and stage == "export" else config
    result = MODES[stage](run_config, wd)
    if jax.process_index() == 0:
      records.write(wd.stage_record(stage), stage_inputs(config, stage),
                    seconds=round(time.perf_counter() - t0, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(f"{label}: {time.perf_counter() - t0:.1f} s")
  if len(stages) > 1 and jax.process_index() == 0:
    suite = wd.suite_file("md")
    print(f"all stages finished in {time.perf_counter() - start:.1f} s; GLUE table: {wd.glue_summary()}")
    if suite.is_file():
      print(f"evaluation suite, no fine-tuning ({suite}):\n{suite.read_text()}", end="")
  return result


def _with(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
  """A copy of `config` with one key changed: the caller's config is never mutated."""
  copy = ml_collections.ConfigDict(config.to_dict())
  group, name = key.split(".")
  copy[group][name] = value
  return copy
