"""Search throughput: the one-compile evaluator over every student of a sub-space against
extracting, compiling and running each student as its own static model (compile time included,
as a search without the evaluator must pay it for every student).

  python bench/search.py --size=demo --subspace=base --batches=2          # CPU, ~4 min

Target: the evaluator scores >= 10x more students per second.
"""

from __future__ import annotations

import json
import time

import common
import jax
import numpy as np
from absl import flags
from flax import nnx

from autodistil_jax import distill, search
from autodistil_jax.model import extract_student, get_params, init_superlm

common.define_flags(batch=32)
flags.DEFINE_string("subspace", "base", "which sub-space's students are scored")
flags.DEFINE_integer("batches", 2, "held-out batches every student is scored on")
flags.DEFINE_integer("students_per_call", 16, "students scored side by side per evaluator call")
flags.DEFINE_integer("static_students", 12, "students timed one by one (evenly spread over the sub-space)")

def static_scores(superlm, archs, teacher_logits, batches, loss: str) -> tuple[list[float], float]:
  """Each student sliced out and jitted on its own: (losses, seconds including compiles)."""
  start = time.perf_counter()
  losses = []
  for arch in archs:
    student = extract_student(superlm, arch)
    graphdef = nnx.graphdef(student)

    @jax.jit
    def score(params, t_logits, batch, graphdef=graphdef):
      out = nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
      return distill.distill_loss(t_logits, out, out.query.shape[-1], batch["attention_mask"], loss)

    params = get_params(student)
    losses.append(float(np.mean([score(params, t, b) for t, b in zip(teacher_logits, batches, strict=True)])))
  return losses, time.perf_counter() - start


def main():
  args = common.args()
  teacher, spaces = common.teacher_and_subspaces(args.size)
  space = spaces[args.subspace]
  superlm = init_superlm(teacher, space)
  batches = [common.make_batch(args.batch, args.seq_len, teacher.config.vocab_size, args.corpus, seed=i)
             for i in range(args.batches)]
  relations = search.make_teacher_relations(teacher)
  teacher_logits = [jax.block_until_ready(relations(get_params(teacher), b)) for b in batches]
  archs = space.enumerate()
  print(f"device: {common.device_description()}; {args.size}/{args.subspace}: {len(archs)} students, "
        f"{args.batches} batches of {args.batch} x {args.seq_len}")

  start = time.perf_counter()
  evaluator = search.make_evaluator(superlm)
  losses = search.score_students(evaluator, get_params(superlm), teacher_logits, batches, archs,
                                 args.students_per_call)
  evaluator_s = time.perf_counter() - start

  picks = np.linspace(0, len(archs) - 1, args.static_students).round().astype(int)
  static_losses, static_s = static_scores(superlm, [archs[i] for i in picks], teacher_logits, batches, "mse")
  max_diff = float(np.max(np.abs(np.asarray(static_losses) - losses[picks])))
  evaluator_rate, static_rate = len(archs) / evaluator_s, len(picks) / static_s
  result = {"students": len(archs), "evaluator_s": evaluator_s, "evaluator_students_per_s": evaluator_rate,
            "static_students_timed": len(picks), "static_s": static_s,
            "static_students_per_s": static_rate, "speedup": evaluator_rate / static_rate,
            "compilations": evaluator._cache_size(), "max_loss_diff": max_diff}
  print(f"evaluator: {len(archs)} students in {evaluator_s:.1f} s = {evaluator_rate:.2f} students/s "
        f"({result['compilations']} compilation)")
  print(f"static:    {len(picks)} students in {static_s:.1f} s = {static_rate:.2f} students/s "
        f"(one compile each)")
  print(f"speedup {result['speedup']:.1f}x (target >= 10); same losses to {max_diff:.1e}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": common.device_description(), "args": vars(args), **result}, f, indent=2)


if __name__ == "__main__":
  common.run(main)
