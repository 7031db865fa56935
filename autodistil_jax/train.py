"""Task-agnostic SuperLM training: the jitted sandwich step and the resumable training loop.

One step: the frozen teacher encodes the batch once; the largest, smallest and two random
students of the sub-space (a pure function of (seed, step)) run forward/backward on the shared
weights; their gradients are summed, clipped to global norm 1.0 and applied by AdamW. The
architectures enter as traced int32 values, so the whole run compiles one program.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from tqdm import tqdm

from autodistil_jax import data, distill, parallel, records
from autodistil_jax.checkpoints import Checkpointer
from autodistil_jax.metrics import MetricsWriter, read_metrics
from autodistil_jax.model import BertEncoder, from_params, get_params, init_superlm, param_shapes
from autodistil_jax.search_space import Arch, SubSpace, sandwich_sample
from autodistil_jax.workdir import Workdir

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_DECAYED = ("kernel", "word", "position", "token_type")  # no decay on biases and LayerNorm


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
  """Optional linear warmup to the peak, then linear decay to zero at num_steps."""
  warmup = int(train.warmup_steps)
  decay = optax.linear_schedule(train.learning_rate, 0.0, max(train.num_steps - warmup, 1))
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, train.learning_rate, warmup), decay], [warmup])


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with weight decay on matrices and embeddings only."""
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[-1], "key", path[-1])).endswith(_DECAYED), params)
  return optax.chain(
      optax.clip_by_global_norm(train.clip_norm),
      optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2, eps=train.eps,
                  weight_decay=train.weight_decay, mask=decay_mask))


def sandwich_archs(space: SubSpace, seed: int, step: int, num_random: int) -> np.ndarray:
  """The step's students as an int32 [students, 4] array (layers, hidden, ffn, heads)."""
  return np.stack([a.as_array() for a in sandwich_sample(space, seed, step, num_random)])


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the compiled step."""

  head_size: int
  relation_heads: int
  loss: str = "mse"
  dropout: float = 0.1
  dtype: str = "float32"
  grad_accum: int = 1
  student_batching: str = "scan"  # "scan": one student at a time; "vmap": all at once
  unroll: bool = False  # unroll the loops over layers and students (bigger program)
  hidden_relation_weight: float = 0.0  # H-H relation of the last layer's output (0: the paper's)
  embedding_relation_weight: float = 0.0  # sentence-embedding similarities (0: the paper's)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, teacher: BertEncoder) -> StepConfig:
    t = config.train
    if t.loss not in distill.LOSS_KINDS:
      raise ValueError(f"config.train.loss={t.loss!r}: choose one of {distill.LOSS_KINDS}")
    if t.dtype not in DTYPES:
      raise ValueError(f"config.train.dtype={t.dtype!r}: choose one of {sorted(DTYPES)}")
    if t.student_batching not in ("scan", "vmap"):
      raise ValueError(f"config.train.student_batching={t.student_batching!r}: 'scan' or 'vmap'")
    if t.grad_accum < 1 or t.batch_size % t.grad_accum:
      raise ValueError(f"config.train.grad_accum={t.grad_accum} must be >= 1 and divide batch_size")
    for key in ("hidden_relation_weight", "embedding_relation_weight"):
      if not t[key] >= 0:
        raise ValueError(f"config.train.{key}={t[key]}: must be >= 0")
    return cls(teacher.config.head_size, teacher.config.heads, t.loss, t.dropout, t.dtype,
               t.grad_accum, t.student_batching, t.unroll, float(t.hidden_relation_weight),
               float(t.embedding_relation_weight))


def make_train_step(student_graphdef: nnx.GraphDef, teacher_graphdef: nnx.GraphDef,
                    optimizer: optax.GradientTransformation, sc: StepConfig) -> Callable:
  """(params, opt_state, teacher_params, batch, archs, rng) -> (params, opt_state, metrics)."""
  dtype = DTYPES[sc.dtype]

  def student_loss(params, arch, rng, batch, teacher_logits):
    out = nnx.merge(student_graphdef, params)(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch,
        dropout_rate=sc.dropout, dropout_rng=rng, dtype=dtype, unroll=sc.unroll)
    with jax.named_scope("relation_loss"):  # scopes label ops in profiles (bench/profile_step.py)
      return distill.distill_loss(teacher_logits, out, arch[3] * sc.head_size,
                                  batch["attention_mask"], sc.loss, arch[1], sc.hidden_relation_weight,
                                  sc.embedding_relation_weight)

  def nonfinite(loss, grads):
    """1 where a student's loss or any of its gradients is NaN/inf, else 0."""
    leaves_finite = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(leaves_finite))
    return 1 - finite.astype(jnp.int32)

  def micro_batch(params, teacher_params, batch, archs, rng):
    with jax.named_scope("teacher"):
      teacher = nnx.merge(teacher_graphdef, teacher_params)
      t_out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], dtype=dtype,
                      unroll=sc.unroll)
      embedding_mask = batch["attention_mask"] if sc.embedding_relation_weight > 0 else None
      t_logits = jax.lax.stop_gradient(distill.teacher_relations(
          t_out, sc.relation_heads, sc.hidden_relation_weight > 0, embedding_mask))
    keys = jax.random.split(rng, archs.shape[0])
    grad_fn = jax.value_and_grad(student_loss)
    if sc.student_batching == "vmap":
      losses, grads = jax.vmap(grad_fn, in_axes=(None, 0, 0, None, None))(
          params, archs, keys, batch, t_logits)
      bad = jax.vmap(nonfinite)(losses, grads)
      return losses, jax.tree.map(lambda g: g.sum(0), grads), bad

    def one_student(acc, xs):
      loss, grads = grad_fn(params, xs[0], xs[1], batch, t_logits)
      return jax.tree.map(jnp.add, acc, grads), (loss, nonfinite(loss, grads))
    grads, (losses, bad) = jax.lax.scan(one_student, jax.tree.map(jnp.zeros_like, params), (archs, keys),
                                        unroll=sc.unroll)
    return losses, grads, bad

  def step(params, opt_state, teacher_params, batch, archs, rng):
    if sc.grad_accum == 1:
      losses, grads, bad = micro_batch(params, teacher_params, batch, archs, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape(sc.grad_accum, -1, *x.shape[1:]), batch)

      def accumulate(acc, xs):
        mb, key = xs
        out = micro_batch(params, teacher_params, mb, archs, key)
        return jax.tree.map(jnp.add, acc, out), None
      zeros = (jnp.zeros(archs.shape[0]), jax.tree.map(jnp.zeros_like, params),
               jnp.zeros(archs.shape[0], jnp.int32))
      (losses, grads, bad), _ = jax.lax.scan(accumulate, zeros,
                                             (micro, jax.random.split(rng, sc.grad_accum)))
      losses, grads = jax.tree.map(lambda x: x / sc.grad_accum, (losses, grads))
    with jax.named_scope("optimizer"):
      grad_norm = optax.tree.norm(grads)
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
    # A non-finite loss or gradient of any student skips the whole update (params and moments).
    ok = jnp.all(bad == 0) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    params, opt_state = jax.tree.map(keep, (new_params, new_opt_state), (params, opt_state))
    return params, opt_state, {"losses": losses, "grad_norm": grad_norm, "nonfinite": bad}

  return step


