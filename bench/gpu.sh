#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one run on one accelerator (the device tool's H100/H200),
# BERT-base-shaped teacher of random weights (--size=paper: nothing downloaded), bf16, seq 128:
#   1. the profile of the Base masked step: time per part and each part's floor (profile/)
#   2. the SuperLM step per sub-space: tokens/s, MFU, masked/static overhead (train_step.json)
#   3. the batch curve of the Base masked step, batch 32-512 (train_step_b*.json)
#   4. the dense BERT-base step against transformers eager and torch.compile (versus_torch.json)
#   5. the search evaluator against one compile per student (search.json)
#   6. the step's memory (memory.json)
# Each part has its own time limit and log; a part that fails or runs out of time is noted in
# $OUT/status.txt and the run goes on. Expected wall time on an H100: under 8 minutes (not yet
# measured: no GPU has been lent since this script was written).
#
#   OUT=/tmp/out bash bench/gpu.sh            # on the GPU machine; results land in $OUT
#   TINY=1 OUT=/tmp/out bash bench/gpu.sh     # the same parts at toy sizes, on any machine (tests)
#
# Runs on the machine's own jax and flax with this package on PYTHONPATH (never installs flax); the
# packages the GPU image lacks come as wheels from $WHEELS when set, e.g. made beforehand with
#   pip download --only-binary=:all: --no-deps --python-version 3.12 -d wheels \
#       grain ml-collections array-record portpicker tensorboardX
set -uo pipefail
cd "$(dirname "$0")"
out="$(mkdir -p "${OUT:-bench_out}" && cd "${OUT:-bench_out}" && pwd)"
export PYTHONPATH="$(cd .. && pwd):${PYTHONPATH:-}"
if [[ -n "${WHEELS:-}" ]]; then
  rm -rf "$out/.site" && pip install -q --no-deps --target "$out/.site" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$out/.site"
fi
: > "$out/status.txt"

if [[ -n "${TINY:-}" ]]; then
  size=(--size=demo --seq_len=32) dtype=float32 rounds=1 big=2 batches=(2 4) limit=600
  subspaces=tiny search=(--subspace=tiny --batch=4 --batches=1 --static_students=2 --students_per_call=8)
  dense=(--batch=2 --rounds=1 --seq_len=32)
else
  size=(--size=paper --seq_len=128) dtype=bfloat16 rounds=10 big=128 batches=(32 64 128 256 512)
  limit=150 subspaces=tiny,small,base dense=(--size=paper --dtype=bfloat16 --batch=32 --seq_len=128 --rounds=20)
  search=(--subspace=base --batch=128 --batches=4 --static_students=8 --students_per_call=16)
fi

part() {  # part NAME SECONDS COMMAND...: runs it with a time limit, its output in NAME.log
  local name=$1 seconds=$2 start=$SECONDS
  shift 2
  timeout "$seconds" "$@" > "$out/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - start))s" | tee -a "$out/status.txt"
}

step=(--dtype="$dtype" --rounds="$rounds")
part profile "$limit" python profile_step.py "${size[@]}" --dtype="$dtype" --subspace=base \
  --batch="$big" --steps=5 --out="$out/profile"
part train_step $((2 * limit)) python train_step.py "${size[@]}" "${step[@]}" --batch="$big" --mfu \
  --subspaces="$subspaces" --xla_flops=false --json="$out/train_step.json"
for b in "${batches[@]}"; do
  part "train_step_b$b" "$limit" python train_step.py "${size[@]}" "${step[@]}" --batch="$b" --mfu \
    --subspaces=base --masked_only --xla_flops=false --json="$out/train_step_b$b.json"
done
part versus_torch "$limit" python versus_torch.py "${dense[@]}" --torch_compile --json="$out/versus_torch.json"
part search "$limit" python search.py "${size[@]}" "${search[@]}" --json="$out/search.json"
part memory "$limit" python memory.py "${size[@]}" --subspaces=base --batch="$big" \
  --dtype="$dtype" --json="$out/memory.json"
cat "$out/status.txt"
