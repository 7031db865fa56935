"""The headline experiment (issues 8 and 15): AutoDistil against its baselines, on GLUE and the
evaluation suite. One file, one argument for the machine (big_vision style):

  python experiments/headline.py --workdir=runs/headline --data_dir=../shared/data --out=docs/headline
  python experiments/headline.py --config=configs/headline.py:gpu --workdir=/tmp/h --data_dir=DATA --out=OUT
  bash experiments/headline_gpu.sh pack   # here: teacher and data into .bundle/ for the GPU machine

`cpu` (default): the demo sub-spaces of the real all-MiniLM-L6-v2 teacher, SuperLMs of 120 steps
of batch 16 at the paper's learning rate (4e-5) on the GLUE training sentences, one per sequence
(issue 15, part 1: the setting under which SuperLM training keeps students above their sliced
initialisation; docs/objective.md sections 4 and 6), GLUE on the full
training sets of STS-B, CoLA, MRPC and RTE, 3 seeds. Cost (2-core AMD EPYC CPU, measured): GLUE
per model and seed, for the teacher (students cost less): STS-B 794 s (teacher 85.8), CoLA 811 s
(MCC 30.0), MRPC 508 s (86.2), all three with one or two other jobs sharing the CPU, and RTE 431 s
alone (57.8, majority 52.7) (docs/evaluation.md, section 2); CoLA runs 10 epochs (3.3x: the
<= 50% student 1149 s a seed, docs/results.md section 5): 3 seeds x 4 tasks, about 4 hours for the
teacher, about 25 hours for the teacher, two searched students and their six baselines.

`gpu`: the same experiment at the size one H100/H200 allows in about 10 minutes (issue 15, part 6):
400 SuperLM steps of batch 128 at sequence length 128 in bf16 at the paper's learning rate, on
the GLUE training sentences one per sequence (docs/objective.md section 6: the transfer set under
which SuperLM training kept most students above their sliced initialisation), GLUE on the full
training sets of all five small tasks with SST-2 (67k examples), 3 seeds, each batch padded to
128 so that every (architecture, task) compiles once. Expected wall time on one H100: about 9-10
minutes (estimated from FLOP counts, not yet measured: docs/objective.md section 9 gives the
arithmetic).

`runlocal` (`:gpu,runlocal` or `:cpu,runlocal`): the same code paths at toy sizes, minutes on a
CPU (the slow test of experiments/headline_gpu.sh).
"""

import ml_collections

from autodistil_jax.defaults import demo_config

VARIANTS = ("cpu", "gpu")


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  options = [a for a in arg.split(",") if a]
  variant = next((a for a in options if a in VARIANTS), "cpu")
  if unknown := [a for a in options if a not in (*VARIANTS, "runlocal")]:
    raise ValueError(f"configs/headline.py: unknown argument(s) {unknown}; use cpu or gpu, "
                     "optionally with runlocal (e.g. configs/headline.py:gpu,runlocal)")
  c = demo_config()
  c.data.corpus = ""  # set by experiments/headline.py from --data_dir and headline.transfer
  c.headline = ml_collections.ConfigDict()
  # "mixed": WikiText-2 valid+test, Tiny Shakespeare and the GLUE training sentences; "glue": the
  # GLUE training sentences alone. Issue 15, part 1 (docs/learning_curves_long): on the GLUE
  # sentences at lr 4e-5 the demo Base SuperLM's fixed students beat their sliced twins on zero-shot
  # STS-B from step 20 on, under 3 seeds; on WikiText-2, or at the demo's 2e-4, mostly not. The
  # earlier runs of this variant (docs/k_ablation, the first headline) used "mixed", packed, 2e-4:
  # --config.headline.transfer=mixed --config.data.pack=True --config.train.learning_rate=2e-4.
  c.headline.transfer = "glue"
  c.data.pack = False  # one sentence per sequence: what a sentence encoder is used on
  c.data.heldout = 64
  c.train.num_steps = 120
  c.train.learning_rate = 4e-5
  c.train.checkpoint_every = 50
  # GLUE, the headline protocol (docs/evaluation.md): the full training sets of the four tasks that
  # bench/glue_reference.py checks against transformers, 3 epochs, batch 32, learning rate 1e-4 with
  # 10% linear warmup, seq 128 (each batch cut to its longest row), 3 seeds. The teacher learns
  # every task under it (seed 0, before attention dropout: STS-B 85.8, CoLA MCC 30.0, MRPC 86.2,
  # RTE 57.8; with it, docs/evaluation.md's table). SST-2 (67k examples) is left to the suite's
  # probe on the CPU.
  c.glue.tasks = ("stsb", "cola", "mrpc", "rte")
  c.glue.seeds = (0, 1, 2)
  c.glue.learning_rates = (1e-4,)
  c.glue.epochs = 3
  # On CoLA 3 epochs are too few: every student is still climbing and random init scores as high
  # as the searched one (docs/results.md section 5: 9.5, 10.7, 10.7); at 10 epochs (seed 0) searched
  # 15.1, sliced 13.8, random init 12.4, which peaks at epoch 3 and then overfits.
  c.glue.task_epochs.cola = 10
  c.glue.warmup_ratio = 0.1
  # STS-B's head starts at the training labels' mean: from zero, students cannot reach the labels'
  # offset in 3 epochs and score ~0 whatever they know (docs/objective.md section 11: the <= 50%
  # student 12.7 -> 72.7, docs/regression_bias/base-stsb-5749.md); the teacher is not hurt (seed 0:
  # 85.7 from zero, 86.2 from the mean, docs/glue_reference_label_mean).
  c.glue.regression_bias = "label_mean"
  c.glue.batch_size = 32
  c.glue.seq_len = 128
  c.glue.max_train_examples = 0
  c.glue.pad_multiple = 16
  if variant == "gpu":
    _gpu(c)
  if "runlocal" in options:
    _runlocal(c)
  return c


def _gpu(c: ml_collections.ConfigDict) -> None:
  c.data.seq_len = 128
  c.data.heldout = 1024
  c.train.batch_size = 128
  c.train.num_steps = 400  # 51k sentences: 27x the CPU run's 1,920 sequences
  c.train.warmup_steps = 40
  c.train.dtype = "bfloat16"
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.search.batch_size = 128
  c.search.students_per_call = 32
  c.glue.tasks = ("stsb", "cola", "mrpc", "rte", "sst2")
  c.glue.pad_multiple = 0  # one shape per (architecture, task): compiles, not FLOPs, cost here
  c.glue.seed_batching = "vmap"  # the 3 seeds in one step (what "auto" picks on a GPU)
  c.evaluate.probe_train_examples = 10_000
  c.evaluate.batch_size = 256
  c.evaluate.students_per_call = 16


def _runlocal(c: ml_collections.ConfigDict) -> None:
  """Toy sizes for a CPU test of the same code paths (never for results)."""
  c.data.seq_len = 32
  c.data.heldout = 8
  c.train.batch_size = 8  # a multiple of 8 devices (the tests' host platform)
  c.train.num_steps = 2
  c.train.warmup_steps = 0
  c.train.checkpoint_every = 2
  c.search.batch_size = 8
  c.search.num_batches = 1
  c.search.students_per_call = 16
  c.glue.tasks = ("rte", "stsb")
  c.glue.seeds = (0, 1)
  c.glue.epochs = 1
  c.glue.batch_size = 8
  c.glue.seq_len = 32
  c.glue.max_train_examples = 32
  c.evaluate.probe_tasks = ("sst2",)
  c.evaluate.probe_train_examples = 64
  c.evaluate.sts_examples = 64
  c.evaluate.seq_len = 32