def jit_train_step(step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """Compiles the step over the mesh: batch sharded over 'data', the rest replicated."""
  rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  return jax.jit(step, in_shardings=(rep, rep, rep, sharded, rep, rep),
                 out_shardings=(rep, rep, rep), donate_argnums=(0, 1))


def _loss_scalars(losses: np.ndarray) -> dict[str, float]:
  if len(losses) == 1:  # a one-student sub-space: plain distillation
    return {"loss/student": float(losses[0])}
  return {"loss/largest": float(losses[0]), "loss/smallest": float(losses[1]),
          "loss/random": float(np.mean(losses[2:])) if len(losses) > 2 else float("nan")}


def _initial_state(config, teacher: BertEncoder, space: SubSpace, mesh):
  superlm = init_superlm(teacher, space)
  optimizer = make_optimizer(config.train)
  params = get_params(superlm)
  state = {"params": params, "opt_state": optimizer.init(params),
           "rng": jax.random.key_data(jax.random.key(config.seed))}
  return nnx.graphdef(superlm), optimizer, parallel.replicate(mesh, state)


def _checkpointer(config, wd: Workdir, name: str) -> Checkpointer:
  t = config.train
  return Checkpointer(wd.checkpoints(name), t.checkpoint_every, t.keep_checkpoints)


def check_record(wd: Workdir, name: str, inputs: dict, start: bool = False) -> None:
  """Stops with StaleInputs, touching nothing, when the SuperLM of `name` in `wd` was trained with
  other inputs than `inputs` (records.stage_inputs of "train" for that sub-space), or has
  checkpoints but no record of them. With `start`, a SuperLM not begun yet gets its record."""
  way_on = (f"Use a new --workdir, or --redo=train to train again (what it replaces is moved to "
            f"{wd.root / 'replaced'}/)")
  if records.check(wd.superlm_record(name), inputs, f"the SuperLM {name!r} in {wd.superlm(name)}",
                   way_on):
    return
  if wd.checkpoints(name).is_dir() and any(wd.checkpoints(name).iterdir()):
    raise records.StaleInputs(f"{wd.checkpoints(name)} holds checkpoints with no record of what "
                              f"they were trained with (an older version made them). {way_on}")
  if start and jax.process_index() == 0:
    records.write(wd.superlm_record(name), inputs)


def load_superlm(config: ml_collections.ConfigDict, wd: Workdir | str | Path, name: str,
                 teacher: BertEncoder, mesh: jax.sharding.Mesh) -> tuple[BertEncoder, int]:
  """The SuperLM of sub-space `name` from its latest checkpoint, and that checkpoint's step.
  Check its record first (check_record): a SuperLM of another sub-space shape reads as corrupt.
  Only the parameters are read, into shapes known from the configs (no optimizer state built, no
  teacher slice made to learn them)."""
  cfg = teacher.config.for_subspace(SubSpace.from_config(name, config.subspaces[name]))
  rep = parallel.replicated(mesh)
  like = {"params": {group: {n: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rep)
                             for n, shape in names.items()}
                     for group, names in param_shapes(cfg).items()}}
  wd = Workdir.of(wd)
  missing = FileNotFoundError(f"no SuperLM checkpoint for sub-space {name!r} in "
                              f"{wd.checkpoints(name)}: run --mode=train first")
  if not wd.checkpoints(name).is_dir():  # checked before orbax opens it: its cleanup thread would
    raise missing                        # print a traceback of its own after our one line
  ckpt = _checkpointer(config, wd, name)
  restored = ckpt.restore_subset(like)
  ckpt.close()
  if restored is None:
    raise missing
  step, state = restored
  return from_params(cfg, state["params"]), step


