"""GLUE fine-tuning of any BERT encoder (teacher, exported student, HF directory).

A freshly initialised head on the pooled [CLS] (classification, or regression for STS-B), AdamW
without weight decay, linear decay from the peak learning rate, dev evaluated every epoch and the
best epoch kept (PAPER_NOTES section 7). Data parallel over the same ('data',) mesh as training.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from autodistil_jax import glue, parallel
from autodistil_jax.model import BertEncoder, get_params


def init_head(hidden: int, num_labels: int, seed: int) -> dict:
  kernel = 0.02 * jax.random.normal(jax.random.key(seed), (hidden, num_labels), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((num_labels,), jnp.float32)}


def make_functions(encoder: BertEncoder, task: glue.Task, optimizer: optax.GradientTransformation,
                   dropout: float, mesh: jax.sharding.Mesh, dtype=jnp.float32):
  """Jitted (train_step, predict) for `encoder` + a head, batch sharded over the mesh."""
  graphdef = nnx.graphdef(encoder)

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
  return train_step, jax.jit(predict, in_shardings=(rep, data), out_shardings=rep)


def _batches(features: dict[str, np.ndarray], batch_size: int, order: np.ndarray | None = None,
             drop_last: bool = True):
  n = len(features["labels"])
  order = np.arange(n) if order is None else order
  stop = n - n % batch_size if drop_last else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    batch = {k: v[idx] for k, v in features.items()}
    if len(idx) < batch_size:  # pad the last eval batch; the padding rows are dropped after
      batch = {k: np.concatenate([v, np.zeros((batch_size - len(idx), *v.shape[1:]), v.dtype)])
               for k, v in batch.items()}
    yield batch, len(idx)


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
  schedule = optax.linear_schedule(learning_rate, 0.0, steps_per_epoch * cfg.epochs)
  optimizer = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
  params = {"encoder": get_params(encoder),
            "head": init_head(encoder.config.hidden, task.num_labels, seed)}
  # A copy: the step donates its parameters, and the encoder's own arrays must survive this run.
  params = parallel.replicate(mesh, jax.tree.map(jnp.array, params))
  opt_state = parallel.replicate(mesh, optimizer.init(params))
  train_step, predict = make_functions(encoder, task, optimizer, cfg.dropout, mesh)
  rng = np.random.default_rng(seed)
  base_key = jax.random.key(seed)
  epochs, best_epoch, best_score = [], -1, -np.inf
  bar = tqdm(total=steps_per_epoch * cfg.epochs, desc=desc, unit="step", leave=False,
             disable=jax.process_index() != 0, dynamic_ncols=True)
  step = 0
  for _ in range(cfg.epochs):
    for batch, _ in _batches(train, cfg.batch_size, rng.permutation(len(train["labels"]))):
      params, opt_state, _ = train_step(params, opt_state, parallel.global_batch_from_full(mesh, batch),
                                        jax.random.fold_in(base_key, step))
      step += 1
      bar.update(1)
    scores = {}
    for split, features in dev.items():
      preds = [np.asarray(predict(params, parallel.global_batch_from_full(mesh, b)))[:n]
               for b, n in _batches(features, cfg.eval_batch_size, drop_last=False)]
      scores[split] = glue.compute_metrics(task, np.concatenate(preds), features["labels"])
    epochs.append(scores)
    score = glue.main_score(task, next(iter(scores.values())))
    if score > best_score:
      best_epoch, best_score = len(epochs) - 1, score
  bar.close()
  return RunResult(learning_rate, seed, best_epoch, epochs[best_epoch], epochs)
