"""Lightweight task-agnostic search (docs/paper.md section 4): score every student of every SuperLM
with the distillation loss on fixed held-out batches, keep the Pareto front of cost vs loss, and
pick the least-loss student under each budget. No re-training.

One jitted evaluator per sub-space scores a chunk of students at once (vmap over architectures,
batch sharded over devices); a short last chunk is padded, so nothing recompiles.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autodistil_jax import distill
from autodistil_jax.model import BertEncoder, extract_student, get_params
from autodistil_jax.search_space import Arch, Vocab, exact_flops, exact_params, paper_flops

METRICS = ("flops", "params", "paper_flops", "latency_ms")
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BUDGET = re.compile(r"^\s*(\w+)\s*<=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGT]?)\s*"
                     r"(\*\s*teacher)?\s*$")


@dataclasses.dataclass(frozen=True)
class Budget:
  text: str
  metric: str
  limit: float  # absolute, in the metric's own unit

  def allows(self, row: dict) -> bool:
    return row[self.metric] <= self.limit


def parse_budget(text: str, teacher_costs: dict[str, float]) -> Budget:
  """'flops<=0.5*teacher', 'params<=30M', 'paper_flops<=2.1G', 'latency_ms<=5' -> Budget."""
  m = _BUDGET.match(text)
  if not m or m.group(1) not in METRICS:
    raise ValueError(f"budget {text!r} is not METRIC<=NUMBER[K|M|G][*teacher] with METRIC one of "
                     f"{METRICS}, e.g. 'flops<=0.5*teacher' or 'params<=30M'")
  metric, number, unit, relative = m.groups()
  limit = float(number) * _UNITS[unit]
  if relative:
    limit *= teacher_costs[metric]
  return Budget(text, metric, limit)


def student_costs(arch: Arch, head_size: int, seq_len: int, vocab: Vocab, pooler: bool) -> dict:
  return {"params": exact_params(arch, head_size, vocab, pooler),
          "flops": exact_flops(arch, seq_len, head_size, pooler),
          "paper_flops": paper_flops(arch, seq_len)}


def make_teacher_relations(teacher: BertEncoder, dtype=jnp.float32, hidden: bool = False) -> Callable:
  graphdef = nnx.graphdef(teacher)

  @jax.jit
  def relations(params, batch):
    out = nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"],
                                      batch["token_type_ids"], dtype=dtype)
    return distill.teacher_relations(out, teacher.config.heads, hidden)
  return relations


def make_evaluator(superlm: BertEncoder, loss: str = "mse", dtype=jnp.float32,
                   hidden_weight: float = 0.0) -> Callable:
  """(params, teacher_logits, batch, archs [S, 4]) -> the S students' losses, jitted once."""
  graphdef, head_size = nnx.graphdef(superlm), superlm.config.head_size

  def one(params, teacher_logits, batch, arch):
    out = nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"],
                                      batch["token_type_ids"], arch, dtype=dtype)
    return distill.distill_loss(teacher_logits, out, arch[3] * head_size, batch["attention_mask"], loss,
                                arch[1], hidden_weight)

  return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)))


def score_students(evaluator: Callable, params, teacher_logits: Sequence, batches: Sequence[dict],
                   archs: Sequence[Arch], chunk: int, progress: Callable[[int], None] | None = None,
                   ) -> np.ndarray:
  """Mean held-out loss of every arch, `chunk` students per call (the last chunk padded)."""
  table = np.stack([a.as_array() for a in archs])
  totals = []
  for start in range(0, len(table), chunk):
    rows = table[start:start + chunk]
    padded = np.concatenate([rows, np.repeat(rows[-1:], chunk - len(rows), 0)])
    acc = sum(evaluator(params, t, b, padded) for t, b in zip(teacher_logits, batches, strict=True))
    totals.append(np.asarray(acc)[:len(rows)] / len(batches))
    if progress is not None:
      progress(len(rows))
  return np.concatenate(totals)


def pareto_front(rows: Sequence[dict], cost: str = "flops") -> list[dict]:
  """Rows not dominated in (cost, loss): each is cheaper than every row of lower loss."""
  front, best = [], float("inf")
  for row in sorted(rows, key=lambda r: (r[cost], r["loss"])):
    if row["loss"] < best:
      front.append(row)
      best = row["loss"]
  return front


