#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md on one accelerator (e.g. the device tool's H100):
# the SuperLM step per paper sub-space in bf16 at seq 128 with MFU, its throughput against batch
# size, search throughput and memory. Results go to $OUT (default bench_out/) as JSON.
#
#   OUT=/tmp/out bash bench/gpu.sh
#
# Needs this package importable (pip install -e . or PYTHONPATH=.) with jax[cuda]; the 'paper'
# size uses a BERT-base-shaped teacher with random weights, so nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")"
out="$(mkdir -p "${OUT:-bench_out}" && cd "${OUT:-bench_out}" && pwd)"
export PYTHONPATH="$(cd .. && pwd):${PYTHONPATH:-}"
for batch in 32 64 128 256; do
  python train_step.py --size=paper --dtype=bfloat16 --batch="$batch" --seq_len=128 --mfu --rounds=10 \
    --json="$out/train_step_b$batch.json"
done
python train_step.py --size=paper --dtype=bfloat16 --batch=128 --seq_len=128 --mfu --rounds=10 \
  --student_batching=vmap --json="$out/train_step_vmap_b128.json"
python search.py --size=paper --subspace=base --batch=128 --batches=4 --json="$out/search.json"
python memory.py --size=paper --batch=128 --dtype=bfloat16 --json="$out/memory.json"
