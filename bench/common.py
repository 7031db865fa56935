"""What the benchmarks share: teachers and sub-spaces by size, batches, the static-shape baseline
step, interleaved timing and exact FLOP counts."""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from autodistil_jax import data, distill, hf_io
from autodistil_jax.defaults import base_config
from autodistil_jax.model import BertEncoder, EncoderConfig, get_params, init_superlm, slice_params
from autodistil_jax.search_space import (
  PAPER_SUBSPACES,
  Arch,
  SubSpace,
  derive_subspace,
  exact_flops,
  layer_map,
)
from autodistil_jax.train import DTYPES, StepConfig


def teacher_and_subspaces(size: str) -> tuple[BertEncoder, dict[str, SubSpace]]:
  """'demo': the real all-MiniLM-L6-v2 and the paper's fractions of it (configs/demo.py);
  'paper': a BERT-base-shaped teacher (random weights: speed does not depend on them) and the
  paper's own sub-spaces."""
  if size == "demo":
    teacher = hf_io.load_bert("all-MiniLM-L6-v2")
    shape = teacher.config.teacher_shape
    return teacher, {n: derive_subspace(s, shape) for n, s in PAPER_SUBSPACES.items()}
  if size == "paper":
    return BertEncoder(EncoderConfig(), rngs=nnx.Rngs(0)), dict(PAPER_SUBSPACES)
  raise ValueError(f"--size={size!r}: 'demo' or 'paper'")


def make_batch(batch_size: int, seq_len: int, vocab: int, corpus: str = "", tokenizer_dir=None,
               seed: int = 0) -> dict[str, jax.Array]:
  """Real token ids from `corpus` when given (first rows), else random ids, all unpadded."""
  if corpus:
    tokens = data.load_corpus(corpus, tokenizer_dir, seq_len)[:batch_size]
    if len(tokens) < batch_size:
      raise ValueError(f"{corpus} gives {len(tokens)} sequences, fewer than --batch={batch_size}")
  else:
    tokens = np.random.default_rng(seed).integers(1000, vocab, (batch_size, seq_len), np.int32)
  return {k: jnp.asarray(v) for k, v in data.batch_features(tokens).items()}


def step_config(teacher: BertEncoder, dtype: str, **overrides) -> StepConfig:
  config = base_config()
  config.train.dtype = dtype
  config.train.update(overrides)
  return StepConfig.from_config(config, teacher)


def train_config(**overrides) -> ml_collections.ConfigDict:
  config = base_config().train
  config.update(overrides)
  return config


@dataclasses.dataclass
class MaskedStep:
  """The masked SuperLM step of a sub-space as the benchmarks run it, with its fixed inputs."""
  superlm: BertEncoder
  optimizer: object
  sc: StepConfig
  step: Callable  # jitted over the mesh (train.jit_train_step)
  teacher_params: dict
  batch: dict
  archs: jax.Array  # the sandwich of step 0: [4, 4]
  key: jax.Array

  def fresh_state(self, mesh) -> list:
    """[params, opt_state]: a copy of the SuperLM's parameters each (the step donates them)."""
    from autodistil_jax import parallel

    params = parallel.replicate(mesh, jax.tree.map(jnp.copy, get_params(self.superlm)))
    return [params, self.optimizer.init(params)]

  def inputs(self, mesh) -> list:
    """Everything the step takes, in order, with fresh parameters and optimizer state."""
    return [*self.fresh_state(mesh), self.teacher_params, self.batch, self.archs, self.key]


def masked_step(args, teacher: BertEncoder, space: SubSpace, mesh) -> MaskedStep:
  """The masked step for `space` under the benchmark flags (batch, seq_len, dtype, student_batching,
  corpus)."""
  from autodistil_jax import parallel, train

  parallel.check_batch_size(args.batch, mesh)
  superlm = init_superlm(teacher, space)
  sc = step_config(teacher, args.dtype, student_batching=args.student_batching)
  optimizer = train.make_optimizer(train_config(num_steps=1000))
  step = train.jit_train_step(train.make_train_step(nnx.graphdef(superlm), nnx.graphdef(teacher),
                                                    optimizer, sc), mesh)
  batch = parallel.global_batch(mesh, {k: jax.device_get(v) for k, v in make_batch(
      args.batch, args.seq_len, teacher.config.vocab_size, args.corpus).items()})
  return MaskedStep(superlm, optimizer, sc, step, parallel.replicate(mesh, get_params(teacher)), batch,
                    train.sandwich_archs(space, 0, 0, 2), jax.random.key(0))


def dense_graphdef(cfg: EncoderConfig) -> nnx.GraphDef:
  return nnx.graphdef(nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0))))


