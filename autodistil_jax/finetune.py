"""GLUE fine-tuning of any BERT encoder (teacher, exported student, HF directory).

A freshly initialised head on the pooled [CLS] (classification, or regression for STS-B), AdamW
without weight decay, linear decay from the peak learning rate, dev evaluated every epoch and the
best epoch kept (PAPER_NOTES section 7). Data parallel over the same ('data',) mesh as training.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from autodistil_jax import glue, parallel
from autodistil_jax.model import BertEncoder, EncoderConfig, get_params


def init_head(hidden: int, num_labels: int, seed: int) -> dict:
  kernel = 0.02 * jax.random.normal(jax.random.key(seed), (hidden, num_labels), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((num_labels,), jnp.float32)}


def make_optimizer(learning_rate: float, total_steps: int) -> optax.GradientTransformation:
  """AdamW without weight decay, linear decay from the peak to zero over the run."""
  return optax.adamw(optax.linear_schedule(learning_rate, 0.0, total_steps), b1=0.9, b2=0.999,
                     eps=1e-8, weight_decay=0.0)


@functools.lru_cache(maxsize=64)
def make_functions(encoder_config: EncoderConfig, task: glue.Task, learning_rate: float, total_steps: int,
                   dropout: float, mesh: jax.sharding.Mesh, dtype=jnp.float32):
  """Jitted (train_step, predict) for an encoder of `encoder_config` + a head, batch sharded over
  the mesh. Cached: every seed, and every model of the same architecture (a searched student and
  its baselines), reuses one compilation per input shape."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: BertEncoder(encoder_config, rngs=nnx.Rngs(0))))
  optimizer = make_optimizer(learning_rate, total_steps)

  def logits_fn(params, batch, rng):
    out = nnx.merge(graphdef, params["encoder"])(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
        dropout_rate=dropout, dropout_rng=rng, dtype=dtype)
    pooled = out.pooled if out.pooled is not None else out.hidden[:, 0]
    if rng is not None:
      pooled = jnp.where(jax.random.bernoulli(jax.random.fold_in(rng, 1), 1 - dropout, pooled.shape),
                         pooled / (1 - dropout), 0.0)
    return pooled @ params["head"]["kernel"] + params["head"]["bias"]

  def loss_fn(params, batch, rng):
    logits = logits_fn(params, batch, rng)
    if task.is_regression:
      return jnp.mean(jnp.square(logits[:, 0] - batch["labels"]))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))

  def train_step(params, opt_state, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def predict(params, batch):
    logits = logits_fn(params, batch, None)
    return logits[:, 0] if task.is_regression else jnp.argmax(logits, -1)

  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  train_step = jax.jit(train_step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep, rep),
                       donate_argnums=(0, 1))
  return optimizer, train_step, jax.jit(predict, in_shardings=(rep, data), out_shardings=rep)


def trim_padding(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """Drops the padding columns no row of the batch uses, keeping the length a multiple of
  `multiple` (so a task compiles a few shapes, not one per batch). 0: keep every column."""
  length = batch["input_ids"].shape[1]
  if multiple <= 0:
    return batch
  used = int(batch["attention_mask"].sum(axis=1).max(initial=1))
  keep = min(length, -(-used // multiple) * multiple)
  return {k: v[:, :keep] if v.ndim == 2 and v.shape[1] == length else v for k, v in batch.items()}


def _batches(features: dict[str, np.ndarray], batch_size: int, order: np.ndarray | None = None,
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


def finetune(encoder: BertEncoder, task: glue.Task, train: dict[str, np.ndarray],
             dev: dict[str, dict[str, np.ndarray]], cfg: ml_collections.ConfigDict, learning_rate: float,
             seed: int, mesh: jax.sharding.Mesh, desc: str = "") -> RunResult:
  """One fine-tuning run; the best epoch is chosen on the first dev split's main score."""
  parallel.check_batch_size(cfg.batch_size, mesh)
  parallel.check_batch_size(cfg.eval_batch_size, mesh)
  steps_per_epoch = len(train["labels"]) // cfg.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{task.name}: {len(train['labels'])} training examples are fewer than one "
                     f"batch of {cfg.batch_size}")
  optimizer, train_step, predict = make_functions(encoder.config, task, float(learning_rate),
                                                  steps_per_epoch * cfg.epochs, float(cfg.dropout), mesh)
  params = {"encoder": get_params(encoder),
            "head": init_head(encoder.config.hidden, task.num_labels, seed)}
  # A copy: the step donates its parameters, and the encoder's own arrays must survive this run.
  params = parallel.replicate(mesh, jax.tree.map(jnp.array, params))
  opt_state = parallel.replicate(mesh, optimizer.init(params))
  rng = np.random.default_rng(seed)
  base_key = jax.random.key(seed)
  epochs, best_epoch, best_score = [], -1, -np.inf
  bar = tqdm(total=steps_per_epoch * cfg.epochs, desc=desc, unit="step", leave=False,
             disable=jax.process_index() != 0, dynamic_ncols=True)
  step = 0
  for _ in range(cfg.epochs):
    for batch, _ in _batches(train, cfg.batch_size, rng.permutation(len(train["labels"])),
                             pad_multiple=cfg.pad_multiple):
      params, opt_state, _ = train_step(params, opt_state, parallel.global_batch_from_full(mesh, batch),
                                        jax.random.fold_in(base_key, step))
      step += 1
      bar.update(1)
    scores = {}
    for split, features in dev.items():
      preds = [np.asarray(predict(params, parallel.global_batch_from_full(mesh, b)))[:n]
               for b, n in _batches(features, cfg.eval_batch_size, drop_last=False,
                                         pad_multiple=cfg.pad_multiple)]
      scores[split] = glue.compute_metrics(task, np.concatenate(preds), features["labels"])
    epochs.append(scores)
    score = glue.main_score(task, next(iter(scores.values())))
    if score > best_score:
      best_epoch, best_score = len(epochs) - 1, score
  bar.close()
  return RunResult(learning_rate, seed, best_epoch, epochs[best_epoch], epochs)
