"""<out>/results.md for experiments/headline.py (docs/headline/ when run on the CPU): the GLUE table
(mean and std over seeds), the claim checked against it, the Pareto plot and GLUE average against
FLOPs, commands, wall times, hardware."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil

import numpy as np

from autodistil_jax import glue
from autodistil_jax.finetune_report import epochs_text
from autodistil_jax.search_space import Arch
from autodistil_jax.workdir import Workdir


def train_size(g) -> str:
  if not g.max_train_examples:
    return "the full training sets"
  return f"a seeded {g.max_train_examples}-example subset of each training set"


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def hardware() -> str:
  import jax

  device = jax.devices()[0]
  if device.platform == "cpu":
    where = f"CPU ({jax.device_count()} device). No GPU was used"
  else:
    where = f"{jax.device_count()} x {device.device_kind}"
  return f"{cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__} on {where}"


def suite_section(wd: Workdir, figures: pathlib.Path, models: dict[str, dict]) -> list[str]:
  """The evaluation suite's table (no fine-tuning), each row with its kind in this experiment
  (the suite knows (c) only as a further model), and its plot; or why there is none."""
  from autodistil_jax import evaluate_report

  if not wd.suite_file("csv").is_file():
    return ["The evaluation suite has not run yet.", ""]
  rows = evaluate_report.read_csv(wd.suite_file("csv"))
  for row in rows:
    row["kind"] = models.get(row["model"], {}).get("kind", row["kind"])
  shutil.copy(wd.suite_file("png"), figures / "headline_suite.png")
  return ["The task-agnostic suite (docs/evaluation.md) on every model of the table, before any "
          "fine-tuning: held-out relation loss to the teacher, zero-shot STS-B, frozen-feature "
          "probes, CKA to the teacher.", "", evaluate_report.markdown_table(rows).strip(), "",
          "![The suite against FLOPs](figures/headline_suite.png)", ""]


def read_selected(wd: Workdir) -> dict[str, dict]:
  """budget -> the search's row of the student selected under it."""
  return json.loads(wd.selected_file.read_text())


def per_seed_scores(wd: Workdir, model: str, task: str) -> dict[int, float] | None:
  """seed -> main score (x100) at the best epoch, or None if the cell has not run."""
  path = wd.glue_result(model, task)
  if not path.is_file():
    return None
  result = json.loads(path.read_text())
  t = glue.get_task(task)
  runs = [r for r in result["runs"] if r["learning_rate"] == result["best_lr"]]
  return {r["seed"]: 100 * glue.main_score(t, next(iter(r["best"].values()))) for r in runs}


def collect(wd: Workdir, models: dict[str, dict], tasks: list[str]) -> list[dict]:
  """One row per model: params, FLOPs, mean/std per task and of the per-seed GLUE average."""
  rows = []
  for model, role in models.items():
    cells = {t: per_seed_scores(wd, model, t) for t in tasks}
    first = next((wd.glue_result(model, t) for t in tasks
                  if cells[t] is not None), None)
    if first is None:
      continue
    meta = json.loads(first.read_text())
    row = {"model": model, **role, "params": meta["params"], "gflops": meta["flops"] / 1e9, "cells": {},
           "seconds": {}}
    for t in tasks:  # wall time per cell, where results.json records it
      path = wd.glue_result(model, t)
      if cells[t] is not None and "seconds" in (result := json.loads(path.read_text())):
        row["seconds"][t] = result["seconds"]
      if cells[t] is not None:  # the score of learning nothing (majority class; 0 for STS-B)
        row.setdefault("trivial", {})[t] = 100 * json.loads(path.read_text()).get("trivial_score", 0.0)
    for t, scores in cells.items():
      if scores:
        v = np.array(list(scores.values()))
        row["cells"][t] = (float(v.mean()), float(v.std()), len(v))
    if all(cells[t] for t in tasks):
      seeds = sorted(set.intersection(*(set(cells[t]) for t in tasks)))
      avg = np.array([np.mean([cells[t][s] for t in tasks]) for s in seeds])
      row["average"] = (float(avg.mean()), float(avg.std()), len(seeds))
    rows.append(row)
  return rows


