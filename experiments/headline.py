"""Issue 8: does AutoDistil's searched student keep the teacher's GLUE score, and beat baselines?

One command runs the whole experiment, resumably (each finished piece is skipped on a re-run):

  python experiments/headline.py --workdir=runs/headline --data_dir=../shared/data --out=docs

1. transfer set: WikiText-2 valid+test, Tiny Shakespeare and the GLUE training sentences;
2. SuperLMs of the demo sub-spaces (train), search, and the students selected per FLOPs budget;
3. GLUE fine-tuning, 3 seeds per cell, first of the claim's cells on every task: the teacher, the
   searched students, and (b) sliced from the teacher and (d) randomly initialised of the first
   budget's student (so a cut-short run still gives the verdict);
4. (c) of each selected architecture, distilled alone with the same objective and steps (a
   one-student sub-space: no weight sharing), then the GLUE cells of all the baselines (each pass
   one task at a time over its models, so a cut-short run still compares like with like);
5. <out>/results.md and its figures (experiments/headline_report.py).
"""

from __future__ import annotations

import copy
import json
import pathlib
import shlex
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))  # headline_report beside this file

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "headline.py"),
                                          "The experiment's config.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the experiment writes.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/, wikitext-2/ and tinyshakespeare/.")
_OUT = flags.DEFINE_string("out", None, "Where results.md and figures/ go (e.g. docs); default: workdir.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rewrite results.md from the cells run so far.")
flags.mark_flags_as_required(["workdir", "data_dir"])

KINDS = {"sliced": "(b) sliced from the teacher", "alone": "(c) distilled alone",
         "random": "(d) random init"}


