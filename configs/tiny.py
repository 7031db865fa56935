"""The paper's Tiny sub-space on a BERT-base teacher (PAPER_NOTES sections 1-3).

  python launch/main.py --config=configs/tiny.py --workdir=runs/tiny --mode=train \
      --config.data.corpus=tfds:wikipedia/20230601.en

Paper scale: batch 128 x seq 128, 10 epochs of Wikipedia + BookCorpus; the three SuperLMs took
336 V100-hours in the paper. Set --config.train.num_steps to your budget.
"""

import ml_collections

from autodistil_jax.defaults import base_config, subspace_config
from autodistil_jax.search_space import PAPER_SUBSPACES


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.teacher = "bert-base-uncased"
  c.subspaces = ml_collections.ConfigDict({"tiny": subspace_config(PAPER_SUBSPACES["tiny"])})
  c.train.dtype = "bfloat16"
  return c