def claim(rows: list[dict], budget: str) -> list[str]:
  def find(kind):
    return next((r for r in rows if r["kind"] == kind and (kind == "teacher" or budget in r["budgets"])),
                None)

  teacher, searched = find("teacher"), find("searched")
  if not (teacher and searched and "average" in teacher and "average" in searched):
    return [f"- {budget}: not every cell has run; no verdict.",
            *task_so_far(teacher, searched, [find(k) for k in ("sliced", "alone", "random")])]
  t, s = teacher["average"][0], searched["average"][0]
  lines = [f"- {budget}: the searched student ({searched['gflops'] / teacher['gflops']:.0%} of the "
           f"teacher's FLOPs) averages {s:.1f} = {s / t:.1%} of the teacher's {t:.1f}: "
           f"{'holds' if s >= 0.95 * t else 'does NOT hold'} (>= 95%)."]
  kept = [f"{task} {searched['cells'][task][0] / score[0]:.0%}" if score[0] > 0
          else f"{task} — (teacher {score[0]:.1f})" for task, score in teacher["cells"].items()]
  lines.append(f"  - per task, the searched student keeps: {', '.join(kept)} of the teacher's score")
  for kind in ("sliced", "alone", "random"):
    other = find(kind)
    if other and "average" in other:
      o = other["average"][0]
      gap = s - o
      noise = np.hypot(searched["average"][1], other["average"][1])
      verdict = "beats" if gap > 0 else "does NOT beat"
      wins = [t for t in searched["cells"] if searched["cells"][t][0] > other["cells"][t][0]]
      lines.append(f"  - {verdict} {kind} ({o:.1f}): {gap:+.1f} points (seed std of the difference "
                   f"~{noise:.1f}); higher on {len(wins)} of {len(searched['cells'])} tasks"
                   f"{' (' + ', '.join(wins) + ')' if wins else ''}")
  return lines


def task_so_far(teacher: dict | None, searched: dict | None, others: list[dict | None]) -> list[str]:
  """For a run cut short: per task the searched student has run, its score, its share of the
  teacher's (where the teacher's cell has run), and its gap to each baseline run there."""
  if not searched:
    return []
  lines = []
  for task, (s, s_std, _) in searched["cells"].items():
    t = teacher["cells"][task][0] if teacher and task in teacher["cells"] else None
    kept = ("" if t is None else f" = {s / t:.0%} of the teacher's {t:.1f}" if t > 0
            else f" (teacher {t:.1f})")
    b = (teacher or {}).get("trivial", {}).get(task)
    if t is not None and b and t > b:  # a share of the score hides a high majority class (MRPC)
      kept += f", {(s - b) / (t - b):.0%} of its {t - b:.1f} points over learning nothing ({b:.1f})"
    gaps = [f"{o['kind']} {o['cells'][task][0]:.1f} ({s - o['cells'][task][0]:+.1f}, seed std of the "
            f"difference ~{np.hypot(s_std, o['cells'][task][1]):.1f})"
            for o in others if o and task in o["cells"]]
    lines.append(f"  - so far, {task}: searched {s:.1f} ± {s_std:.1f}{kept}"
                 f"{'; against ' + ', '.join(gaps) if gaps else ''}")
  return lines