def measure_latency_ms(model: BertEncoder, batch_size: int, seq_len: int, repeats: int = 10) -> float:
  """Median wall time of the jitted forward on the current default device."""
  graphdef, params = nnx.split(model)
  forward = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids).hidden)
  ids = jnp.ones((batch_size, seq_len), jnp.int32)
  forward(params, ids).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(params, ids).block_until_ready()
    times.append(time.perf_counter() - start)
  return float(np.median(times) * 1e3)


def select(rows: list[dict], budgets: Sequence[Budget], superlms: dict[str, BertEncoder] | None = None,
           latency: tuple[int, int] = (1, 128), max_latency_trials: int = 50) -> dict[str, dict]:
  """The least-loss student under each budget, across all sub-spaces.

  A latency budget measures extracted students in order of loss until one fits (at most
  `max_latency_trials`); measured latencies are written into their rows.
  """
  chosen = {}
  for budget in budgets:
    if budget.metric == "latency_ms":
      if superlms is None:
        raise ValueError("a latency budget needs the SuperLMs to measure students")
      for row in sorted(rows, key=lambda r: r["loss"])[:max_latency_trials]:
        if "latency_ms" not in row:
          arch = Arch.from_row(row)
          row["latency_ms"] = measure_latency_ms(extract_student(superlms[row["subspace"]], arch), *latency)
        if budget.allows(row):
          chosen[budget.text] = row
          break
      else:
        measured = [r["latency_ms"] for r in rows if "latency_ms" in r]
        raise ValueError(f"budget {budget.text!r}: none of the {len(measured)} lowest-loss students "
                         f"fits (fastest measured {min(measured):.3g} ms); relax the budget")
      continue
    fitting = [r for r in rows if budget.allows(r)]
    if not fitting:
      cheapest = min(rows, key=lambda r: r[budget.metric])
      raise ValueError(f"budget {budget.text!r} (limit {budget.limit:.4g}) is met by no student: the "
                       f"cheapest, {cheapest['name']} of {cheapest['subspace']}, has "
                       f"{budget.metric}={cheapest[budget.metric]:.4g}; relax the budget")
    chosen[budget.text] = min(fitting, key=lambda r: r["loss"])
  return chosen


# --- the stage ----------------------------------------------------------------------------------

def teacher_costs_and_budgets(teacher: BertEncoder, texts: Sequence[str], seq_len: int,
                              latency: tuple[int, int]) -> tuple[dict, list[Budget]]:
  """The teacher's costs and the parsed budgets: a bad budget stops the search before scoring."""
  tc = teacher.config
  vocab = Vocab(tc.vocab_size, tc.max_position, tc.type_vocab_size)
  costs = student_costs(tc.full_arch(), tc.head_size, seq_len, vocab, tc.pooler)
  budgets = [parse_budget(b, costs) for b in texts]
  if any(b.metric == "latency_ms" for b in budgets):
    costs["latency_ms"] = measure_latency_ms(teacher, *latency)
    budgets = [parse_budget(b, costs) for b in texts]
  return costs, budgets


