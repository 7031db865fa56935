"""Kept GLUE results re-keyed to their model's current weights, once a recomputed run reproduces them.

A GLUE result made before results carried a weights digest (records.model_identity) names its
model by a hash of its files alone. The same SuperLM training on another CPU gives the same
student in other bytes (float rounding; 2.5e-8 of the weights' norm apart in our measurement), so
such a result would be fine-tuned again, hours on a CPU, though nothing it depends on changed.
For each --models directory this fine-tunes one seed of one regression task (STS-B) again, under
the protocol the kept result was made with, and only where every epoch's dev Pearson correlation
agrees with the kept run's within --atol adds the model's current files and weights digest to
every kept result of that model (its results and finished runs in --kept, a directory laid out as
a workdir), with a note of the evidence. Anything else changes nothing and says why. The kept
"model" hash stays: it names the bytes the result was computed from. A workdir that holds copies
of the old records keeps them (a restore never overwrites): re-key it too, or remove its copies.

  python experiments/rekey_results.py --kept=docs/headline/workdir --data_dir=../shared/data \
      --workdir=runs/rekey --task=stsb --seed=0 \
      --models=runs/headline/export/base-L6_H288_R2.5_A12,runs/headline/export/small-L6_H176_R2.5_A10
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from autodistil_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import glue_protocol  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "headline.py"),
                                          "The GLUE protocol the kept results were made with.",
                                          lock_config=False)
_KEPT = flags.DEFINE_string("kept", None, "Kept results, laid out as a workdir (see kept_results.py).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the recomputed runs go.")
_MODELS = flags.DEFINE_list("models", [], "Model directories whose kept results to re-key.")
_TASK = flags.DEFINE_string("task", "stsb", "The task of the recomputed run.")
_SEED = flags.DEFINE_integer("seed", 0, "The seed of the recomputed run.")
_ATOL = flags.DEFINE_float("atol", 1e-5, "Largest difference of a dev Pearson correlation still 'the same'.")
flags.mark_flags_as_required(["kept", "data_dir", "workdir"])


def main() -> None:
  from autodistil_jax import glue
  from autodistil_jax.workdir import Workdir

  if not glue.get_task(_TASK.value).is_regression:  # accuracy on a few hundred examples can agree by chance
    raise ValueError(f"--task={_TASK.value}: choose a regression task (stsb), whose correlations move "
                     "with any change of the model; a classification score can agree for models that differ")
  kept = Workdir.at(_KEPT.value)
  plans = [_plan(kept, pathlib.Path(m)) for m in _MODELS.value]  # every bad input before any work
  if not plans:
    raise ValueError("--models: name at least one model directory")
  for model_dir, files, stored in plans:
    if not files:
      print(f"[rekey] {model_dir.name}: every kept result already carries a weights digest")
      continue
    _rekey(model_dir, files, stored)


def _plan(kept, model_dir: pathlib.Path) -> tuple[pathlib.Path, list[pathlib.Path], dict]:
  """(the model, its kept results without a digest, the kept result of --task holding --seed)."""
  from autodistil_jax.glue import TASKS

  if not (model_dir / "config.json").is_file():
    raise ValueError(f"--models: no config.json in {model_dir}")
  name = model_dir.name
  files = [p for t in TASKS for p in (kept.glue_result(name, t), kept.glue_finished_runs(name, t))
           if p.is_file() and "model_weights" not in json.loads(p.read_text())["inputs"]]
  sources = [p for p in (kept.glue_result(name, _TASK.value), kept.glue_finished_runs(name, _TASK.value))
             if p.is_file()]
  stored = json.loads(sources[0].read_text()) if sources else None
  if files and (stored is None or not any(r["seed"] == _SEED.value for r in stored["runs"])):
    raise ValueError(f"{kept.root}: no kept {_TASK.value} run of seed {_SEED.value} for {name} to reproduce")
  return model_dir.absolute(), files, stored


def _rekey(model_dir: pathlib.Path, files: list[pathlib.Path], stored: dict) -> None:
  from autodistil_jax import finetune_stage, glue, records
  from autodistil_jax.workdir import Workdir, write_text_atomic

  config = _CONFIG.value
  task = glue.get_task(glue_protocol.apply(config, _DATA_DIR.value, [_TASK.value],
                                           [str(s) for s in stored["inputs"]["seeds"]])[0])
  identity = records.model_identity(model_dir)
  protocol, before = (finetune_stage.result_inputs(config, task, identity), stored["inputs"])
  if changes := records.changed_keys(*({k: v for k, v in i.items() if k not in records.MODEL_KEYS}
                                       for i in (before, protocol))):
    print(f"[rekey] {model_dir.name}: the kept {task.name} result was made under another protocol "
          f"({'; '.join(changes)}); nothing re-keyed")
    return
  config.glue.update(seeds=(_SEED.value,), include_teacher=False, models=(str(model_dir),))
  wd = Workdir.at(pathlib.Path(_WORKDIR.value) / model_dir.name)
  finetune_stage.run_stage(config, wd, [task.name])
  again = json.loads(wd.glue_result(model_dir.name, task.name).read_text())["runs"][0]
  before = next(r for r in stored["runs"] if r["seed"] == _SEED.value)
  difference = _largest_difference(before["epochs"], again["epochs"])
  if difference > _ATOL.value:
    print(f"[rekey] {model_dir.name}: seed {_SEED.value} of {task.name} recomputed differs from the kept run "
          f"by {difference:.2g} in Pearson > --atol {_ATOL.value:g}; nothing re-keyed")
    return
  note = {"on": datetime.date.today().isoformat(), "current_model": identity["model"],
          "evidence": f"{task.name} seed {_SEED.value} fine-tuned again from the current weights: every "
                      f"epoch's dev Pearson within {difference:.2g} of the kept run's"}
  for path in files:
    record = json.loads(path.read_text())
    record["inputs"].update(model_files=identity["model_files"], model_weights=identity["model_weights"])
    write_text_atomic(path, json.dumps({**record, "model_rekeyed": note}, indent=2) + "\n")
  print(f"[rekey] {model_dir.name}: {len(files)} kept result(s) re-keyed ({note['evidence']})")


def _largest_difference(before: list[dict], again: list[dict]) -> float:
  """The largest difference between two runs' dev Pearson correlations, epoch by epoch (inf if
  their epochs differ). Pearson moves continuously with the predictions, within [-1, 1] (so an
  absolute bound, which a correlation near 0 does not inflate); Spearman, a rank statistic, can
  jump where float rounding swaps near-tied predictions (by 1.9e-5 of itself on the <= 25%
  student, whose Pearson agreed to 1.5e-8)."""
  if len(before) != len(again) or any("pearson" not in e["dev"] for e in (*before, *again)):
    return float("inf")
  return max(abs(a["dev"]["pearson"] - b["dev"]["pearson"]) for b, a in zip(before, again, strict=True))


if __name__ == "__main__":
  cli.run(main)