def plot_glue_vs_flops(path: pathlib.Path, rows: list[dict], n_tasks: int, seq_len: int) -> None:
  """Each model's GLUE average (over `n_tasks` tasks) against its FLOPs; a model joins once every
  task's cell has run."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  styles = {"teacher": ("*", "black"), "searched": ("o", "tab:red"), "sliced": ("s", "tab:blue"),
            "alone": ("^", "tab:green"), "random": ("x", "tab:grey")}
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for kind, (marker, color) in styles.items():
    mine = [r for r in rows if r["kind"] == kind and "average" in r]
    if mine:
      ax.errorbar([r["gflops"] for r in mine], [r["average"][0] for r in mine],
                  yerr=[r["average"][1] for r in mine], fmt=marker, color=color, capsize=3,
                  markersize=9 if kind == "teacher" else 6, label=kind)
  teacher = next((r for r in rows if r["kind"] == "teacher" and "average" in r), None)
  if teacher:
    ax.axhline(0.95 * teacher["average"][0], color="black", linestyle=":", linewidth=0.8,
               label="95% of the teacher")
  ax.set_xlabel(f"GFLOPs per sequence of {seq_len} tokens (exact)")
  ax.set_ylabel(f"GLUE dev average ({n_tasks} tasks, mean over seeds)")
  ax.set_title("GLUE average against cost")
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  else:  # a cut-short run: say why the axes are empty rather than leave a blank plot
    ax.text(0.5, 0.5, "no model has run every task yet", transform=ax.transAxes, ha="center")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def table(rows: list[dict], tasks: list[str], seq_len: int) -> list[str]:
  # GLUE's sequence length, not the SuperLMs': the setup's FLOPs are at the latter.
  lines = [f"| model | kind | params | GFLOPs (seq {seq_len}) | " + " | ".join(tasks) + " | average |",
           "|---" * (len(tasks) + 5) + "|"]
  for r in rows:
    cells = [f"{r['cells'][t][0]:.1f} ± {r['cells'][t][1]:.1f}" if t in r["cells"] else "—" for t in tasks]
    avg = f"**{r['average'][0]:.1f}** ± {r['average'][1]:.1f}" if "average" in r else "—"
    label = r["kind"] + (f" ({', '.join(r['budgets'])})" if r["budgets"] else "")
    lines.append(f"| {r['model']} | {label} | {r['params'] / 1e6:.2f}M | {r['gflops']:.3f} | "
                 + " | ".join(cells) + f" | {avg} |")
  return lines


def finetune_times(rows: list[dict], tasks: list[str], seeds) -> list[str]:
  """Per (model, task) cell: seconds for all its seeds, compiles and dev evaluations included."""
  lines = [f"Fine-tuning, per cell ({len(seeds)} seeds, compilation and dev evaluation included; — "
           "where the cell ran before cells recorded their time, or has not run):", "",
           "| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for r in rows:
    lines.append(f"| {r['model']} | " + " | ".join(f"{r['seconds'][t]:.0f}" if t in r["seconds"] else "—"
                                                 for t in tasks) + " |")
  timed = sum(sum(r["seconds"].values()) for r in rows)
  count = sum(len(r["seconds"]) for r in rows)
  return lines + ["", f"{count} timed cells: {timed:.0f} s ({timed / 60:.0f} min) in all.", ""]


def write_report(wd: Workdir, out: pathlib.Path, config, times: dict[str, float],
                 kinds: dict[str, str], command: str, transfer: str) -> pathlib.Path:
  """<out>/results.md and <out>/figures/; `command` is the one that ran (and resumes) the
  experiment, `transfer` what the SuperLMs were trained on, in words."""

  tasks = list(config.glue.tasks)
  selected = read_selected(wd)
  models = {"teacher": {"kind": "teacher", "budgets": []}}
  for budget, row in selected.items():  # two budgets may select the same student
    arch = Arch.from_row(row)
    names = {"searched": f"{row['subspace']}-{arch.name}", **{k: f"{k}-{arch.name}" for k in kinds}}
    for kind, name in names.items():
      models.setdefault(name, {"kind": kind, "budgets": []})["budgets"].append(budget)
  rows = collect(wd, models, tasks)
  done = sum(len(r["cells"]) for r in rows)
  status = ("All cells have run." if done == len(models) * len(tasks) else
            f"**Partial: {done} of {len(models) * len(tasks)} (model, task) cells have run.** Re-run the "
            "command to resume; finished cells are kept.")
  figures = out / "figures"
  figures.mkdir(parents=True, exist_ok=True)
  shutil.copy(wd.search_file("pareto"), figures / "headline_pareto.png")
  plot_glue_vs_flops(figures / "headline_glue_vs_flops.png", rows, len(tasks), config.glue.seq_len)
  search = json.loads(wd.search_file("summary").read_text())
  g, t = config.glue, config.train
  total = sum(times.values())
  lines = [
      "# Results: AutoDistil against the teacher and three baselines on GLUE (issues 8 and 15)", "",
      "Produced by `experiments/headline.py` (default config `configs/headline.py`); resume or regenerate "
      "with:", "",
      "```", command, "```", "",
      f"Hardware of the run that wrote this page: {hardware()}. Cells kept from earlier runs may have "
      "run on other machines: a kept result is reused only for the same settings, data and model, "
      "the model up to float rounding (docs/architecture.md, \"Stage records\").", "",
      status, "", "## Setup", "",
      f"- Teacher: {config.teacher} (6 layers, hidden 384, 12 heads; "
      f"{search['teacher']['flops'] / 1e9:.3f} GFLOPs at sequence length {config.data.seq_len}).",
      f"- Transfer set: {transfer}, "
      f"{'packed into sequences of' if config.data.pack else 'one per sequence, cut to'} "
      f"{config.data.seq_len} tokens; {config.data.heldout} sequences held out for the search.",
      f"- SuperLMs: the demo sub-spaces ({', '.join(config.subspaces)}), {t.num_steps} steps each, batch "
      f"{t.batch_size}, peak learning rate {t.learning_rate:g}, {t.loss} relation loss, sandwich rule "
      f"with {t.num_random} random students.",
      "- Search: every student scored on the held-out sequences; "
      f"budgets {', '.join(config.search.budgets)}.",
      *[f"- Selected under {b}: {r['name']} of {r['subspace']} ({r['flops'] / 1e9:.3f} GFLOPs, "
        f"{r['params'] / 1e6:.2f}M params, held-out loss {r['loss']:.4g})."
        for b, r in selected.items()],
      "- Baselines per selected architecture: " + "; ".join(kinds.values()) + f". (c) trains a "
      f"one-student sub-space with the same objective, data and {t.num_steps} steps.",
      f"- GLUE: {', '.join(tasks)} dev; seeds {tuple(g.seeds)}; {train_size(g)}, {epochs_text(g, tasks)}, "
      f"batch {g.batch_size}, learning rate {', '.join(f'{x:g}' for x in g.learning_rates)} with "
      f"{100 * g.get('warmup_ratio', 0.0):g}% linear warmup, sequence length {g.seq_len}; regression head's "
      f"bias starting at {g.get('regression_bias', 'zero').replace('_', ' ')}; best epoch on dev. "
      "Scores x100: accuracy (SST-2, RTE), mean of F1 and accuracy (MRPC), Matthews corr. (CoLA), "
      "mean of Pearson and Spearman (STS-B). ± is the standard deviation over seeds (ddof 0); the "
      "average is taken per seed, then over seeds.", "",
      "## Table", "", *table(rows, tasks, config.glue.seq_len), "",
      "## The evaluation suite", "", *suite_section(wd, figures, models),
      "## The claim", "",
      "The searched student at <= 50% of the teacher's FLOPs keeps >= 95% of the teacher's GLUE average "
      "and beats (b) and (d):", "",
      *[line for budget in selected for line in claim(rows, budget)], "",
      "## Figures", "",
      "![Pareto front](figures/headline_pareto.png)", "",
      "![GLUE average against FLOPs](figures/headline_glue_vs_flops.png)", "",
      "## Wall times", "",
      "Per stage of `experiments/headline.py` in the workdir that wrote this page (its resumed runs "
      "add up; a fresh checkout, which trains its SuperLMs and baselines again, starts over; a "
      "`finetune <task>` entry holds the passes over that task that ran to their end here, so a "
      "cell restored from an earlier checkout or run in an interrupted pass is timed only in the "
      "per-cell table below):", "",
      "| stage | seconds |", "|---|---|",
      *[f"| {k} | {v:.0f} |" for k, v in times.items()],
      f"| **total** | **{total:.0f}** ({total / 60:.0f} min) |", "",
      *finetune_times(rows, tasks, g.seeds),
  ]
  path = out / "results.md"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path
