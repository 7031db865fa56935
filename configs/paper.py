"""The paper's sub-spaces on a BERT-base teacher (docs/paper.md §1-3), one per run; the argument
after the colon picks it (tiny, small or base):

  python launch/main.py --config=configs/paper.py:base --workdir=runs/base --mode=train \
      --config.data.corpus=tfds:wikipedia/20230601.en

Paper scale: batch 128 x seq 128, 10 epochs of Wikipedia + BookCorpus; the three SuperLMs took
336 V100-hours in the paper. Set --config.train.num_steps to your budget. Not run at that scale
here: bench/train_step.py measures the Base and Tiny steps on one H200 (docs/benchmarks.md).
"""

import ml_collections

from autodistil_jax.defaults import paper_config
from autodistil_jax.search_space import PAPER_SUBSPACES


def get_config(subspace: str = "base") -> ml_collections.ConfigDict:
  if subspace not in PAPER_SUBSPACES:
    raise ValueError(f"configs/paper.py:{subspace}: choose one of {', '.join(PAPER_SUBSPACES)}")
  return paper_config(subspace)
