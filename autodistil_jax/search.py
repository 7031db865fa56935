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
from autodistil_jax.search_space import (
  Arch,
  Vocab,
  arch_table,
  exact_flops,
  exact_params,
  paper_flops,
)

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


def make_teacher_relations(teacher: BertEncoder, dtype=jnp.float32, hidden: bool = False,
                           embedding: bool = False) -> Callable:
  graphdef = nnx.graphdef(teacher)

  @jax.jit
  def relations(params, batch):
    out = nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"],
                                      batch["token_type_ids"], dtype=dtype)
    return distill.teacher_relations(out, teacher.config.heads, hidden,
                                     batch["attention_mask"] if embedding else None)
  return relations


def make_evaluator(superlm: BertEncoder, loss: str = "mse", dtype=jnp.float32,
                   hidden_weight: float = 0.0, embedding_weight: float = 0.0) -> Callable:
  """(params, teacher_logits, batch, archs [S, 4]) -> the S students' losses, jitted once."""
  graphdef, head_size = nnx.graphdef(superlm), superlm.config.head_size

  def one(params, teacher_logits, batch, arch):
    out = nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"],
                                      batch["token_type_ids"], arch, dtype=dtype)
    return distill.distill_loss(teacher_logits, out, arch[3] * head_size, batch["attention_mask"], loss,
                                arch[1], hidden_weight, embedding_weight)

  return jax.jit(jax.vmap(one, in_axes=(None, None, None, 0)))


def score_students(evaluator: Callable, params, teacher_logits: Sequence, batches: Sequence[dict],
                   archs: Sequence[Arch], chunk: int, progress: Callable[[int], None] | None = None,
                   ) -> np.ndarray:
  """Mean held-out loss of every arch, `chunk` students per call (the last chunk padded)."""
  totals = []
  for start in range(0, len(archs), chunk):
    part = archs[start:start + chunk]
    padded = arch_table(part, chunk)
    acc = sum(evaluator(params, t, b, padded) for t, b in zip(teacher_logits, batches, strict=True))
    totals.append(np.asarray(acc)[:len(part)] / len(batches))
    if progress is not None:
      progress(len(part))
  return np.concatenate(totals)


CRITERIA = {"agnostic": "loss", "proxy": "proxy_score"}


def check_selection(selection: str, proxy_enabled: bool) -> str:
  """config.search.selection, refused when it names no criterion or one that will not be run."""
  if selection not in CRITERIA:
    raise ValueError(f"config.search.selection={selection!r} must be one of {sorted(CRITERIA)}")
  if selection == "proxy" and not proxy_enabled:
    raise ValueError("config.search.selection='proxy' needs the proxy search: pass "
                     "--config.search.proxy.enabled=True")
  return selection


def quality(row: dict, selection: str = "agnostic") -> float:
  """Higher is better: minus the held-out loss, or the proxy task's dev score."""
  # A student the proxy search did not score (a sample of the sub-space) cannot be chosen by it.
  return -row["loss"] if selection == "agnostic" else row.get("proxy_score", float("nan"))


def pareto_front(rows: Sequence[dict], cost: str = "flops", selection: str = "agnostic") -> list[dict]:
  """Rows not dominated in (cost, quality): each is cheaper than every row of better quality."""
  front, best = [], -float("inf")
  rows = [r for r in rows if np.isfinite(quality(r, selection))]
  for row in sorted(rows, key=lambda r: (r[cost], -quality(r, selection))):
    if quality(row, selection) > best:
      front.append(row)
      best = quality(row, selection)
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
           latency: tuple[int, int] = (1, 128), max_latency_trials: int = 50,
           selection: str = "agnostic") -> dict[str, dict]:
  """The best student under each budget across all sub-spaces: least held-out loss, or best proxy
  score (`selection`).

  A latency budget measures extracted students from the best down until one fits (at most
  `max_latency_trials`); measured latencies are written into their rows.
  """
  better = lambda r: (quality(r, selection), -r["loss"])  # proxy ties go to the lower loss
  if broken := [f"{r['name']}@{r['subspace']}" for r in rows if not np.isfinite(r["loss"])]:
    raise ValueError(f"{len(broken)} student(s) with a non-finite held-out loss ({', '.join(broken[:5])}"
                     f"{', ...' if len(broken) > 5 else ''}): their SuperLM is broken; nothing is selected. "
                     "Retrain it (--redo=train), e.g. with a lower config.train.learning_rate")
  rows = [r for r in rows if np.isfinite(quality(r, selection))]  # diverged in proxy fine-tuning
  if not rows:
    raise ValueError(f"no student has a finite {CRITERIA[selection]}: nothing can be selected")
  chosen = {}
  for budget in budgets:
    if budget.metric == "latency_ms":
      if superlms is None:
        raise ValueError("a latency budget needs the SuperLMs to measure students")
      for row in sorted(rows, key=better, reverse=True)[:max_latency_trials]:
        if "latency_ms" not in row:
          arch = Arch.from_row(row)
          row["latency_ms"] = measure_latency_ms(extract_student(superlms[row["subspace"]], arch), *latency)
        if budget.allows(row):
          chosen[budget.text] = row
          break
      else:
        measured = [r["latency_ms"] for r in rows if "latency_ms" in r]
        raise ValueError(f"budget {budget.text!r}: none of the {len(measured)} best students "
                         f"fits (fastest measured {min(measured):.3g} ms); relax the budget")
      continue
    fitting = [r for r in rows if budget.allows(r)]
    if not fitting:
      cheapest = min(rows, key=lambda r: r[budget.metric])
      raise ValueError(f"budget {budget.text!r} (limit {budget.limit:.4g}) is met by no student: the "
                       f"cheapest, {cheapest['name']} of {cheapest['subspace']}, has "
                       f"{budget.metric}={cheapest[budget.metric]:.4g}; relax the budget")
    chosen[budget.text] = max(fitting, key=better)
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
                    hidden_weight: float = 0.0, embedding_weight: float = 0.0) -> tuple[list[dict], dict]:
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
    evaluator = make_evaluator(superlm, loss, dtype, hidden_weight, embedding_weight)
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
