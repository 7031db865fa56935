#!/usr/bin/env bash
# Run AutoDistil on one or more multi-GPU nodes (one process per node, all its GPUs).
#
# One node:      bash launch/multi_gpu.sh configs/paper.py:base all
# Several nodes: on node i of N (NODE_RANK=i, NUM_NODES=N, COORDINATOR=host0:1234):
#   NUM_NODES=2 NODE_RANK=0 COORDINATOR=10.0.0.1:1234 WORKDIR=/shared/runs/base \
#     CORPUS='/data/wiki/*.txt' bash launch/multi_gpu.sh configs/paper.py:base train
# Under SLURM (srun, one task per node) the coordinator is found by JAX itself: leave
# COORDINATOR unset. WORKDIR must be on a filesystem every node sees.
# Install once per node: pip install -U "jax[cuda12]" && pip install -e .
set -euo pipefail
CONFIG=${1:?usage: launch/multi_gpu.sh CONFIG MODE [extra --config.KEY=VALUE ...]}
MODE=${2:-train}
shift 2 || true
WORKDIR=${WORKDIR:-runs/$(basename "$CONFIG" .py)}
DIST=()
if [ -n "${COORDINATOR:-}" ]; then
  DIST=(--config.distributed.coordinator="$COORDINATOR"
        --config.distributed.num_processes="${NUM_NODES:?set NUM_NODES}"
        --config.distributed.process_id="${NODE_RANK:?set NODE_RANK}")
fi
exec python launch/main.py --config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE" \
  --config.data.corpus="${CORPUS:-}" --config.data.glue_dir="${GLUE_DIR:-}" \
  --config.train.dtype=bfloat16 "${DIST[@]}" "$@"
