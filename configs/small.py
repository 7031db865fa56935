"""The paper's Small sub-space on a BERT-base teacher (PAPER_NOTES sections 1-3).

  python launch/main.py --config=configs/small.py --workdir=runs/small --mode=train \
      --config.data.corpus=tfds:wikipedia/20230601.en

Paper scale: batch 128 x seq 128, 10 epochs of Wikipedia + BookCorpus; the three SuperLMs took
336 V100-hours in the paper. Set --config.train.num_steps to your budget.
"""

import ml_collections

from autodistil_jax.defaults import paper_config


def get_config() -> ml_collections.ConfigDict:
  return paper_config("small")
