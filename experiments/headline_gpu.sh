#!/usr/bin/env bash
# The headline experiment on one GPU (issue 15, part 6): configs/headline.py:gpu, its results and
# plots in $OUT. Two steps, because the GPU machine reaches nothing and receives only the repository
# and what `carry` names (64 MiB in all):
#
#   bash experiments/headline_gpu.sh pack ../shared/data   # here: .bundle/ (~51 MB, git-ignored)
#   OUT=$OUT bash experiments/headline_gpu.sh run          # there (device tool: carry .bundle)
#
# `run` installs the bundle's wheels beside the machine's own jax and flax (never flax itself),
# unpacks the data, and runs experiments/headline.py with its workdir under runs/ (ignored, so a
# second call on a warm machine resumes where a first one stopped; $WORKDIR elsewhere), at most $LIMIT seconds (default
# 540: a device call ends at 600). Whatever has run by then is reported: $OUT/results.md,
# $OUT/figures/*.png, $OUT/headline.log and $OUT/workdir.tar.gz (every record, search table, suite
# table and GLUE result; no checkpoints). Extra arguments go to experiments/headline.py.
#
#   RUNLOCAL=1 OUT=/tmp/o bash experiments/headline_gpu.sh run   # toy sizes, any machine (slow test)
set -uo pipefail
cd "$(dirname "$0")/.."
bundle="${BUNDLE:-.bundle}"
command="${1:-}"
shift || true

if [[ "$command" == pack ]]; then
  exec python experiments/gpu_bundle.py --data_dir="${1:?usage: headline_gpu.sh pack DATA_DIR}" \
    --out="$bundle" "${@:2}"
fi
if [[ "$command" != run ]]; then
  echo "usage: headline_gpu.sh pack DATA_DIR | run [headline.py flags]" >&2
  exit 2
fi
for need in "$bundle/teacher/model.safetensors" "$bundle/data.tar.xz"; do
  [[ -f "$need" ]] || { echo "error: $need not found: run 'headline_gpu.sh pack DATA_DIR' first" >&2; exit 2; }
done
out="$(mkdir -p "${OUT:?set OUT to the results folder}" && cd "$OUT" && pwd)"
bundle="$(cd "$bundle" && pwd)"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
if compgen -G "$bundle/wheels/*.whl" > /dev/null; then
  site="${TMPDIR:-/tmp}/headline_site"
  python -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
    "$bundle"/wheels/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$site"
fi
data="${TMPDIR:-/tmp}/headline_data"
mkdir -p "$data" && tar -xJf "$bundle/data.tar.xz" -C "$data" || exit 1

variant=gpu${RUNLOCAL:+,runlocal}
workdir="${WORKDIR:-runs/headline_gpu${RUNLOCAL:+_runlocal}}"
args=(--config="configs/headline.py:$variant" --config.teacher="$bundle/teacher"
      --workdir="$workdir" --data_dir="$data" --out="$out" --archive="$out/workdir.tar.gz" "$@")
start=$SECONDS
timeout "${LIMIT:-540}" python experiments/headline.py "${args[@]}" > "$out/headline.log" 2>&1
status=$?
echo "headline.py rc=$status after $((SECONDS - start)) s" | tee -a "$out/headline.log"
if [[ $status -ne 0 ]]; then  # cut short: report what ran (needs the search to have finished)
  python experiments/headline.py "${args[@]}" --report_only >> "$out/headline.log" 2>&1
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$out/headline.log" 2>/dev/null
exit "$status"
