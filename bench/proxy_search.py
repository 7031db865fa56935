"""Task-proxy search throughput: the one-program search (proxy.search: every student fine-tuned
side by side in one compiled program per sub-space) against extracting each student and compiling
and fine-tuning it on its own (proxy.finetune_alone), at the same budget, compile time included.

  python bench/proxy_search.py --glue_dir=../shared/data/glue --size=demo --subspace=base \
      --students=32 --alone=6 --steps=20                                  # 2-core CPU: ~15 min

The program runs once per way of batching its students (config.search.proxy.student_batching:
vmap side by side, map one after another). Every side runs the same steps on the same SST-2
batches; dropout is off so the scores of the students timed alone must equal theirs in the
program (printed). Target: >= 5x students/s.

Tracing, lowering and XLA compilation are clocked on each side (jax.monitoring's compile events):
the alone side's time less its compile time is what fine-tuning the extracted students costs
once nothing is compiled, so alone_s / (alone_s - compile_s) bounds the speedup that any one-program
search can reach at this budget on this machine (its students run at least the sliced arithmetic).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import common
import jax
import ml_collections
import numpy as np
from absl import flags

from autodistil_jax import data, hf_io, parallel, proxy
from autodistil_jax.defaults import base_config
from autodistil_jax.model import init_superlm

common.define_flags(batch=16)
flags.DEFINE_string("glue_dir", None, "GLUE TSV root (the proxy task is read from it)")
flags.DEFINE_string("task", "sst2", "the proxy GLUE task")
flags.DEFINE_string("subspace", "base", "which sub-space's students are fine-tuned")
flags.DEFINE_integer("students", 32, "a seeded sample of the sub-space")
flags.DEFINE_integer("alone", 6, "of those, timed one by one (evenly spread)")
flags.DEFINE_integer("steps", 20, "fine-tuning steps per student")
flags.DEFINE_integer("dev_examples", 256, "dev examples each student is scored on")
flags.DEFINE_integer("students_per_call", 0, "0: sized from free memory")
flags.DEFINE_list("batchings", ["vmap", "map"], "config.search.proxy.student_batching values timed")
flags.mark_flags_as_required(['glue_dir'])

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileClock:
  """Seconds spent tracing, lowering and compiling since it was registered."""

  def __init__(self):
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._heard)

  def _heard(self, event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
      self.seconds += duration


def main():
  args = common.args()
  teacher, spaces = common.teacher_and_subspaces(args.size)
  superlm = init_superlm(teacher, spaces[args.subspace])
  config = base_config()
  config.data.glue_dir = args.glue_dir
  config.search.proxy.update(ml_collections.ConfigDict({
      "task": args.task, "steps": args.steps, "batch_size": args.batch, "seq_len": args.seq_len,
      "dev_examples": args.dev_examples, "dropout": 0.0, "attention_dropout": 0.0,
      "students_per_call": args.students_per_call}))
  mesh = parallel.make_mesh()
  by_batching = {}
  for how in args.batchings:
    config.search.proxy.student_batching = how
    by_batching[how] = proxy.ProxySettings.from_config(config)
  settings = next(iter(by_batching.values()))
  train, dev = proxy.read_task(settings, args.glue_dir, data.load_tokenizer(
      hf_io.resolve_checkpoint("all-MiniLM-L6-v2")))
  archs = proxy.sample_students(spaces[args.subspace].enumerate(), args.students, 0)
  print(f"device: {common.device_description()}; {args.size}/{args.subspace}: {len(archs)} students, "
        f"{args.steps} steps of {args.batch} x <= {args.seq_len} on {args.task}")

  clock = CompileClock()
  programs = {}
  for how, s in by_batching.items():
    chunk = proxy.students_per_call(s, superlm.config, len(archs), mesh)
    with tempfile.TemporaryDirectory() as tmp:
      start, compiled = time.perf_counter(), clock.seconds
      scores, _ = proxy.search(s, {args.subspace: (superlm, "bench", archs)}, train, dev,
                               {args.subspace: chunk}, mesh, lambda name, tmp=tmp: Path(tmp) / f"{name}.json")
      programs[how] = {"seconds": time.perf_counter() - start, "compile_s": clock.seconds - compiled,
                       "students_per_call": chunk,
                       "scores": scores[args.subspace]}
  picks = np.linspace(0, len(archs) - 1, args.alone).round().astype(int)
  start, compiled = time.perf_counter(), clock.seconds
  alone = [proxy.finetune_alone(superlm, archs[i], train, dev, settings, mesh)[0] for i in picks]
  alone_s, alone_compile_s = time.perf_counter() - start, clock.seconds - compiled
  alone_rate = len(picks) / alone_s
  bound = alone_s / (alone_s - alone_compile_s)
  result = {"students": len(archs), "alone_students_timed": len(picks), "alone_s": alone_s,
            "alone_compile_s": alone_compile_s, "speedup_bound": bound,
            "alone_students_per_s": alone_rate, "programs": {}}
  print(f"alone:       {len(picks)} students in {alone_s:.1f} s = {alone_rate:.3f} students/s "
        f"(one compile each: {alone_compile_s:.1f} s of it compiling, so no one-program search can be "
        f"faster than {bound:.1f}x here)")
  for how, p in programs.items():
    diffs = [abs(p["scores"][archs[i].name]["proxy_score"] - proxy.glue.main_score(settings.task, m))
             for i, m in zip(picks, alone, strict=True)]
    rate = len(archs) / p["seconds"]
    result["programs"][how] = {"seconds": p["seconds"], "compile_s": p["compile_s"],
                               "students_per_call": p["students_per_call"],
                               "students_per_s": rate, "speedup": rate / alone_rate,
                               "max_score_diff": max(diffs)}
    print(f"program ({how}, {p['students_per_call']} per call): {len(archs)} students in "
          f"{p['seconds']:.1f} s ({p['compile_s']:.1f} s compiling) = {rate:.3f} students/s, "
          f"speedup {rate / alone_rate:.1f}x (target >= 5, bound {bound:.1f}x); "
          f"scores equal to {max(diffs):.1e}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": common.device_description(), "args": vars(args), **result}, f, indent=2)


if __name__ == "__main__":
  common.run(main)
