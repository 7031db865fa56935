"""SuperLM training step: the masked step (teacher + 4 sandwich students, one program for every
student) against the same 4 students compiled as separate static dense models, and against the
largest student alone. Prints tokens/s, the masking overhead ratio and the useful-FLOPs fraction.

  python bench/train_step.py --size=demo --batch=16 --seq_len=128            # CPU, ~3 min
  python bench/train_step.py --size=paper --dtype=bfloat16 --batch=128 --mfu  # GPU

Targets per sub-space: overhead <= 1.25x, useful fraction >= 0.7.
"""

from __future__ import annotations

import json

import common
import jax
from absl import flags
from flax import nnx

from autodistil_jax import parallel, train
from autodistil_jax.search_space import sandwich_sample

common.define_flags(batch=16, step_flags=True)
flags.DEFINE_integer("rounds", 5, "timing rounds per variant (medians reported)")
flags.DEFINE_bool("mfu", False, "report MFU against the device's bf16 peak")
flags.DEFINE_bool("masked_only", False, "time only the masked step (batch curves): no static programs")
flags.DEFINE_bool("xla_flops", True, "also compile the unrolled step for XLA's FLOP count (slow compile)")

def block(tree):
  return jax.block_until_ready(tree)


def bench_subspace(name, teacher, space, args) -> dict:
  mesh = parallel.make_mesh()
  m = common.masked_step(args, teacher, space, mesh)
  superlm, optimizer, sc, masked = m.superlm, m.optimizer, m.sc, m.step
  teacher_params, batch, arch_table, key = m.teacher_params, m.batch, m.archs, m.key
  archs = sandwich_sample(space, seed=0, step=0)
  statics = {} if args.masked_only else {
      "static4": common.make_static_step(superlm, teacher, archs, optimizer, sc),
      "largest": common.make_static_step(superlm, teacher, archs[:1], optimizer, sc)}
  state = {k: m.fresh_state(mesh) for k in ("masked", *statics)}  # each its own: steps donate

  def run_masked():
    s = state["masked"]
    s[0], s[1], metrics = masked(s[0], s[1], teacher_params, batch, arch_table, key)
    block(metrics["losses"])

  def runner(k):
    def run():
      s = state[k]
      s[0], s[1] = statics[k](s[0], s[1], teacher_params, batch, key)
      block(s[0])
    return run

  times = common.interleaved_times({"masked": run_masked, **{k: runner(k) for k in statics}},
                                   rounds=args.rounds)
  tokens = args.batch * args.seq_len
  useful = common.useful_step_flops(teacher, archs, args.batch, args.seq_len)
  out = {"subspace": name, "archs": [a.name for a in archs], "batch": args.batch,
         "tokens_per_s": {k: tokens / t for k, t in times.items()},
         "overhead_vs_static4": times["masked"] / times["static4"] if statics else None,
         "masked_vs_largest_alone": times["masked"] / times["largest"] if statics else None,
         "useful_flops": useful, "useful_tflops_per_s": useful / times["masked"] / 1e12}
  if args.xla_flops:
    # XLA's count of the masked step, compiled with every loop unrolled so that each layer and each
    # student is counted (a rolled loop's body is counted once).
    unrolled = common.step_config(teacher, args.dtype, student_batching=args.student_batching, unroll=True)
    xla = jax.jit(train.make_train_step(nnx.graphdef(superlm), nnx.graphdef(teacher), optimizer, unrolled)
                  ).lower(*state["masked"], teacher_params, batch, arch_table, key).compile().cost_analysis()
    out.update(xla_flops=float(xla["flops"]), useful_fraction=useful / float(xla["flops"]))
  peak = common.DEVICE_PEAKS.get(jax.devices()[0].device_kind, (None,))[0]
  if args.mfu and peak:
    out["mfu"] = useful / times["masked"] / (peak * jax.device_count())
  return out


def main():
  args = common.args()
  teacher, spaces = common.teacher_and_subspaces(args.size)
  print(f"device: {common.device_description()}; size={args.size} batch={args.batch} seq_len={args.seq_len} "
        f"dtype={args.dtype} students={args.student_batching}")
  results = []
  for name in args.subspaces.split(","):
    r = bench_subspace(name, teacher, spaces[name], args)
    results.append(r)
    tps = r["tokens_per_s"]
    parts = [f"tokens/s masked {tps['masked']:.0f}"]
    if r["overhead_vs_static4"] is not None:
      parts += [f"4 static students {tps['static4']:.0f}, largest alone {tps['largest']:.0f} | overhead "
                f"{r['overhead_vs_static4']:.2f}x (target <= 1.25), masked/largest "
                f"{r['masked_vs_largest_alone']:.2f}x"]
    if "useful_fraction" in r:
      parts += [f"useful fraction {r['useful_fraction']:.2f} (target >= 0.7)"]
    parts += [f"{r['useful_tflops_per_s']:.3f} useful TFLOP/s" + (f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r
                                                                  else "")]
    print(f"{name:>5}: " + " | ".join(parts))
    print(f"       sandwich: {', '.join(r['archs'])}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": common.device_description(), "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
  common.run(main)