def training_summary(wd: Workdir, names: list[str]) -> str:
  """Per sub-space: the distillation loss of each sampled size at the first and last log."""
  lines = ["SuperLM training: loss at first -> last logged step (largest / smallest / random)"]
  for name in names:
    if logged := read_metrics(wd, f"superlm/{name}"):
      first, last = logged[0], logged[-1]
      sizes = " / ".join(f"{first[k]:.4g} -> {last[k]:.4g}" for k in first
                         if k.startswith("loss/") and k in last)
      lines.append(f"  {name:>6} steps {first['step']}..{last['step']}: {sizes}")
  return "\n".join(lines)


class Preempted(Exception):
  """SIGTERM arrived (how TPU VMs announce preemption): a checkpoint was saved at `step`."""

  def __init__(self, step: int, directory: Path):
    super().__init__(f"preempted (SIGTERM) at step {step}: checkpoint saved in {directory}; run the "
                     "same command again to resume")
    self.step = step


class Diverged(ValueError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class _PreemptionWatch:
  """Turns SIGTERM into a flag the loop checks between steps (single process). Multi-host jobs
  use JAX's preemption sync point instead, so that every host stops at the same step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # no preemption service in this job
        return False
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _NonFiniteGuard:
  """Counts steps whose update was skipped for a non-finite loss or gradient, with the students
  that caused them, and stops the run after `limit` such steps in a row (0: never)."""

  def __init__(self, limit: int, name: str):
    self.limit, self.name = limit, name
    self.streak, self.steps, self.archs = 0, 0, []
    self.diverged: str | None = None

  def update(self, step: int, archs: np.ndarray, bad: np.ndarray) -> None:
    if not bad.any():
      self.streak = 0
      return
    self.streak += 1
    self.steps += 1
    names = [Arch(int(a[0]), int(a[1]), a[2] / a[1], int(a[3])).name for a in archs[bad > 0]]
    self.archs.extend(f"{step}:{n}" for n in names)
    logging.warning("%s step %d: non-finite loss or gradient for %s; update skipped", self.name, step,
                    ", ".join(names))
    if self.limit and self.streak >= self.limit:
      self.diverged = (f"sub-space {self.name!r}: {self.streak} steps in a row with a non-finite loss "
                       f"or gradient (last at step {step}, students {', '.join(names)}); lower "
                       "config.train.learning_rate or raise config.train.max_nonfinite_steps")

  def flush(self) -> dict:
    out = {"nonfinite_steps": self.steps, "nonfinite_archs": self.archs}
    self.steps, self.archs = 0, []
    return out


def train_superlm(config: ml_collections.ConfigDict, wd: Workdir | str | Path, name: str,
                  teacher: BertEncoder, tokens: np.ndarray, train_indices: np.ndarray,
                  mesh: jax.sharding.Mesh, stop_after: int | None = None,
                  inputs: dict | None = None) -> dict:
  """Trains (or resumes) the SuperLM of sub-space `name`; returns its parameters.

  Checkpoints go to wd.checkpoints(name); `stop_after` ends the run early after that step (as a
  preemption would), leaving the last checkpoint to resume from. It resumes only from
  checkpoints trained with the same `inputs` (default: the config's keys; the pipeline adds the
  teacher's and corpus's identities): others raise StaleInputs and are left as they are. SIGTERM
  saves a checkpoint and raises Preempted; too many non-finite steps in a row raise Diverged.
  """
  wd = Workdir.of(wd)
  t = config.train
  space = SubSpace.from_config(name, config.subspaces[name])
  sc = StepConfig.from_config(config, teacher)  # settings checked before anything is written
  parallel.check_batch_size(t.batch_size, mesh)
  check_record(wd, name, inputs or records.stage_inputs(config, "train", subspace=name), start=True)
  graphdef, optimizer, state = _initial_state(config, teacher, space, mesh)
  teacher_params = parallel.replicate(mesh, get_params(teacher))
  iterator = data.make_iterator(data.train_dataset(
      tokens, train_indices, t.batch_size, config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), pad_id=teacher.config.pad_token_id))
  ckpt = _checkpointer(config, wd, name)
  restored = ckpt.restore(state, iterator)
  start = 0 if restored is None else restored[0]
  if restored is not None:
    state = restored[1]
  step_fn = jit_train_step(make_train_step(graphdef, nnx.graphdef(teacher), optimizer, sc), mesh)
  schedule = learning_rate_schedule(t)
  writer = MetricsWriter(wd, f"superlm/{name}", resume_step=start)
  base_key = jax.random.wrap_key_data(state["rng"])
  end = t.num_steps if stop_after is None else min(stop_after, t.num_steps)
  tokens_per_step = t.batch_size * tokens.shape[1]
  bar = tqdm(total=t.num_steps, initial=start, desc=f"train {name}", unit="step",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  params, opt_state = state["params"], state["opt_state"]
  guard = _NonFiniteGuard(t.max_nonfinite_steps, name)
  last_log, last_time, interval_sum, pending = start, None, None, None
  save = lambda step, force: ckpt.save(step, {"params": params, "opt_state": opt_state, "rng": state["rng"]},
                                       iterator, force=force)
  try:
    with _PreemptionWatch() as preemption:
      for step in range(start, end):
        archs = sandwich_archs(space, config.seed, step, t.num_random)
        batch = parallel.global_batch(mesh, next(iterator))
        rng = jax.random.fold_in(base_key, step)
        params, opt_state, metrics = step_fn(params, opt_state, teacher_params, batch, archs, rng)
        done = step + 1
        # The previous step's few flags are read while this one runs: one step behind, no stall.
        if pending is not None:
          guard.update(pending[0], pending[1], np.asarray(pending[2]))
        pending = (done, archs, metrics["nonfinite"])
        # Summed on device so that the loop never waits for the step to finish.
        interval_sum = metrics if interval_sum is None else jax.tree.map(jnp.add, interval_sum, metrics)
        if done % t.log_every == 0 or done == end:
          guard.update(*pending[:2], np.asarray(pending[2]))
          pending = None
          fetched = {k: np.asarray(v) / (done - last_log) for k, v in jax.device_get(interval_sum).items()}
          interval_sum = None
          now = time.perf_counter()
          scalars = _loss_scalars(fetched["losses"])
          scalars.update({"grad_norm": float(fetched["grad_norm"]), "learning_rate": float(schedule(step))})
          if last_time is not None:
            steps_per_s = (done - last_log) / (now - last_time)
            scalars.update({"steps_per_s": steps_per_s, "tokens_per_s": steps_per_s * tokens_per_step})
          writer.write(done, {**scalars, **guard.flush()})
          bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in scalars.items() if k.startswith("loss")})
          last_log, last_time = done, now
        bar.update(1)
        if guard.diverged:
          if guard.steps:  # not yet in metrics.jsonl
            writer.write(done, guard.flush())
          raise Diverged(guard.diverged)
        if done < end and preemption.should_stop(done):
          save(done, True)
          ckpt.wait()
          raise Preempted(done, ckpt.directory)
        save(done, done == end)
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  return params
