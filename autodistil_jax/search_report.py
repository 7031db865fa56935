"""The search stage's output folder: results.csv (every student), pareto.png (cost against each
criterion, with its front and the selected students; with a proxy search also the agreement of the
two rankings), selected.json and summary.json."""

from __future__ import annotations

import json
from collections.abc import Sequence

from autodistil_jax import atomic
from autodistil_jax.search import CRITERIA, Budget, pareto_front
from autodistil_jax.workdir import SEARCH_FILES

CSV_COLUMNS = ("subspace", "name", "layers", "hidden", "mlp_ratio", "heads", "params", "flops",
               "paper_flops", "loss", "tokens", "proxy_score", "latency_ms")
_LABELS = {"agnostic": "held-out relation distillation loss", "proxy": "proxy task dev score"}


def write_outputs(directory, rows: list[dict], selected: dict[str, dict], budgets: Sequence[Budget],
                  teacher: dict, timing: dict, selection: str = "agnostic",
                  proxy: dict | None = None) -> str:
  """Writes the folder whole into a temporary sibling and renames it into place; returns the lines
  to print. `proxy` (task, timing, Kendall's tau) is given when the proxy search ran."""
  tmp = atomic.temp_dir_for(directory)
  write_results_csv(tmp / SEARCH_FILES["results"], rows)
  plot_pareto(tmp / SEARCH_FILES["pareto"], rows, selected, teacher["flops"], proxy)
  (tmp / SEARCH_FILES["selected"]).write_text(json.dumps(
      {b: {**row, "budget_limit": next(x.limit for x in budgets if x.text == b), "selection": selection}
       for b, row in selected.items()}, indent=2) + "\n")
  criteria = ["agnostic", "proxy"] if proxy else ["agnostic"]
  (tmp / SEARCH_FILES["summary"]).write_text(json.dumps(
      {"teacher": teacher, "timing": timing, "selection": selection, "proxy": proxy,
       "pareto_front": {c: [r["name"] + "@" + r["subspace"] for r in pareto_front(rows, selection=c)]
                        for c in criteria}}, indent=2) + "\n")
  atomic.replace_dir(tmp, directory)
  lines = [f"search: {len(rows)} students in {sum(t['wall_s'] for t in timing.values()):.1f} s"]
  lines += [f"  {n:>6}: {t['students']} students, {t['wall_s']:.1f} s, {t['students_per_s']:.1f}/s"
            for n, t in timing.items()]
  if proxy:
    lines.append(f"proxy search on {proxy['task']}: {proxy['students']} students in "
                 f"{sum(t['wall_s'] for t in proxy['timing'].values()):.1f} s; Kendall's tau against "
                 "the agnostic ranking: "
                 + ", ".join(f"{n} {_tau(t)}" for n, t in proxy["kendall_tau"].items()))
    if proxy["at_constant"] * 2 > proxy["students"]:
      lines.append(f"  warning: {proxy['at_constant']} of {proxy['students']} students score no better "
                   f"than predicting one class ({100 * proxy['constant_score']:.1f}): the proxy cannot "
                   "rank them; give it more config.search.proxy.steps (or another task)")
  lines.append(f"selected by the {selection} search:")
  lines += [f"  {b}: {r['name']} ({r['subspace']}) loss {r['loss']:.4g}"
            + (f", proxy {100 * r['proxy_score']:.1f}" if "proxy_score" in r else "")
            + f", {r['flops'] / 1e9:.3f} GFLOPs, {r['params'] / 1e6:.2f}M params"
            for b, r in selected.items()]
  return "\n".join(lines)


def _tau(tau: float | None) -> str:
  return "undefined (ties)" if tau is None else f"{tau:+.3f}"


def write_results_csv(path, rows: Sequence[dict]) -> None:
  import csv

  with path.open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_pareto(path, rows: Sequence[dict], selected: dict[str, dict], teacher_flops: float,
                proxy: dict | None = None) -> None:
  """FLOPs against each criterion for every student, its Pareto front, the selected students
  labelled; with a proxy search, a third panel: proxy score against held-out loss."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  criteria = ["agnostic", "proxy"] if proxy else ["agnostic"]
  fig, axes = plt.subplots(1, len(criteria) + bool(proxy), figsize=(8 * (len(criteria) + bool(proxy)), 5.5),
                           dpi=110, squeeze=False)
  names = list(dict.fromkeys(r["subspace"] for r in rows))
  for ax, criterion in zip(axes[0], criteria, strict=False):
    key = CRITERIA[criterion]
    for name in names:
      mine = [r for r in rows if r["subspace"] == name and key in r]
      ax.scatter([r["flops"] / 1e9 for r in mine], [r[key] for r in mine], s=10, alpha=0.55,
                 label=f"{name} ({len(mine)} students)")
    front = pareto_front([r for r in rows if key in r], selection=criterion)
    ax.step([r["flops"] / 1e9 for r in front], [r[key] for r in front], where="post", color="black",
            linewidth=1.2, label="Pareto front")
    for budget, row in selected.items():
      if key in row:
        ax.scatter([row["flops"] / 1e9], [row[key]], marker="*", s=180, color="red", edgecolor="black",
                   zorder=5)
        ax.annotate(f"{row['name']}\n{budget}", (row["flops"] / 1e9, row[key]), textcoords="offset points",
                    xytext=(8, 8), fontsize=7, arrowprops={"arrowstyle": "-", "lw": 0.5})
    ax.axvline(teacher_flops / 1e9, color="grey", linestyle="--", linewidth=0.8, label="teacher FLOPs")
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per sequence (exact, 2 per multiply-add)")
    ax.set_ylabel(_LABELS[criterion] + (f" ({proxy['task']})" if criterion == "proxy" else ""))
    ax.set_title(f"{criterion} search: every student of every SuperLM")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  if proxy:
    ax = axes[0][-1]
    for name in names:
      mine = [r for r in rows if r["subspace"] == name and "proxy_score" in r]
      ax.scatter([r["loss"] for r in mine], [r["proxy_score"] for r in mine], s=10, alpha=0.55,
                 label=f"{name}: tau {_tau(proxy['kendall_tau'].get(name))}")
    ax.set_xlabel(_LABELS["agnostic"])
    ax.set_ylabel(f"{_LABELS['proxy']} ({proxy['task']})")
    ax.set_title(f"agreement: Kendall's tau {_tau(proxy['kendall_tau']['all'])} over all students")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)