def score_subspaces(superlms: dict[str, tuple[BertEncoder, int, list[Arch]]], teacher: BertEncoder,
                    teacher_logits: Sequence, batches: Sequence[dict], replicate: Callable, loss: str,
                    dtype, students_per_call: int, seq_len: int,
                    hidden_weight: float = 0.0) -> tuple[list[dict], dict]:
  """(one row per student with its costs and held-out loss, timing per sub-space) for
  `superlms`: name -> (SuperLM, its training step, its students)."""
  from tqdm import tqdm

  tc = teacher.config
  vocab = Vocab(tc.vocab_size, tc.max_position, tc.type_vocab_size)
  tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
  rows, timing = [], {}
  bar = tqdm(total=sum(len(a) for _, _, a in superlms.values()), desc="search", unit="student",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  for name, (superlm, step, archs) in superlms.items():
    evaluator = make_evaluator(superlm, loss, dtype, hidden_weight)
    start = time.perf_counter()
    losses = score_students(evaluator, replicate(get_params(superlm)), teacher_logits, batches, archs,
                            students_per_call, bar.update)
    wall = time.perf_counter() - start
    timing[name] = {"students": len(archs), "wall_s": wall, "students_per_s": len(archs) / wall,
                    "superlm_step": step, "compilations": evaluator._cache_size()}
    rows += [{"subspace": name, "name": arch.name, "layers": arch.layers, "hidden": arch.hidden,
              "mlp_ratio": arch.mlp_ratio, "heads": arch.heads,
              **student_costs(arch, tc.head_size, seq_len, vocab, tc.pooler),
              "loss": float(loss), "tokens": tokens} for arch, loss in zip(archs, losses, strict=True)]
  bar.close()
  return rows, timing


def write_outputs(directory, rows: list[dict], selected: dict[str, dict], budgets: Sequence[Budget],
                  teacher: dict, timing: dict) -> str:
  """results.csv, pareto.png, selected.json, summary.json, written whole into a temporary sibling
  and renamed into place; returns the lines to print."""
  import json

  from autodistil_jax import atomic
  from autodistil_jax.workdir import SEARCH_FILES

  tmp = atomic.temp_dir_for(directory)
  write_results_csv(tmp / SEARCH_FILES["results"], rows)
  plot_pareto(tmp / SEARCH_FILES["pareto"], rows, selected, teacher["flops"])
  (tmp / SEARCH_FILES["selected"]).write_text(json.dumps(
      {b: {**row, "budget_limit": next(x.limit for x in budgets if x.text == b)}
       for b, row in selected.items()}, indent=2) + "\n")
  (tmp / SEARCH_FILES["summary"]).write_text(json.dumps(
      {"teacher": teacher, "timing": timing,
       "pareto_front": [r["name"] + "@" + r["subspace"] for r in pareto_front(rows)]}, indent=2) + "\n")
  atomic.replace_dir(tmp, directory)
  lines = [f"search: {len(rows)} students in {sum(t['wall_s'] for t in timing.values()):.1f} s"]
  lines += [f"  {n:>6}: {t['students']} students, {t['wall_s']:.1f} s, {t['students_per_s']:.1f}/s"
            for n, t in timing.items()]
  lines += [f"  {b}: {r['name']} ({r['subspace']}) loss {r['loss']:.4g}, "
            f"{r['flops'] / 1e9:.3f} GFLOPs, {r['params'] / 1e6:.2f}M params" for b, r in selected.items()]
  return "\n".join(lines)


# --- outputs -------------------------------------------------------------------------------------

CSV_COLUMNS = ("subspace", "name", "layers", "hidden", "mlp_ratio", "heads", "params", "flops",
               "paper_flops", "loss", "tokens")


def write_results_csv(path, rows: Sequence[dict]) -> None:
  import csv

  with path.open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS + ("latency_ms",), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_pareto(path, rows: Sequence[dict], selected: dict[str, dict], teacher_flops: float) -> None:
  """FLOPs vs loss of every student, the Pareto front, and the selected students labelled."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
  for name in dict.fromkeys(r["subspace"] for r in rows):
    mine = [r for r in rows if r["subspace"] == name]
    ax.scatter([r["flops"] / 1e9 for r in mine], [r["loss"] for r in mine], s=10, alpha=0.55,
               label=f"{name} ({len(mine)} students)")
  front = pareto_front(rows)
  ax.step([r["flops"] / 1e9 for r in front], [r["loss"] for r in front], where="post", color="black",
          linewidth=1.2, label="Pareto front")
  for budget, row in selected.items():
    x, y = row["flops"] / 1e9, row["loss"]
    ax.scatter([x], [y], marker="*", s=180, color="red", edgecolor="black", zorder=5)
    ax.annotate(f"{row['name']}\n{budget}", (x, y), textcoords="offset points", xytext=(8, 8),
                fontsize=7, arrowprops={"arrowstyle": "-", "lw": 0.5})
  ax.axvline(teacher_flops / 1e9, color="grey", linestyle="--", linewidth=0.8, label="teacher FLOPs")
  ax.set_xscale("log")
  ax.set_xlabel("GFLOPs per sequence (exact, 2 per multiply-add)")
  ax.set_ylabel("held-out relation distillation loss")
  ax.set_title("AutoDistil search: every student of every SuperLM")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)
