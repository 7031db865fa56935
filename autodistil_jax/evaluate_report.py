"""Outputs of the evaluation stage: the table (CSV and Markdown), the plot, and each export's
model card section. Formatting, and writes that appear whole or not at all; the measures come from
evaluate.py."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from autodistil_jax import atomic
from autodistil_jax.workdir import SUITE_FILES, write_text_atomic

# Columns of the Markdown table: (row key, header, format). Higher is better but for relation.
COLUMNS = (("params", "params", lambda v: f"{v / 1e6:.2f}M"), ("gflops", "GFLOPs", "{:.3f}".format),
           ("relation", "relation loss ↓", "{:.5f}".format), ("cka", "CKA", "{:.3f}".format),
           ("sts_spearman", "STS-B ρ", "{:.1f}".format))


def probe_tasks(rows: Sequence[dict]) -> list[str]:
  return [k[len("probe_"):] for k in rows[0] if k.startswith("probe_") and k.count("_") == 1
          and k != "probe_avg"] if rows else []


def markdown_table(rows: Sequence[dict]) -> str:
  tasks = probe_tasks(rows)
  head = ["model", "kind", "arch"] + [h for _, h, _ in COLUMNS] + [f"probe {t}" for t in tasks]
  head += ["probe avg"] if tasks else []
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for r in rows:
    cells = [r["model"], r["kind"], r["arch"]] + [fmt(r[k]) for k, _, fmt in COLUMNS]
    cells += [f"{r[f'probe_{t}']:.1f}" for t in tasks] + ([f"{r['probe_avg']:.1f}"] if tasks else [])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict]) -> None:
  fields = list(dict.fromkeys(k for r in rows for k in r))
  with path.open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def read_csv(path: Path) -> list[dict]:
  """The rows write_csv wrote, numbers as floats again (model, kind and arch stay text)."""
  def value(text: str):
    try:
      return float(text)
    except ValueError:
      return text
  with path.open(newline="", encoding="utf-8") as f:
    return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot(path: Path, rows: Sequence[dict]) -> None:
  """Zero-shot STS-B, probe average and CKA against GFLOPs, one marker per kind of model."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [("sts_spearman", "zero-shot STS-B Spearman"), ("cka", "CKA to the teacher (held-out)")]
  if "probe_avg" in rows[0]:
    panels.insert(1, ("probe_avg", "frozen-feature probe average"))
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), dpi=110)
  markers = {"teacher": "*", "searched": "o", "export": "o", "sliced": "s", "random": "x"}
  for ax, (key, title) in zip(axes, panels, strict=True):
    for kind in dict.fromkeys(r["kind"] for r in rows):
      mine = [r for r in rows if r["kind"] == kind]
      ax.scatter([r["gflops"] for r in mine], [r[key] for r in mine], label=kind,
                 marker=markers.get(kind, "o"), s=90 if kind == "teacher" else 40)
    ax.set_xlabel("GFLOPs per sequence")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)


def card_section(row: dict, others: Sequence[dict]) -> str:
  """The model card's evaluation section: this student's row, beside the teacher's and those of the
  same architecture sliced from the teacher (what SuperLM training added)."""
  rows = [row, *others]
  return ("## Evaluation (task-agnostic suite, no fine-tuning)\n\n"
          "Measured by autodistil_jax's `--mode=evaluate` (docs/evaluation.md of the project): the "
          "held-out relation-distillation loss to the teacher, linear CKA of final token states "
          "against the teacher's, zero-shot STS-B dev (Spearman of cosine similarities of pooled "
          "embeddings) and logistic-regression probes on frozen pooled features (GLUE dev metrics).\n\n"
          f"{markdown_table(rows)}")


def card_results(row: dict) -> list:
  """The suite's numbers of one model as the Hub's model-index results (percent)."""
  from huggingface_hub import EvalResult

  from autodistil_jax import glue

  results = [EvalResult(task_type="sentence-similarity", dataset_type="glue", dataset_config="stsb",
                        dataset_name="GLUE STS-B", dataset_split="validation", metric_type="spearmanr",
                        metric_name="Spearman, zero-shot cosine of pooled embeddings",
                        metric_value=round(float(row["sts_spearman"]), 2))]
  for name in probe_tasks([row]):
    task = glue.get_task(name)
    results.append(EvalResult(
        task_type="text-classification", dataset_type="glue", dataset_config=name,
        dataset_name=f"GLUE {task.directory}", dataset_split=task.dev_splits[0].replace("dev", "validation"),
        metric_type=task.metrics[0] if len(task.metrics) == 1 else "+".join(task.metrics),
        metric_name=f"{'/'.join(task.metrics)}, logistic-regression probe on frozen pooled features",
        metric_value=round(float(row[f"probe_{name}"]), 2)))
  return results


def update_card(export_dir: Path, row: dict, others: Sequence[dict]) -> None:
  """Puts (or replaces) the evaluation section and the suite's model-index results in
  export_dir/README.md."""
  from autodistil_jax import cards

  card = export_dir / "README.md"
  text = cards.put_results(cards.put_section(card, "evaluation", card_section(row, others)), "suite",
                           card_results(row))
  write_text_atomic(card, text)


def write_report(out: Path, rows: Sequence[dict], export_dirs: dict[str, Path]) -> Path:
  """out/suite.csv, suite.md and suite.png, written whole into a temporary sibling and renamed into
  place (as search/ is); the section of each export's card. Returns suite.md."""
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = atomic.temp_dir_for(out)
  write_csv(tmp / SUITE_FILES["csv"], rows)
  (tmp / SUITE_FILES["md"]).write_text(markdown_table(rows), encoding="utf-8")
  plot(tmp / SUITE_FILES["png"], rows)
  atomic.replace_dir(tmp, out)
  for r in rows:
    if r["model"] in export_dirs:
      others = [o for o in rows
                if o["kind"] == "teacher" or (o["kind"] == "sliced" and o["arch"] == r["arch"])]
      update_card(export_dirs[r["model"]], r, others)
  return out / SUITE_FILES["md"]
