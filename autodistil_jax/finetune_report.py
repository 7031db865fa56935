"""The GLUE summary table of the fine-tuning stage (finetune.py): one row per model, a column per
task, tasks the teacher did not learn marked and left out of the average."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from autodistil_jax import glue
from autodistil_jax.workdir import Workdir

# A task counts as learnt when a model beats one that learnt nothing by this many points.
LEARNT_MARGIN = 1.0


def write_summary(wd: Workdir, models: list[str], tasks: list[str]) -> Path:
  """wd.glue_summary("csv") and ("md"): model, params, FLOPs, a column per task, average.

  A task the teacher did not learn (not LEARNT_MARGIN above the majority-class score) measures the
  protocol, not the models: it stays in the table, marked, and is left out of the average."""
  import csv

  rows, trivial_of = [], {}  # trivial_of: (model, task) -> the score of learning nothing
  for model in models:
    results = {}
    for task in tasks:
      path = wd.glue_result(model, task)
      if path.is_file():
        results[task] = json.loads(path.read_text())
    if not results:
      continue
    first = next(iter(results.values()))
    row = {"model": model, "params": first["params"], "gflops": first["flops"] / 1e9}
    for task in tasks:
      row[task] = 100 * results[task]["score_mean"] if task in results else float("nan")
      row[f"{task}_std"] = 100 * results[task]["score_std"] if task in results else float("nan")
      trivial = 100 * results.get(task, {}).get("trivial_score", float("-inf"))
      trivial_of[model, task] = trivial
      row[f"{task}_learnt"] = not row[task] <= trivial + LEARNT_MARGIN
    rows.append(row)
  teacher = next((r for r in rows if r["model"] == "teacher"), None)
  unlearnt = {t: (teacher[t], trivial_of["teacher", t]) for t in tasks
              if teacher is not None and not teacher[f"{t}_learnt"]}
  counted = [t for t in tasks if t not in unlearnt] or tasks
  for row in rows:
    row["average"] = float(np.mean([row[t] for t in counted]))
  wd.glue_root.mkdir(parents=True, exist_ok=True)
  with wd.glue_summary("csv").open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
    writer.writeheader()
    writer.writerows(rows)
  names = [f"{t} (not learnt)" if t in unlearnt else t for t in tasks]
  lines = ["| model | params | GFLOPs | " + " | ".join(names) + " | avg |",
           "|---" * (len(tasks) + 4) + "|"]
  for r in rows:
    cells = [f"{r[t]:.1f} ± {r[t + '_std']:.1f}" + ("" if r[f"{t}_learnt"] else " †") for t in tasks]
    lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['gflops']:.3f} | "
                 + " | ".join(cells) + f" | {r['average']:.1f} |")
  if not all(r[f"{t}_learnt"] for r in rows for t in tasks):
    lines.append("\n† at or within a point of a model that learnt nothing (the majority class; 0 for STS-B).")
  if unlearnt:
    lines.append("\nLeft out of the average: the fine-tuned teacher does not beat a model that learnt "
                 "nothing (majority class; 0 for STS-B) at this budget on " + ", ".join(
                     f"{t} ({s:.1f} vs {b:.1f})" for t, (s, b) in unlearnt.items())
                 + ": raise glue.max_train_examples / glue.epochs, or drop the task.")
  wd.glue_summary("md").write_text("\n".join(lines) + "\n")
  if jax.process_index() == 0:
    print("\n".join(lines))
  return wd.glue_summary("md")


def seed_mean_cell(task: glue.Task, result: dict) -> str:
  """'mean ± std (n=seeds; by epoch a, b, c)' of one stored (model, task) result, x100: what an
  experiment's page shows of a cell."""
  by_epoch = np.mean([[glue.main_score(task, next(iter(e.values()))) for e in run["epochs"]]
                      for run in result["runs"]], axis=0)
  return (f"{100 * result['score_mean']:.1f} ± {100 * result['score_std']:.1f} (n={len(result['runs'])}; "
          f"by epoch {', '.join(f'{100 * x:.1f}' for x in by_epoch)})")


def epochs_text(g: ml_collections.ConfigDict, tasks: Sequence[str]) -> str:
  """"3 epochs" or, where some tasks have their own (glue.task_epochs), "3 epochs (CoLA 10)"."""
  own = {t: task_epochs(g, t) for t in tasks}
  others = [f"{glue.get_task(t).directory} {n}" for t, n in own.items() if n != g.epochs]
  return f"{g.epochs} epochs" + (f" ({', '.join(others)})" if others else "")


def task_epochs(g: ml_collections.ConfigDict, task_name: str) -> int:
  """The epochs `task_name` is fine-tuned for: its glue.task_epochs entry, else glue.epochs."""
  return int(g.get("task_epochs", {}).get(task_name, 0) or g.epochs)