class Timer:
  """Wall time per stage, kept in <workdir>/headline/timing.json and summed over resumed runs."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.times = json.loads(path.read_text()) if path.is_file() else {}

  def run(self, stage: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text(json.dumps(self.times, indent=2) + "\n")
    print(f"[headline] {stage}: {self.times[stage]:.1f} s")
    return result


def write_glue_sentences(data_dir: pathlib.Path, tasks: list[str], target: pathlib.Path) -> pathlib.Path:
  """The unlabeled sentences of the GLUE training sets, one per line (labels are not read)."""
  from autodistil_jax import glue

  if target.is_file():
    return target
  seen: dict[str, None] = {}
  for name in tasks:
    for row in glue.read_split(glue.get_task(name), data_dir / "glue", "train").texts:
      seen.update(dict.fromkeys(t.strip() for t in row if t.strip()))
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_suffix(".tmp")
  tmp.write_text("\n".join(seen) + "\n", encoding="utf-8")
  tmp.replace(target)
  print(f"[headline] transfer set: {len(seen)} GLUE training sentences -> {target}")
  return target


def transfer_corpus(data_dir: pathlib.Path, glue_file: pathlib.Path) -> str:
  parts = [data_dir / "wikitext-2" / "valid.txt", data_dir / "wikitext-2" / "test.txt",
           data_dir / "tinyshakespeare" / "input.txt", glue_file]
  missing = [str(p) for p in parts if not p.is_file()]
  if missing:
    raise FileNotFoundError(f"transfer-set files not found: {', '.join(missing)}; check --data_dir")
  return ",".join(str(p) for p in parts)


def build_baselines(config, workdir: pathlib.Path, timer: Timer, teacher, selected: dict[str, dict],
                    kinds: tuple[str, ...] = tuple(KINDS)) -> list[str]:
  """The baselines `kinds` ((b) sliced, (c) alone, (d) random) of every selected architecture
  (`selected`: budget -> search row), as HF checkpoints under baselines/; those present are kept."""
  from autodistil_jax import export, hf_io, parallel, pipeline
  from autodistil_jax.defaults import subspace_config
  from autodistil_jax.model import random_student
  from autodistil_jax.search_space import Arch, SubSpace
  from autodistil_jax.train import load_superlm, train_superlm

  teacher_dir = hf_io.resolve_checkpoint(config.teacher)
  mesh = parallel.make_mesh()
  archs = dict.fromkeys(Arch.from_row(row) for row in selected.values())
  common = {"teacher_dir": teacher_dir, "teacher_name": str(config.teacher), "seq_len": config.data.seq_len}
  dirs = []
  for arch in archs:
    targets = {kind: workdir / "baselines" / f"{kind}-{arch.name}" for kind in kinds}
    dirs += [str(t) for t in targets.values()]
    missing = {kind: target for kind, target in targets.items() if not target.exists()}
    if "sliced" in missing:
      export.export_student(teacher, arch, missing["sliced"], subspace="sliced from the teacher", **common)
    if "random" in missing:
      export.export_student(random_student(teacher.config, arch, config.seed), arch, missing["random"],
                            subspace="random initialisation", **common)
    if "alone" in missing:
      name = "alone-" + arch.name.replace(".", "p")  # config keys cannot hold dots
      alone = copy.deepcopy(config)
      alone.subspaces = {name: subspace_config(SubSpace.only(name, arch))}
      tokens, train_idx, _ = pipeline.load_split_corpus(alone, workdir)
      timer.run(f"train alone {arch.name}", train_superlm, alone, workdir, name, teacher, tokens,
                train_idx, mesh)
      student = load_superlm(alone, workdir, name, teacher, mesh)[0]
      export.export_student(student, arch, missing["alone"], subspace="distilled alone", **common)
  return dirs


def invocation() -> str:
  """The command as run, less --report_only: what resumes (and rewrites) this experiment."""
  args = [a for a in sys.argv[1:] if a.lstrip("-").split("=")[0] != "report_only"]
  return shlex.join(["python", "experiments/headline.py", *args])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import headline_report

  from autodistil_jax import finetune as finetune_stage
  from autodistil_jax import pipeline
  from autodistil_jax.search_space import Arch

  config = _CONFIG.value
  workdir = pipeline.check_workdir(_WORKDIR.value)
  data_dir = pathlib.Path(_DATA_DIR.value).expanduser().absolute()
  out = pathlib.Path(_OUT.value or workdir)
  timer = Timer(workdir / "headline" / "timing.json")
  if _REPORT_ONLY.value:
    path = headline_report.write_report(workdir, out, config, timer.times, KINDS, invocation())
    print(f"[headline] report (cells run so far): {path}")
    return
  glue_file = write_glue_sentences(data_dir, list(config.glue.tasks), workdir / "corpus" / "glue_train.txt")
  config.data.corpus = transfer_corpus(data_dir, glue_file)
  config.data.glue_dir = str(data_dir / "glue")
  for stage in ("train", "search", "export"):  # each skipped once done (its marker)
    if not (workdir / "stages" / f"{stage}.done").is_file():
      timer.run(stage, pipeline.run_stages, config, workdir, (stage,))
  selected = headline_report.read_selected(workdir)
  tasks = list(config.glue.tasks)
  # The claim's cells first, on every task: the teacher, the searched students, and (b) and (d) of
  # the first budget's student. A run cut short still gives the verdict; then (c), which needs its
  # own distillation runs, and all the rest.
  first = Arch.from_row(selected[config.search.budgets[0]]).name
  teacher = pipeline.load_teacher(config)  # once, for both calls of build_baselines
  quick = build_baselines(config, workdir, timer, teacher, selected, ("sliced", "random"))
  claim_models = tuple(d for d in quick if pathlib.Path(d).name in (f"sliced-{first}", f"random-{first}"))

  def finetune_all(models: tuple[str, ...]) -> None:
    for task in tasks:  # one task at a time over its models: a cut-short run compares like with like
      one = copy.deepcopy(config)
      one.glue.tasks, one.glue.models = (task,), models
      timer.run(f"finetune {task}", pipeline.run_finetune, one, workdir)

  finetune_all(claim_models)
  baselines = build_baselines(config, workdir, timer, teacher, selected)
  finetune_all(tuple(baselines))
  config.glue.models = tuple(baselines)
  models = list(finetune_stage.finetune_models(config, workdir))
  finetune_stage.write_summary(workdir, models, tasks)
  path = headline_report.write_report(workdir, out, config, timer.times, KINDS, invocation())
  print(f"[headline] report: {path}")


if __name__ == "__main__":
  app.run(main)
