"""Which cut of the teacher stops a slice from learning a sentence-pair task (docs/results.md §5).

The <= 25% student L6_H176_R2.5_A10, sliced from the teacher or searched, scores ~20 on STS-B
fine-tuned under the headline protocol, the <= 50% L6_H288_R2.5_A12 ~68, while both rank STS-B
pairs well zero-shot. Each cut is tried alone here: every --arch is sliced from the config's
teacher with no training (experiment (b) of the headline) and fine-tuned under the config's GLUE
protocol (configs/headline.py, overrides as on launch/main.py), resumably:

  python experiments/slice_ablation.py --workdir=runs/slice_ablation --data_dir=../shared/data \
      --arch=6,176,2.5,10 --arch=6,176,2.5,12 --arch=6,288,2.5,10 --arch=6,288,2.5,12 \
      --arch=4,272,2,9 --arch=6,232,2.5,10 --tasks=stsb --seeds=0 --out=docs/slice_ablation

(3311 s of fine-tuning for these six on a 2-core CPU, 462-618 s each; docs/slice_ablation.)

The slices go to <workdir>/baselines/sliced-<arch> (kept when present), each (model, task) result
to the finetune stage's results.json (reused while its inputs match). Writes <out>/results.md: one
row per arch with its size, a column per task (mean ± std over seeds, the seed mean by epoch) and
the seconds each took.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from autodistil_jax import cli, glue

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import glue_protocol  # noqa: E402
from timing import invocation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "headline.py"),
                                          "The teacher and GLUE protocol.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the slices and their results.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/.")
_ARCHS = flags.DEFINE_multi_string("arch", None, "An architecture to slice, 'L,H,R,A' (repeatable).")
_TASKS = flags.DEFINE_list("tasks", ["stsb"], "GLUE tasks.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Fine-tuning seeds.")
_OUT = flags.DEFINE_string("out", None, "Where results.md goes; default: the workdir.")
flags.mark_flags_as_required(["workdir", "data_dir", "arch"])


def _archs(teacher_dir: pathlib.Path) -> list:
  """The --arch values, after one clear line about any that is malformed or larger than the
  teacher, before any work."""
  from autodistil_jax import hf_io
  from autodistil_jax.search_space import Arch, SubSpace

  archs = list(dict.fromkeys(Arch.parse(text, "--arch") for text in _ARCHS.value))
  shape = hf_io.read_config(teacher_dir).teacher_shape
  for arch in archs:
    SubSpace.only(f"--arch={arch.name}", arch).check_fits(shape)
  return archs


def main() -> None:
  from autodistil_jax import baselines, finetune_stage, hf_io, pipeline, validate
  from autodistil_jax.workdir import Workdir, write_text_atomic

  config = _CONFIG.value
  archs = _archs(hf_io.resolve_checkpoint(config.teacher))
  tasks = glue_protocol.apply(config, _DATA_DIR.value, _TASKS.value, _SEEDS.value)
  root = pathlib.Path(_WORKDIR.value)
  config.glue.include_teacher = False
  validate.check(config, "finetune", ("finetune",), ("finetune",), str(root))
  wd = Workdir.at(root)
  models = [str(d) for d in baselines.build(config, wd, pipeline.load_teacher(config), archs, ("sliced",))]
  finetune_stage.run_stage(config, wd, tasks, models)
  out = pathlib.Path(_OUT.value or root)
  out.mkdir(parents=True, exist_ok=True)
  write_text_atomic(out / "results.md", report(wd, [pathlib.Path(m).name for m in models], tasks,
                                               config.glue))
  print(f"[slice_ablation] report: {out / 'results.md'}")


def report(wd, models: list[str], tasks: list[str], g) -> str:
  """The results page: a row per slice, mean ± std over seeds per task, and seconds."""
  from autodistil_jax.finetune_report import epochs_text, seed_mean_cell

  lines = ["# Which cut of the teacher stops a slice learning the task", "",
           f"`{invocation('experiments/slice_ablation.py')}`", "",
           "Each architecture sliced from the teacher with no training, fine-tuned for "
           f"{epochs_text(g, tasks)}. "
           "Each task's GLUE dev score x100 (the mean of its metrics: Pearson and Spearman for STS-B, F1 "
           "and accuracy for MRPC, Matthews for CoLA, else accuracy) at each run's best epoch, mean ± std "
           "over seeds; then the seed mean by epoch; seconds: all seeds, compiles included. GFLOPs per "
           "sequence of the fine-tuning length, pooler included (the search counts its own length).", "",
           f"| model | params | GFLOPs at length {g.seq_len} | " + " | ".join(tasks) + " | seconds |",
           "|---|---|---|" + "---|" * len(tasks) + "---|"]
  for model in models:
    results = {t: json.loads(p.read_text()) for t in tasks if (p := wd.glue_result(model, t)).is_file()}
    size = next(iter(results.values()), None)
    cells = [seed_mean_cell(glue.get_task(t), results[t]) if t in results else "not run" for t in tasks]
    seconds = sum(r["seconds"] for r in results.values())
    sizes = f"{size['params'] / 1e6:.2f}M | {size['flops'] / 1e9:.3f}" if size else "- | -"
    lines.append(f"| {model} | {sizes} | " + " | ".join(cells) + f" | {seconds:.0f} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  cli.run(main)