def make_static_step(superlm: BertEncoder, teacher: BertEncoder, archs: Sequence[Arch], optimizer,
                     sc: StepConfig) -> Callable:
  """The sandwich step with the students fixed at trace time: each is sliced out of the SuperLM's
  parameters with static shapes and runs dense (no masks, only its own layers). What a
  recompile-per-sandwich implementation would run if compiling were free: the baseline for the
  masking overhead."""
  dtype = DTYPES[sc.dtype]
  cfg, t_graphdef = superlm.config, nnx.graphdef(teacher)
  lookup = cfg.layer_lookup()
  students = []
  for arch in archs:
    student_cfg = cfg.for_student(arch)
    positions = [int(lookup[layer_map(i, arch.layers, cfg.depth)]) for i in range(arch.layers)]
    students.append((arch, student_cfg, positions, dense_graphdef(student_cfg)))

  def step(params, opt_state, teacher_params, batch, rng):
    t_out = nnx.merge(t_graphdef, teacher_params)(batch["input_ids"], batch["attention_mask"],
                                                  batch["token_type_ids"], dtype=dtype)
    t_logits = jax.lax.stop_gradient(distill.teacher_relations(t_out, sc.relation_heads))

    def total_loss(params):
      losses = []
      for (arch, student_cfg, positions, graphdef), key in zip(students, jax.random.split(rng, len(students)),
                                                               strict=True):
        sliced = slice_params(params, student_cfg, positions)
        out = nnx.merge(graphdef, sliced)(batch["input_ids"], batch["attention_mask"],
                                          batch["token_type_ids"], dropout_rate=sc.dropout,
                                          dropout_rng=key, dtype=dtype)
        losses.append(distill.distill_loss(t_logits, out, arch.heads * sc.head_size,
                                           batch["attention_mask"], sc.loss))
      return sum(losses)

    grads = jax.grad(total_loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state

  return jax.jit(step, donate_argnums=(0, 1))


def useful_step_flops(teacher: BertEncoder, archs: Sequence[Arch], batch: int, seq_len: int) -> float:
  """Exact FLOPs the sandwich step must do: the teacher's forward and each student's forward and
  backward (3x its forward), without poolers (unused by the loss)."""
  tc = teacher.config
  teacher_fwd = exact_flops(tc.full_arch(), seq_len, tc.head_size, pooler=False)
  students = sum(exact_flops(a, seq_len, tc.head_size, pooler=False) for a in archs)
  return batch * (teacher_fwd + 3 * students)


def interleaved_times(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, float]:
  """Median seconds per call of each function, measured in alternating rounds so that machine
  noise hits all of them alike. Each fn must block until its work is done."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  samples = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      samples[name].append(time.perf_counter() - start)
  return {name: statistics.median(s) for name, s in samples.items()}


# (dense bf16 peak FLOP/s without sparsity, memory bandwidth bytes/s) of the accelerators we
# report MFU and floors against (NVIDIA's data sheets: H100 SXM, H200 SXM).
DEVICE_PEAKS = {"NVIDIA H100 80GB HBM3": (989e12, 3.35e12), "NVIDIA H100": (989e12, 3.35e12),
                "NVIDIA H200": (989e12, 4.8e12)}


def device_description() -> str:
  d = jax.devices()[0]
  return f"{jax.device_count()} x {d.device_kind} ({d.platform}), jax {jax.__version__}"


def define_flags(batch: int, step_flags: bool = False) -> None:
  """The flags every benchmark takes (absl, as launch/main.py); `step_flags` adds the training
  step's. Call at import, before common.run parses the command line."""
  flags.DEFINE_enum("size", "demo", ["demo", "paper"], "demo: all-MiniLM-L6-v2 and its sub-spaces; "
                    "paper: a BERT-base-shaped teacher and the paper's sub-spaces")
  flags.DEFINE_integer("batch", batch, "global batch size")
  flags.DEFINE_integer("seq_len", 128, "sequence length")
  flags.DEFINE_string("corpus", "", "text file for real token ids (default: random ids)")
  flags.DEFINE_string("json", "", "also write the results to this file")
  if step_flags:
    flags.DEFINE_string("subspaces", "tiny,small,base", "comma-separated sub-spaces")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "matmul compute dtype")
    flags.DEFINE_enum("student_batching", "scan", ["scan", "vmap"], "how the sandwich students run")


def args() -> SimpleNamespace:
  """The benchmark's own flags (its script's and define_flags'), parsed, as attributes."""
  mine = [f for module, fs in flags.FLAGS.flags_by_module_dict().items()
          if module in (sys.argv[0], __name__, "__main__") for f in fs]
  return SimpleNamespace(**{f.name: f.value for f in mine})


def run(main: Callable[[], None]) -> None:
  """absl's app.run for a main that takes no arguments: stray ones are a usage error."""
  def entry(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    main()
  app.run(entry)
