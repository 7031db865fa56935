"""Issue 15, part 4, the paper's design claim: K=3 compact sub-spaces against one large space that
covers all three, with the same total number of SuperLM steps, compared on the students each
selects under the same budgets.

  python experiments/k_ablation.py --workdir=runs/k_ablation --data_dir=../shared/data \
      --out=docs/k_ablation [--arms=k3,k1,k3_long]

One pipeline run per arm on the headline's config (configs/headline.py; `:gpu` for a GPU),
each in its own workdir under --workdir and resumable stage by stage: `k3` trains the config's
sub-spaces for train.num_steps each; `k1` trains one sub-space whose every factor takes the values
of all of them (the Cartesian product, as the paper's single space) for K x train.num_steps;
`k3_long` (with --arms) trains the K sub-spaces for K x train.num_steps each, as long as k1's one
SuperLM, to tell what k1 gains by its reach (architectures no sub-space holds) from what it gains by
training each SuperLM longer. Each arm searches its space, exports the students selected per budget
and runs the evaluation suite on them with their sliced and random twins (`--glue`: GLUE too, on
`--glue_tasks`). <out>/results.md puts the arms' picks side by side per budget.

`--kK_from=runs/headline` reads the kK arm from a finished run of this very config instead of
training it again (the headline's is one: its searched students are already fine-tuned on every
task, 3 seeds): its train and search records must match the arm's, the transfer set compared by
content, and nothing is written there.
"""

from __future__ import annotations

import json
import pathlib
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from autodistil_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from timing import Timer, invocation  # noqa: E402
from transfer import describe_transfer, with_transfer_set  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "headline.py"),
                                          "The experiment's config.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the arms' runs, one workdir each.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/, wikitext-2/ and tinyshakespeare/.")
_OUT = flags.DEFINE_string("out", None, "Where results.md goes (default: the workdir).")
_GLUE = flags.DEFINE_bool("glue", False, "Also fine-tune the selected students (on --glue_tasks).")
_GLUE_TASKS = flags.DEFINE_list("glue_tasks", None, "The tasks --glue fine-tunes on and the report shows "
                                "(default: config.glue.tasks, which also name the transfer set's sentences).")
_KK_FROM = flags.DEFINE_string("kK_from", None, "A finished run of this config read as the kK arm instead "
                               "of training it (e.g. the headline's workdir); never written to.")
_ARMS = flags.DEFINE_list("arms", ["k3", "k1"], "Arms to run and report, of kK, k1 and kK_long (K: the "
                          "config's number of sub-spaces).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Only rewrite results.md from what has run (a --kK_from arm is still checked).")
flags.mark_flags_as_required(["workdir", "data_dir"])

FACTORS = ("layers", "hidden", "mlp_ratio", "heads")


