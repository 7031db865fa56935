"""GLUE fine-tuning of any BERT encoder (teacher, exported student, HF directory).

A freshly initialised head (classification, or regression for STS-B) on the pooled [CLS] or the
mean of the tokens (config.glue.head_input), AdamW without weight decay, linear decay from the
peak learning rate, dev evaluated every epoch and the best epoch kept (docs/paper.md §7). Data
parallel over the same ('data',) mesh as training.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from autodistil_jax import glue, measures, parallel
from autodistil_jax.model import BertEncoder, EncoderConfig, get_params


def init_head(hidden: int, num_labels: int, seed: int, bias: float = 0.0) -> dict:
  kernel = 0.02 * jax.random.normal(jax.random.key(seed), (hidden, num_labels), jnp.float32)
  return {"kernel": kernel, "bias": jnp.full((num_labels,), bias, jnp.float32)}


def head_bias(task: glue.Task, train_labels: np.ndarray, mode: str) -> float:
  """The head's initial bias under config.glue.regression_bias: the training labels' mean for a
  regression task under "label_mean", else 0 (classification heads always start at 0)."""
  if mode not in glue.REGRESSION_BIAS:
    raise ValueError(f"regression_bias={mode!r} must be one of {', '.join(glue.REGRESSION_BIAS)}")
  return float(np.mean(train_labels)) if task.is_regression and mode == "label_mean" else 0.0


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
  """Warmup length as transformers computes it from a ratio (ceil), so both runs match."""
  return int(np.ceil(total_steps * warmup_ratio))


def learning_rate_at(step, learning_rate, warmup, total_steps) -> jax.Array:
  """Linear warmup from 0 over `warmup` steps, then linear decay to zero at `total_steps`:
  transformers' get_linear_schedule_with_warmup, step for step (tested). Any argument may be a
  traced value, so one compiled step serves every learning rate and training-set size."""
  step = jnp.asarray(step, jnp.float32)
  warming = step / jnp.maximum(warmup, 1)
  decaying = jnp.maximum(0.0, (total_steps - step) / jnp.maximum(total_steps - warmup, 1))
  return learning_rate * jnp.where(step < warmup, warming, decaying)


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup: int = 0) -> optax.Schedule:
  return lambda step: learning_rate_at(step, learning_rate, warmup, total_steps)


def schedule_values(mesh: jax.sharding.Mesh, learning_rate: float, total_steps: int,
                    warmup_ratio: float) -> jax.Array:
  """The (peak, warmup steps, total steps) a train step takes as values, on every device."""
  warmup = warmup_steps(total_steps, warmup_ratio)
  return parallel.replicate(mesh, jnp.asarray([learning_rate, warmup, total_steps], jnp.float32))


def predict_all(predict, params, features: dict[str, np.ndarray], batch_size: int, pad_multiple: int,
                mesh: jax.sharding.Mesh, *args) -> np.ndarray:
  """`predict(params, batch, *args)` over every example of `features`, its last axis the examples.
  Every batch is dispatched before any result is fetched: the host never waits per batch."""
  pending = [(predict(params, parallel.global_batch_from_full(mesh, b), *args), n)
             for b, n in batches(features, batch_size, drop_last=False, pad_multiple=pad_multiple)]
  fetched = jax.device_get([p for p, _ in pending])
  return np.concatenate([np.asarray(f)[..., :n] for f, (_, n) in zip(fetched, pending, strict=True)], -1)


def make_optimizer() -> optax.GradientTransformation:
  """AdamW without weight decay; its learning rate is set each step from learning_rate_at."""
  return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8,
                                               weight_decay=0.0)


def check_head_input(head_input: str) -> None:
  if head_input not in glue.HEAD_INPUTS:
    raise ValueError(f"head_input={head_input!r} must be one of {', '.join(glue.HEAD_INPUTS)}")


def head_features(out, attention_mask: jax.Array, head_input: str) -> jax.Array:
  """[B, hidden] what the head reads from an encoder's output (glue.HEAD_INPUTS); the "cls" and
  "mean" readouts are the evaluation suite's (measures.pool), in fp32."""
  check_head_input(head_input)
  if head_input == "pooler":
    return out.pooled if out.pooled is not None else out.hidden[:, 0]
  return measures.pool(out.hidden.astype(jnp.float32), attention_mask, head_input)


