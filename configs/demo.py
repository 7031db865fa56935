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

from autodistil_jax.defaults import demo_config


def get_config() -> ml_collections.ConfigDict:
  return demo_config()
