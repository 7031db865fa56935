"""Issue 8: does AutoDistil's searched student keep the teacher's GLUE score, and beat baselines?

One command runs the whole experiment, resumably (each finished piece is skipped on a re-run):

  python experiments/headline.py --workdir=runs/headline --data_dir=../shared/data --out=docs/headline

1. transfer set: WikiText-2 valid+test, Tiny Shakespeare and the GLUE training sentences;
2. SuperLMs of the demo sub-spaces (train), search, and the students selected per FLOPs budget;
3. (c) of each selected architecture, distilled alone with the same objective and steps (a
   one-student sub-space: no weight sharing; about a minute each);
4. GLUE fine-tuning, 3 seeds per cell, first of the claim's cells on every task: the teacher, the
   searched students, (b) sliced from the teacher and (c) distilled alone of every budget's
   student, and (d) randomly initialised of the first budget's (so a cut-short run still gives
   the verdict);
5. the evaluation suite (no fine-tuning) on the teacher, the searched students and all baselines;
6. the GLUE cells of the remaining baselines (each pass one task at a time over its models, so a
   cut-short run still compares like with like);
7. <out>/results.md and its figures (experiments/headline_report.py).

With --out, every GLUE result and the wall times are also copied to <out>/workdir/ as they are
written, to be committed with the report: a fresh checkout's run restores them first and re-runs
only the cells whose inputs changed (experiments/kept_results.py).

The config's argument picks the machine: configs/headline.py (CPU) or configs/headline.py:gpu
(one GPU, about 10 minutes; experiments/headline_gpu.sh carries what it needs there).
"""

from __future__ import annotations

import pathlib
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from autodistil_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))  # the experiments' own modules, beside this file
from kept_results import KeptResults  # noqa: E402
from timing import Timer, invocation  # noqa: E402
from transfer import describe_transfer, with_transfer_set  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "headline.py"),
                                          "The experiment's config.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the experiment writes.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/, wikitext-2/ and tinyshakespeare/.")
_OUT = flags.DEFINE_string("out", None, "Where results.md and figures/ go (e.g. docs); default: workdir.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rewrite results.md from the cells run so far.")
_ARCHIVE = flags.DEFINE_string("archive", None, "Also write the workdir less its weights to this .tar.gz "
                               "(Workdir.write_archive), with results.md.")
flags.mark_flags_as_required(["workdir", "data_dir"])

def main() -> None:
  import headline_report

  from autodistil_jax import baselines, finetune_report, finetune_stage, parallel, pipeline, runner
  from autodistil_jax.search_space import Arch
  from autodistil_jax.workdir import Workdir

  wd = Workdir.at(_WORKDIR.value)
  data_dir = pathlib.Path(_DATA_DIR.value).expanduser().absolute()
  out = pathlib.Path(_OUT.value or wd.root)
  timing = wd.experiment_file("headline", "timing.json")
  keep = _restore_kept(wd, out, leave_out=(timing,)) if _OUT.value else None
  timer = Timer(timing, on_write=keep)
  command = invocation("experiments/headline.py")
  glue_file = wd.experiment_file("headline", "glue_train.txt")

  def archive() -> None:
    if _ARCHIVE.value:
      wd.write_archive(_ARCHIVE.value, leave_out=(glue_file,))  # the sentences are the data's

  if _REPORT_ONLY.value:
    archive()  # first: a run cut short before the search still brings back its training records
    path = headline_report.write_report(wd, out, _CONFIG.value, timer.times, baselines.KINDS, command,
                                      describe_transfer(_CONFIG.value))
    print(f"[headline] report (cells run so far): {path}")
    return
  config = with_transfer_set(_CONFIG.value, data_dir, glue_file)
  # Each stage is reused while its record matches the config (and refused, naming keys, if not).
  timer.run("train, search, export", runner.run, "all", config, wd.root, (), "export")
  selected = headline_report.read_selected(wd)
  tasks = list(config.glue.tasks)
  archs = [Arch.from_row(row) for row in selected.values()]
  teacher = pipeline.load_teacher(config)
  build = lambda kinds, these: [str(d) for d in baselines.build(
      config, wd, teacher, these, kinds, corpus=lambda: pipeline.load_split_corpus(config, wd),
      mesh=parallel.make_mesh(), alone_inputs=lambda c, n: pipeline.stage_inputs(c, "train", n),
      timed=timer.run)]
  # The claim's cells first, on every task: the teacher, the searched students, (b) and (c) of
  # every budget's student (each budget's verdict needs both; distilling alone costs about a
  # minute, its fine-tuning as much as any student's) and (d) of the first's. A run cut short
  # still gives the verdict; then the suite and the rest.
  claim_models = (build(("sliced", "random"), archs[:1]) + build(("sliced",), archs[1:])
                  + build(("alone",), archs))

  def finetune_all(models: list[str]) -> None:
    for task in tasks:  # one task at a time over its models: a cut-short run compares like with like
      timer.run(f"finetune {task}", finetune_stage.run_stage, config, wd, (task,), models, keep)

  finetune_all(claim_models)
  every = build(tuple(baselines.KINDS), archs)
  # The suite scores (b) and (d) itself (evaluate.baselines); (c) joins as further models.
  suite_config = ml_collections.ConfigDict(config.to_dict())
  suite_config.evaluate.baselines = True
  suite_config.evaluate.models = tuple(d for d in every if pathlib.Path(d).name.startswith("alone-"))
  timer.run("evaluation suite", runner.run, "all", suite_config, wd.root, (), "evaluate")
  finetune_all(every)
  finetune_report.write_summary(wd, list(finetune_stage.finetune_models(config, wd, every)), tasks)
  path = headline_report.write_report(wd, out, config, timer.times, baselines.KINDS, command,
                                      describe_transfer(config))
  archive()
  print(f"[headline] report: {path}")


def _restore_kept(wd, out: pathlib.Path, leave_out: tuple):
  """Brings the results kept under `out` into the workdir where it lacks them, but `leave_out`;
  returns what keeps each new one. The wall times are left out: a fresh workdir redoes its
  SuperLMs and baselines, and their times summed over checkouts would count that work twice (each
  GLUE cell keeps its own time in its result)."""
  kept = KeptResults(wd, out)
  if restored := kept.restore(leave_out):
    print(f"[headline] {len(restored)} results restored from {kept.root} (each GLUE result is reused "
          "only if its inputs, the model's files included, are unchanged)")
  return kept.keep


if __name__ == "__main__":
  cli.run(main)