def step_functions(graphdef, task: glue.Task, dropout: float, attention_dropout: float,
                   optimizer: optax.GradientTransformation, dtype=jnp.float32, head_input: str = "pooler"):
  """Un-jitted (train_step, predict) of an encoder + a head on `head_input` (head_features).
  `arch` (None: the encoder at full size) runs one student of a SuperLM, so the proxy search
  (proxy.py) vmaps the very step that fine-tunes an exported student."""
  check_head_input(head_input)

  def logits_fn(params, batch, rng, arch):
    out = nnx.merge(graphdef, params["encoder"])(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch,
        dropout_rate=dropout, dropout_rng=rng, attention_dropout_rate=attention_dropout, dtype=dtype)
    pooled = head_features(out, batch["attention_mask"], head_input)
    if rng is not None:
      pooled = jnp.where(jax.random.bernoulli(jax.random.fold_in(rng, 1), 1 - dropout, pooled.shape),
                         pooled / (1 - dropout), 0.0)
    return pooled @ params["head"]["kernel"] + params["head"]["bias"]

  def loss_fn(params, batch, rng, arch):
    logits = logits_fn(params, batch, rng, arch)
    if task.is_regression:
      return jnp.mean(jnp.square(logits[:, 0] - batch["labels"]))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))

  def train_step(params, opt_state, batch, rng, schedule, arch=None):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng, arch)
    lr = learning_rate_at(opt_state.count, *schedule)  # schedule: (peak, warmup, total steps)
    opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def predict(params, batch, arch=None):
    logits = logits_fn(params, batch, None, arch)
    return logits[:, 0] if task.is_regression else jnp.argmax(logits, -1)

  return train_step, predict


@functools.lru_cache(maxsize=64)
def make_functions(encoder_config: EncoderConfig, task: glue.Task, dropout: float, attention_dropout: float,
                   mesh: jax.sharding.Mesh, dtype=jnp.float32, head_input: str = "pooler"):
  """Jitted (optimizer, train_step, predict) for an encoder of `encoder_config` + a head, batch
  sharded over the mesh. The schedule (peak, warmup, total steps) enters the step as values, so
  every learning rate, training-set size and seed, and every model of the same architecture (a
  searched student and its baselines), reuses one compilation per input shape."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: BertEncoder(encoder_config, rngs=nnx.Rngs(0))))
  optimizer = make_optimizer()
  train_step, predict = step_functions(graphdef, task, dropout, attention_dropout, optimizer, dtype,
                                       head_input)
  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  train_step = jax.jit(train_step, in_shardings=(rep, rep, data, rep, rep),
                       out_shardings=(rep, rep, rep), donate_argnums=(0, 1))
  return optimizer, train_step, jax.jit(predict, in_shardings=(rep, data), out_shardings=rep)


@functools.lru_cache(maxsize=64)
def make_seed_functions(encoder_config: EncoderConfig, task: glue.Task, dropout: float,
                        attention_dropout: float, mesh: jax.sharding.Mesh, dtype=jnp.float32,
                        head_input: str = "pooler"):
  """make_functions for several seeds side by side: parameters and optimizer state carry a leading
  seed axis, a batch is [batch, seed, ...] (sharded over the mesh on its batch axis), and each seed's
  dropout key is fold_in(its base key, step), as finetune draws it."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: BertEncoder(encoder_config, rngs=nnx.Rngs(0))))
  optimizer = make_optimizer()
  train_step, predict = step_functions(graphdef, task, dropout, attention_dropout, optimizer, dtype,
                                       head_input)

  def seeds_step(params, opt_state, batch, base_keys, step, schedule):
    one = lambda p, o, b, k: train_step(p, o, b, jax.random.fold_in(k, step), schedule)
    return jax.vmap(one, in_axes=(0, 0, 1, 0))(params, opt_state, batch, base_keys)

  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  seeds_step = jax.jit(seeds_step, in_shardings=(rep, rep, data, rep, rep, rep),
                       out_shardings=(rep, rep, rep), donate_argnums=(0, 1))
  seeds_predict = jax.jit(jax.vmap(predict, in_axes=(0, None)), in_shardings=(rep, data),
                          out_shardings=rep)
  return optimizer, seeds_step, seeds_predict


