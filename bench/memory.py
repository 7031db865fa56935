"""Peak memory of the SuperLM training step per sub-space: XLA's buffer assignment for the
compiled step (arguments, outputs, temporaries; what the device must hold), the allocator's
measured peak where the device reports one (GPU/TPU), and this process's peak host RSS.

  python bench/memory.py --size=demo --batch=16 --seq_len=128                     # CPU, ~2 min
  python bench/memory.py --size=paper --batch=128 --dtype=bfloat16                # GPU
"""

from __future__ import annotations

import json
import resource

import common
import jax

from autodistil_jax import parallel

MIB = 1 << 20


common.define_flags(batch=16, step_flags=True)


def main():
  args = common.args()
  teacher, spaces = common.teacher_and_subspaces(args.size)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(args.batch, mesh)
  print(f"device: {common.device_description()}; size={args.size} batch={args.batch} "
        f"seq_len={args.seq_len} dtype={args.dtype} students={args.student_batching}")
  results = []
  for name in args.subspaces.split(","):
    masked = common.masked_step(args, teacher, spaces[name], mesh)
    inputs = masked.inputs(mesh)
    params = inputs[0]
    compiled = masked.step.lower(*inputs).compile()
    m = compiled.memory_analysis()
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats and hasattr(device, "reset_peak_memory_stats"):
      device.reset_peak_memory_stats()
    jax.block_until_ready(masked.step(*inputs))
    stats = device.memory_stats() or {}
    r = {"subspace": name, "params_mib": sum(x.size * 4 for x in jax.tree.leaves(params)) / MIB,
         "xla_argument_mib": m.argument_size_in_bytes / MIB, "xla_output_mib": m.output_size_in_bytes / MIB,
         "xla_temp_mib": m.temp_size_in_bytes / MIB, "xla_alias_mib": m.alias_size_in_bytes / MIB,
         "device_peak_mib": stats["peak_bytes_in_use"] / MIB if "peak_bytes_in_use" in stats else None,
         "host_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    r["xla_total_mib"] = (r["xla_argument_mib"] + r["xla_output_mib"] + r["xla_temp_mib"]
                          - r["xla_alias_mib"])
    results.append(r)
    device_peak = f"{r['device_peak_mib']:.0f} MiB" if r["device_peak_mib"] is not None else "n/a on CPU"
    print(f"{name:>5}: SuperLM params {r['params_mib']:.0f} MiB | XLA step buffers "
          f"{r['xla_total_mib']:.0f} MiB (args {r['xla_argument_mib']:.0f}, temps {r['xla_temp_mib']:.0f}, "
          f"donated {r['xla_alias_mib']:.0f}) | device peak {device_peak} | host peak RSS so far "
          f"{r['host_peak_rss_mib']:.0f} MiB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": common.device_description(), "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
  common.run(main)