def one_space(subspaces: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The single space of the ablation: every factor takes the values of all the sub-spaces."""
  return ml_collections.ConfigDict({f: tuple(sorted({v for s in subspaces.values() for v in s[f]}))
                                    for f in FACTORS})


def arm_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{"kK": the config as given, "k1": one space for K times the steps (the same SuperLM steps in
  all), "kK_long": the K sub-spaces for K times the steps each (each SuperLM as long as k1's)}."""
  k = len(config.subspaces)

  def variant(subspaces: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    arm = ml_collections.ConfigDict(config.to_dict())
    arm.subspaces = subspaces
    arm.train.num_steps = config.train.num_steps * k
    arm.glue.include_teacher = False  # fine-tuned once, in the kK arm
    return arm

  return {f"k{k}": config, "k1": variant(ml_collections.ConfigDict({"all": one_space(config.subspaces)})),
          f"k{k}_long": variant(config.subspaces)}


def chosen_arms(config: ml_collections.ConfigDict, names: list[str]) -> dict[str, ml_collections.ConfigDict]:
  """The arms of `names`, in that order; an unknown name is refused before any work."""
  arms = arm_configs(config)
  if bad := [n for n in names if n not in arms]:
    raise SystemExit(f"error: --arms: unknown {bad}; this config's arms are {list(arms)}")
  return {n: arms[n] for n in names}


def read_arm(root: pathlib.Path) -> tuple[dict, dict[str, dict]]:
  """(budget -> selected row, model name -> suite row) of one arm's run, as far as it got."""
  from autodistil_jax import evaluate_report
  from autodistil_jax.workdir import Workdir

  wd = Workdir.at(root)
  selected = json.loads(wd.selected_file.read_text()) if wd.selected_file.is_file() else {}
  rows = evaluate_report.read_csv(wd.suite_file("csv")) if wd.suite_file("csv").is_file() else []
  return selected, {row["model"]: row for row in rows}


def check_finished_run(config: ml_collections.ConfigDict, run: pathlib.Path) -> None:
  """Refuses `run` as the arm `config` makes unless its train and search records match the
  config's inputs; the transfer set's path may differ, its content (input:corpus) may not."""
  from autodistil_jax import pipeline, records
  from autodistil_jax.workdir import Workdir

  for stage in ("train", "search"):
    record = records.read(Workdir.at(run).stage_record(stage))
    if record is None:
      raise ValueError(f"--kK_from={run}: no finished {stage} stage there")
    changes = [c for c in records.changed_keys(record["inputs"], pipeline.stage_inputs(config, stage))
               if not c.startswith("data.corpus ")]
    if changes:
      raise ValueError(f"--kK_from={run}: its {stage} stage ran with other settings than this arm: "
                       + "; ".join(changes))


def glue_cell(path: pathlib.Path, task_name: str) -> str:
  """One fine-tuned (student, task) result: mean ± std over seeds and seed 0's own score (an arm
  fine-tuned on fewer seeds compares on it); "—" before it has run."""
  from autodistil_jax import finetune_report, glue

  if not path.is_file():
    return "—"
  result, task = json.loads(path.read_text()), glue.get_task(task_name)
  seed0 = [next(iter(r["best"].values())) for r in result["runs"] if r["seed"] == 0]
  first = f"; seed 0: {100 * glue.main_score(task, seed0[0]):.1f}" if seed0 else ""
  return finetune_report.seed_mean_cell(task, result) + first


def glue_lines(config, picks: dict[str, tuple[dict, dict]], roots: dict[str, pathlib.Path],
               tasks: list[str]) -> list[str]:
  """The arms' picks (read_arm per arm) per budget, fine-tuned on `tasks` (GLUE dev)."""
  from autodistil_jax.workdir import Workdir

  lines = ["| budget | arm | selected | " + " | ".join(tasks) + " |", "|---" * (3 + len(tasks)) + "|"]
  for budget in config.search.budgets:
    for arm, (selected, _) in picks.items():
      row = selected.get(budget)
      if row is not None:
        name, wd = f"{row['subspace']}-{row['name']}", Workdir.at(roots[arm])
        lines.append(f"| {budget} | {arm} | {row['name']} | "
                     + " | ".join(glue_cell(wd.glue_result(name, t), t) for t in tasks) + " |")
  return lines


def _cells(row: dict | None) -> str:
  if row is None:
    return "— | — | — | —"
  return " | ".join(f"{row[k]:{fmt}}" for k, fmt in (
      ("relation", ".5f"), ("cka", ".3f"), ("sts_spearman", ".1f"), ("probe_avg", ".1f")))


def report_lines(config, picks: dict[str, tuple[dict, dict]]) -> list[str]:
  """The arms' picks (read_arm per arm) per budget: architecture, cost, the suite for it and for
  its sliced twin."""
  lines = ["| budget | arm | selected | sub-space | GFLOPs | params | relation loss ↓ | CKA | STS-B ρ | "
           "probe avg | sliced twin: relation | CKA | STS-B ρ | probe avg |", "|---" * 14 + "|"]
  for budget in config.search.budgets:
    for arm, (selected, suite) in picks.items():
      row = selected.get(budget)
      if row is None:
        lines.append(f"| {budget} | {arm} | (not searched yet) |" + " |" * 11)
        continue
      name = f"{row['subspace']}-{row['name']}"
      lines.append(f"| {budget} | {arm} | {row['name']} | {row['subspace']} | {row['flops'] / 1e9:.3f} | "
                   f"{row['params'] / 1e6:.2f}M | {_cells(suite.get(name))} | "
                   f"{_cells(suite.get('sliced-' + row['name']))} |")
  return lines


def write_report(config, arms, roots: dict[str, pathlib.Path], out: pathlib.Path,
                 times: dict[str, float], tasks: list[str], notes: list[str]) -> pathlib.Path:
  from autodistil_jax.finetune_report import epochs_text

  picks = {arm: read_arm(roots[arm]) for arm in arms}  # each arm's files read once, for both tables
  spaces = {arm: {name: dict(s) for name, s in c.subspaces.items()} for arm, c in arms.items()}
  sizes = {arm: sum(len(s["layers"]) * len(s["hidden"]) * len(s["mlp_ratio"]) * len(s["heads"])
                    for s in sub.values()) for arm, sub in spaces.items()}
  lines = [
      "# K=3 compact sub-spaces against one large space (issue 15, part 4)", "",
      "Produced by `experiments/k_ablation.py`; resume or regenerate with:", "",
      "```", invocation("experiments/k_ablation.py"),
      "```", "",
      f"Transfer set: {describe_transfer(config)}; batch {config.train.batch_size}, sequence length "
      f"{config.data.seq_len}, peak learning rate {config.train.learning_rate:g}, "
      f"{config.data.heldout} held-out sequences for the search and the suite's relation loss.", "",
      *[f"- `{arm}`: {len(c.subspaces)} SuperLM(s) of {c.train.num_steps} steps each, "
        f"{sizes[arm]} students: " + "; ".join(
            f"{n} = {', '.join(f'{f} {tuple(s[f])}' for f in FACTORS)}" for n, s in spaces[arm].items())
        for arm, c in arms.items()], "",
      "The suite's columns (docs/evaluation.md): relation loss to the teacher on the held-out text, "
      "linear CKA to the teacher, zero-shot STS-B dev Spearman, frozen-feature probe average; each "
      "selected student beside the same architecture sliced from the teacher, untrained.", "",
      *report_lines(config, picks), "",
      *notes, "",
      f"GLUE dev after fine-tuning ({', '.join(tasks)}; the headline's protocol: "
      f"{epochs_text(config.glue, tasks)}, learning rate "
      f"{', '.join(f'{x:g}' for x in config.glue.learning_rates)}):", "",
      *glue_lines(config, picks, roots, tasks), "",
      "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), ""]
  out.mkdir(parents=True, exist_ok=True)
  path = out / "results.md"
  path.write_text("\n".join(lines), encoding="utf-8")
  return path


def arm_roots(config: ml_collections.ConfigDict, root: pathlib.Path, arms: dict,
              kk_from: str | None) -> dict[str, pathlib.Path]:
  """Each arm's workdir: its own under `root`, but the kK arm's is `kk_from` when given (checked
  for a train record here, before any work; for matching inputs by check_finished_run)."""
  from autodistil_jax.workdir import Workdir

  roots = {arm: root / arm for arm in arms}
  if kk_from:
    kk = f"k{len(config.subspaces)}"
    if kk not in arms:
      raise ValueError(f"--kK_from: the {kk} arm is not in --arms={','.join(arms)}")
    roots[kk] = pathlib.Path(kk_from)
    if not Workdir.at(roots[kk]).stage_record("train").is_file():
      raise ValueError(f"--kK_from={kk_from}: no finished SuperLM training there (no train record)")
  return roots


def main() -> None:
  from autodistil_jax import finetune_stage, glue, runner
  from autodistil_jax.workdir import Workdir

  root = pathlib.Path(_WORKDIR.value)
  data_dir = pathlib.Path(_DATA_DIR.value).expanduser().absolute()
  out = pathlib.Path(_OUT.value or root)
  arms = chosen_arms(_CONFIG.value, _ARMS.value)
  roots = arm_roots(_CONFIG.value, root, arms, _KK_FROM.value)
  borrowed = [arm for arm in arms if roots[arm] != root / arm]
  tasks = [glue.get_task(t).name for t in (_GLUE_TASKS.value or _CONFIG.value.glue.tasks)]  # checked first
  timer, glue_file, checked = Timer(root / "timing.json", "k_ablation"), root / "glue_train.txt", []
  for arm, arm_config in arms.items():
    # --report_only runs nothing, but still checks a borrowed arm against the transfer set written
    # before (a report never says "records match" unchecked).
    if _REPORT_ONLY.value and not (arm in borrowed and glue_file.is_file()):
      continue
    # The transfer set is written once under --workdir (a missing data root stops the first arm
    # before any write). Each stage is reused while its record matches (a changed arm is refused).
    arm_config = with_transfer_set(arm_config, data_dir, glue_file, write=not _REPORT_ONLY.value)
    if arm in borrowed:
      check_finished_run(arm_config, roots[arm])  # read, never run: its GLUE cells are its own
      checked.append(arm)
      continue
    timer.run(arm, runner.run, "all", arm_config, roots[arm], (), "evaluate")
    if _GLUE.value:
      timer.run(f"{arm} GLUE", finetune_stage.run_stage, arm_config, Workdir.at(roots[arm]), tasks)
  notes = [f"`{arm}` is read from {roots[arm]}, a finished run of this config ("
           + ("its train and search records match)." if arm in checked else
              "not yet checked against it: no transfer set under --workdir).") for arm in borrowed]
  path = write_report(_CONFIG.value, arms, roots, out, timer.times, tasks, notes)
  print(f"[k_ablation] report: {path}")


if __name__ == "__main__":
  cli.run(main)