def stack_seeds(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """One batch per seed -> one [batch, seed, ...] batch; each seed's batch was cut to its own
  longest row (trim_padding), so the shorter ones are padded back to the longest of them (padding
  is masked: a seed's examples compute what they would alone)."""
  width = max(b["input_ids"].shape[1] for b in batches)
  widen = lambda v: np.pad(v, [(0, 0), (0, width - v.shape[1])]) if v.ndim == 2 else v
  return {k: np.stack([widen(b[k]) for b in batches], axis=1) for k in batches[0]}


def trim_padding(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """Drops the padding columns no row of the batch uses, keeping the length a multiple of
  `multiple` (so a task compiles a few shapes, not one per batch). 0: keep every column."""
  length = batch["input_ids"].shape[1]
  if multiple <= 0:
    return batch
  used = int(batch["attention_mask"].sum(axis=1).max(initial=1))
  keep = min(length, -(-used // multiple) * multiple)
  return {k: v[:, :keep] if v.ndim == 2 and v.shape[1] == length else v for k, v in batch.items()}


def batches(features: dict[str, np.ndarray], batch_size: int, order: np.ndarray | None = None,
             drop_last: bool = True, pad_multiple: int = 0):
  n = len(features["labels"])
  order = np.arange(n) if order is None else order
  stop = n - n % batch_size if drop_last else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    batch = {k: v[idx] for k, v in features.items()}
    if len(idx) < batch_size:  # pad the last eval batch; the padding rows are dropped after
      batch = {k: np.concatenate([v, np.zeros((batch_size - len(idx), *v.shape[1:]), v.dtype)])
               for k, v in batch.items()}
    yield trim_padding(batch, pad_multiple), len(idx)


@dataclasses.dataclass
class RunResult:
  learning_rate: float
  seed: int
  best_epoch: int
  best: dict[str, dict[str, float]]  # dev split -> metrics at the best epoch
  epochs: list[dict[str, dict[str, float]]]


def _steps_per_epoch(task: glue.Task, train: dict[str, np.ndarray], cfg, mesh) -> int:
  parallel.check_batch_size(cfg.batch_size, mesh)
  parallel.check_batch_size(cfg.eval_batch_size, mesh)
  steps = len(train["labels"]) // cfg.batch_size
  if steps == 0:
    raise ValueError(f"{task.name}: {len(train['labels'])} training examples are fewer than one "
                     f"batch of {cfg.batch_size}")
  return steps


def _run_result(task: glue.Task, learning_rate: float, seed: int, epochs: list[dict]) -> RunResult:
  """The run with its best epoch: the first of the highest main score on the first dev split."""
  best_epoch, best_score = -1, -np.inf
  for i, scores in enumerate(epochs):
    if (score := glue.main_score(task, next(iter(scores.values())))) > best_score:
      best_epoch, best_score = i, score
  return RunResult(learning_rate, seed, best_epoch, epochs[best_epoch], epochs)


def _progress(total: int, desc: str) -> tqdm:
  return tqdm(total=total, desc=desc, unit="step", leave=False, disable=jax.process_index() != 0,
              dynamic_ncols=True)


def finetune(encoder: BertEncoder, task: glue.Task, train: dict[str, np.ndarray],
             dev: dict[str, dict[str, np.ndarray]], cfg: ml_collections.ConfigDict, learning_rate: float,
             seed: int, mesh: jax.sharding.Mesh, desc: str = "") -> RunResult:
  """One fine-tuning run; the best epoch is chosen on the first dev split's main score."""
  steps_per_epoch = _steps_per_epoch(task, train, cfg, mesh)
  optimizer, train_step, predict = make_functions(
      encoder.config, task, float(cfg.dropout), float(cfg.attention_dropout), mesh,
      head_input=cfg.get("head_input", "pooler"))
  schedule = schedule_values(mesh, learning_rate, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
  params = {"encoder": get_params(encoder),
            "head": init_head(encoder.config.hidden, task.num_labels, seed,
                              head_bias(task, train["labels"], cfg.regression_bias))}
  # A copy: the step donates its parameters, and the encoder's own arrays must survive this run.
  params = parallel.replicate(mesh, jax.tree.map(jnp.array, params))
  opt_state = parallel.replicate(mesh, optimizer.init(params))
  rng = np.random.default_rng(seed)
  base_key = jax.random.key(seed)
  epochs = []
  bar = _progress(steps_per_epoch * cfg.epochs, desc)
  step = 0
  for _ in range(cfg.epochs):
    for batch, _ in batches(train, cfg.batch_size, rng.permutation(len(train["labels"])),
                             pad_multiple=cfg.pad_multiple):
      params, opt_state, _ = train_step(params, opt_state, parallel.global_batch_from_full(mesh, batch),
                                        jax.random.fold_in(base_key, step), schedule)
      step += 1
      bar.update(1)
    epochs.append({split: glue.compute_metrics(task, predict_all(
        predict, params, features, cfg.eval_batch_size, cfg.pad_multiple, mesh), features["labels"])
                   for split, features in dev.items()})
  bar.close()
  return _run_result(task, learning_rate, seed, epochs)


def finetune_seeds(encoder: BertEncoder, task: glue.Task, train: dict[str, np.ndarray],
                   dev: dict[str, dict[str, np.ndarray]], cfg: ml_collections.ConfigDict,
                   learning_rate: float, seeds: Sequence[int], mesh: jax.sharding.Mesh,
                   desc: str = "") -> list[RunResult]:
  """finetune for every seed, side by side: one compiled step trains each seed's copy on its own
  batch (a vmap over seeds), where an accelerator would run one small, launch-bound step per seed.
  Each seed sees finetune's batches, head and dropout keys; where batches are cut
  (cfg.pad_multiple > 0) dropout draws over the padded width, so a seed's run is finetune's up to
  which units dropout drops (the same run with pad_multiple 0 or without dropout)."""
  steps_per_epoch = _steps_per_epoch(task, train, cfg, mesh)
  optimizer, train_step, predict = make_seed_functions(
      encoder.config, task, float(cfg.dropout), float(cfg.attention_dropout), mesh,
      head_input=cfg.get("head_input", "pooler"))
  schedule = schedule_values(mesh, learning_rate, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
  encoder_params = get_params(encoder)
  bias = head_bias(task, train["labels"], cfg.regression_bias)
  per_seed = [{"encoder": encoder_params, "head": init_head(encoder.config.hidden, task.num_labels, s, bias)}
              for s in seeds]
  params = parallel.replicate(mesh, jax.tree.map(lambda *x: jnp.stack(x), *per_seed))
  opt_state = parallel.replicate(mesh, jax.vmap(optimizer.init)(params))
  base_keys = parallel.replicate(mesh, jnp.stack([jax.random.key(s) for s in seeds]))
  orders = [np.random.default_rng(s) for s in seeds]  # finetune's permutations, seed by seed
  epochs: list[list[dict]] = [[] for _ in seeds]
  bar = _progress(steps_per_epoch * cfg.epochs, desc)
  step = 0
  for _ in range(cfg.epochs):
    streams = [batches(train, cfg.batch_size, r.permutation(len(train["labels"])),
                       pad_multiple=cfg.pad_multiple) for r in orders]
    for together in zip(*streams, strict=True):
      batch = parallel.global_batch_from_full(mesh, stack_seeds([b for b, _ in together]))
      params, opt_state, _ = train_step(params, opt_state, batch, base_keys, step, schedule)
      step += 1
      bar.update(1)
    preds = {split: predict_all(predict, params, features, cfg.eval_batch_size, cfg.pad_multiple, mesh)
             for split, features in dev.items()}  # [seed, example]
    for i, seed_epochs in enumerate(epochs):
      seed_epochs.append({split: glue.compute_metrics(task, p[i], dev[split]["labels"])
                          for split, p in preds.items()})
  bar.close()
  return [_run_result(task, learning_rate, s, e) for s, e in zip(seeds, epochs, strict=True)]


Features = dict[str, np.ndarray]


def task_features(task: glue.Task, splits: dict[str, glue.Examples], tokenizer, seq_len: int,
                  max_train: int, seed: int) -> tuple[Features, dict[str, Features]]:
  """Encoded (train, dev splits) of a task; train cut to a seeded `max_train` subset (0: all)."""
  train = glue.encode(splits["train"], tokenizer, seq_len)
  keep = glue.seeded_subset(len(train["labels"]), max_train, seed)
  train = {k: v[keep] for k, v in train.items()}
  return train, {s: glue.encode(splits[s], tokenizer, seq_len) for s in task.dev_splits}
