#!/usr/bin/env bash
# Run AutoDistil on every worker of a TPU VM pod slice (multi-host data parallel).
#
#   TPU=my-v4-32 ZONE=us-central2-b WORKDIR=gs://my-bucket/autodistil/tiny \
#     CORPUS=tfds:wikipedia/20230601.en bash launch/tpu_pod.sh configs/paper.py:tiny all
#
# Every worker clones/installs the project and runs the same command; JAX discovers the pod
# (jax.distributed.initialize with no arguments) and each host feeds its rows of each batch.
# WORKDIR must be shared by all workers: a GCS bucket (gs://, read and written through fsspec's
# gcsfs, installed below; no workdir lock on a bucket: one job per WORKDIR) or an NFS path.
set -euo pipefail
CONFIG=${1:?usage: launch/tpu_pod.sh CONFIG MODE [extra --config.KEY=VALUE ...]}
MODE=${2:-train}
shift 2 || true
: "${TPU:?set TPU to the pod slice name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
REPO=${REPO:?set REPO to the git URL of this project}
EXTRA="$*"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d autodistil_jax ] || git clone -q $REPO autodistil_jax
  cd autodistil_jax && git pull -q
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q 'jax[tpu]' gcsfs -e .
  python launch/main.py --config=$CONFIG --workdir=$WORKDIR --mode=$MODE \
    --config.data.corpus='${CORPUS:-}' --config.data.glue_dir='${GLUE_DIR:-}' $EXTRA
"
