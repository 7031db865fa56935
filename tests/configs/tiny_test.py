"""A seconds-long training config for tests: the real MiniLM teacher, a 16-student sub-space.

  python launch/main.py --config=tests/configs/tiny_test.py --workdir=/tmp/t --mode=train \
      --config.data.corpus=../shared/data/wikitext-2/valid.txt

`tests/configs/tiny_test.py:two` adds a second sub-space, "mini2", for what spans sub-spaces.
"""

import ml_collections

from autodistil_jax.defaults import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in ("", "two"):
    raise ValueError(f"tests/configs/tiny_test.py: unknown argument {arg!r}; use none or 'two'")
  c = base_config()
  c.teacher = "all-MiniLM-L6-v2"
  spaces = {"mini": {"layers": (1, 2), "hidden": (32, 48), "mlp_ratio": (1.0, 2.0), "heads": (2, 3)}}
  if arg == "two":
    spaces["mini2"] = {"layers": (1,), "hidden": (32, 40), "mlp_ratio": (1.0, 2.0), "heads": (2,)}
  c.subspaces = ml_collections.ConfigDict(spaces)
  c.data.seq_len = 32
  c.data.heldout = 16
  c.train.batch_size = 8
  c.train.num_steps = 5
  c.train.learning_rate = 1e-3
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.keep_checkpoints = 2
  c.search.batch_size = 8
  c.search.students_per_call = 4
  c.search.budgets = ("flops<=0.5*teacher", "params<=12M")
  c.glue.tasks = ("rte", "stsb")
  c.glue.seq_len = 32
  c.glue.batch_size = 8
  c.glue.eval_batch_size = 64
  c.glue.epochs = 1
  c.glue.max_train_examples = 32
  c.glue.learning_rates = (1e-4,)
  c.evaluate.probe_tasks = ("sst2",)
  c.evaluate.probe_train_examples = 64
  c.evaluate.sts_examples = 64
  c.evaluate.seq_len = 32
  return c
