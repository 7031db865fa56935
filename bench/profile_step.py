"""Profile of the masked SuperLM step: a jax.profiler trace of a few steps and the breakdown of the
step's time into matmuls, attention, LayerNorm, other elementwise work, the relation loss, the
optimizer, data movement, loop control and idle/launch gaps, each with its floor (FLOPs over the
device's peak, bytes over its memory bandwidth; accelerators we know the figures of).

  python bench/profile_step.py --size=demo --subspace=tiny --batch=8 --out=/tmp/prof   # CPU, ~2 min
  python bench/profile_step.py --size=paper --subspace=base --dtype=bfloat16 --batch=128 \
      --out=$OUT/profile                                                                 # GPU

Writes to --out: profile.json, profile.md and the trace (trace/, for TensorBoard or Perfetto).
"""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path

import common
import hlo_breakdown
import jax
from absl import flags

from autodistil_jax import parallel

common.define_flags(batch=16, step_flags=True)
flags.DEFINE_string("subspace", "base", "which sub-space's SuperLM step is profiled")
flags.DEFINE_integer("steps", 5, "steps traced (after 2 untraced warm-up steps)")
flags.DEFINE_string("out", None, "folder for profile.json, profile.md and the trace")
flags.mark_flags_as_required(["out"])


def build_step(args):
  """(the compiled masked step, its inputs, the module's HLO text)."""
  teacher, spaces = common.teacher_and_subspaces(args.size)
  mesh = parallel.make_mesh()
  masked = common.masked_step(args, teacher, spaces[args.subspace], mesh)
  state = masked.inputs(mesh)
  compiled = masked.step.lower(*state).compile()
  return compiled, state, compiled.as_text()


def main():
  args = common.args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  compiled, state, hlo = build_step(args)
  module = hlo.split(",", 1)[0].removeprefix("HloModule ").strip()

  def run(n):
    for _ in range(n):
      state[0], state[1], metrics = compiled(*state)
    jax.block_until_ready(metrics)

  run(2)
  with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
    start = time.perf_counter()
    run(args.steps)
    wall = time.perf_counter() - start
  # Each run adds a dated folder under trace/: this run's is the newest.
  trace = max(glob.glob(str(out / "trace" / "**" / "perfetto_trace.json.gz"), recursive=True),
              key=os.path.getmtime)
  times, events = hlo_breakdown.self_times(Path(trace), module)
  peak, bandwidth = common.DEVICE_PEAKS.get(jax.devices()[0].device_kind, (None, None))
  table = hlo_breakdown.instruction_table(hlo)
  result = {"device": common.device_description(), "args": vars(args), "module": module,
            "trace_events": events, "steps": args.steps,
            **hlo_breakdown.breakdown(table, times, args.steps, wall, peak, bandwidth)}
  (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
  text = f"{result['device']}; {args.size}/{args.subspace}, batch {args.batch} x {args.seq_len}, " \
         f"{args.dtype}\n\n" + hlo_breakdown.markdown(result)
  (out / "profile.md").write_text(text)
  print(text)


if __name__ == "__main__":
  common.run(main)
