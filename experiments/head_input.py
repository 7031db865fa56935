"""What the GLUE head reads (config.glue.head_input), side by side on the same models and seeds.

Why a narrow student fine-tunes so badly on STS-B (docs/results.md, section 5): its sliced BERT
pooler gives features 2-4x smaller than the teacher's, while its mean-pooled embedding scores
70.7 zero-shot. This fine-tunes each model under each head input with the headline's protocol
(configs/headline.py), resumably:

  python experiments/head_input.py --workdir=runs/head_input --data_dir=../shared/data \
      --models=runs/headline/export/small-L6_H176_R2.5_A10 --tasks=stsb --seeds=0 \
      --head_inputs=pooler,mean,cls --out=docs/head_input

Each head input is a workdir of its own (<workdir>/<head_input>), holding the finetune stage's
results.json per (model, task), reused on a re-run while its inputs match. Writes
<out>/results.md: one row per (model, head input), a column per task (mean ± std over seeds), and
the seconds each took.
"""

from __future__ import annotations

import json
import pathlib
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from autodistil_jax import cli, glue

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import glue_protocol  # noqa: E402
from timing import invocation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "headline.py"),
                                          "The GLUE protocol (config.glue).", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the fine-tuning results.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/.")
_MODELS = flags.DEFINE_list("models", [], "Hugging Face BERT directories to fine-tune.")
_TEACHER = flags.DEFINE_bool("teacher", False, "Also fine-tune the config's teacher.")
_TASKS = flags.DEFINE_list("tasks", ["stsb"], "GLUE tasks.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Fine-tuning seeds.")
_HEAD_INPUTS = flags.DEFINE_list("head_inputs", ["pooler", "mean", "cls"], "What the head reads.")
_OUT = flags.DEFINE_string("out", None, "Where results.md goes; default: the workdir.")
flags.mark_flags_as_required(["workdir", "data_dir"])


def _settings() -> list[str]:
  """The head inputs after one clear line about any bad flag, before any work."""
  if bad := [h for h in _HEAD_INPUTS.value if h not in glue.HEAD_INPUTS]:
    raise ValueError(f"--head_inputs: {bad} not in {', '.join(glue.HEAD_INPUTS)}")
  if missing := [m for m in _MODELS.value if not (pathlib.Path(m) / "config.json").is_file()]:
    raise ValueError(f"--models: no config.json in {missing}")
  if not _MODELS.value and not _TEACHER.value:
    raise ValueError("nothing to fine-tune: pass --models and/or --teacher")
  return list(dict.fromkeys(_HEAD_INPUTS.value))


def main() -> None:
  from autodistil_jax import finetune_stage, validate
  from autodistil_jax.workdir import Workdir, write_text_atomic

  head_inputs = _settings()
  config = _CONFIG.value
  tasks = glue_protocol.apply(config, _DATA_DIR.value, _TASKS.value, _SEEDS.value)
  root = pathlib.Path(_WORKDIR.value)
  config.glue.include_teacher = _TEACHER.value
  config.glue.models = tuple(str(pathlib.Path(m).absolute()) for m in _MODELS.value)
  configs = {}
  for head_input in head_inputs:  # every config checked (with its GLUE files) before any work
    configs[head_input] = ml_collections.ConfigDict(config.to_dict())
    configs[head_input].glue.head_input = head_input
    validate.check(configs[head_input], "finetune", ("finetune",), ("finetune",), str(root))
  for head_input, each in configs.items():
    finetune_stage.run_stage(each, Workdir.at(root / head_input), tasks)
  names = (["teacher"] if _TEACHER.value else []) + [pathlib.Path(m).name for m in _MODELS.value]
  out = pathlib.Path(_OUT.value or root)
  out.mkdir(parents=True, exist_ok=True)
  write_text_atomic(out / "results.md", report(root, names, head_inputs, tasks))
  print(f"[head_input] report: {out / 'results.md'}")


def report(root: pathlib.Path, models: list[str], head_inputs: list[str], tasks: list[str]) -> str:
  """The results page: model x head input rows, mean ± std over seeds per task, and seconds."""
  from autodistil_jax.finetune_report import seed_mean_cell
  from autodistil_jax.workdir import Workdir

  lines = ["# What the GLUE head reads", "", f"`{invocation('experiments/head_input.py')}`", "",
           "Each task's GLUE dev score x100 (the mean of its metrics: Pearson and Spearman for STS-B, "
           "F1 and accuracy for MRPC, Matthews for CoLA, else accuracy) at each run's best epoch, mean "
           "± std over seeds; then the seed mean by epoch; seconds: all seeds, compiles included.", "",
           "| model | head input | " + " | ".join(tasks) + " | seconds |",
           "|---|---|" + "---|" * len(tasks) + "---|"]
  for model in models:
    for head_input in head_inputs:
      wd, cells, seconds = Workdir.at(root / head_input), [], 0.0
      for task in tasks:
        path = wd.glue_result(model, task)
        result = json.loads(path.read_text()) if path.is_file() else None
        cells.append(seed_mean_cell(glue.get_task(task), result) if result else "not run")
        seconds += result["seconds"] if result else 0.0
      lines.append(f"| {model} | {head_input} | " + " | ".join(cells) + f" | {seconds:.0f} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  cli.run(main)
