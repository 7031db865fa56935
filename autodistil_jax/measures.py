"""Pure measures of an encoder's quality, on arrays already computed (no model, no I/O but the
pooling config): sentence pooling, zero-shot STS, frozen-feature probes, linear CKA.

The evaluation stage (evaluate.py) computes the arrays; keeping the arithmetic here makes every
measure testable on small hand-made inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

POOLINGS = ("mean", "cls", "max")


def read_pooling(checkpoint_dir: str | os.PathLike) -> str:
  """The pooling a sentence-transformers checkpoint declares (modules.json -> its Pooling
  module's config.json); "mean" when the folder is not a sentence-transformers model."""
  directory = Path(checkpoint_dir)
  modules_file = directory / "modules.json"
  if not modules_file.is_file():
    return "mean"
  try:
    modules = json.loads(modules_file.read_text())
    pooling = [m for m in modules if m.get("type", "").endswith("models.Pooling")]
  except (json.JSONDecodeError, AttributeError, TypeError) as e:
    raise ValueError(f"{modules_file} is not a sentence-transformers module list ({e})") from e
  if not pooling:
    return "mean"
  config_file = directory / pooling[0].get("path", "") / "config.json"
  try:
    config = json.loads(config_file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{config_file}: unreadable pooling config ({e})") from e
  modes = [m for m in POOLINGS if config.get(f"pooling_mode_{m}_tokens" if m != "cls" else
                                             "pooling_mode_cls_token")]
  others = [k for k, v in config.items() if k.startswith("pooling_mode") and v and
            k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")]
  if len(modes) != 1 or others:
    raise ValueError(f"{config_file}: pooling {sorted(k for k, v in config.items() if v is True)} is "
                     f"not one of {POOLINGS}; set config.evaluate.pooling")
  return modes[0]


def pool(hidden: jnp.ndarray, attention_mask: jnp.ndarray, mode: str) -> jnp.ndarray:
  """[B, T, H] final hidden states -> [B, H] sentence embeddings, padding excluded."""
  if mode == "cls":
    return hidden[:, 0]
  mask = attention_mask.astype(hidden.dtype)[..., None]
  if mode == "mean":
    return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
  if mode == "max":
    return jnp.where(mask > 0, hidden, jnp.finfo(hidden.dtype).min).max(1)
  raise ValueError(f"pooling {mode!r} is not one of {POOLINGS}")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of two [N, H] arrays (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return (a * b).sum(-1) / np.maximum(norms, 1e-12)


def zero_shot_sts(emb_a: np.ndarray, emb_b: np.ndarray, gold: np.ndarray) -> dict[str, float]:
  """Spearman and Pearson (x100) of the cosine of each pair's embeddings against the gold score,
  as sentence-transformers' EmbeddingSimilarityEvaluator computes them."""
  from scipy import stats

  sims = cosine(emb_a, emb_b)
  return {"sts_spearman": 100 * float(stats.spearmanr(gold, sims)[0]),
          "sts_pearson": 100 * float(stats.pearsonr(gold, sims)[0])}


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Features of a sentence pair from its two embeddings: (u, v, |u - v|, u * v), as SentEval."""
  return np.concatenate([u, v, np.abs(u - v), u * v], axis=-1)


def probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, task, C: float = 1.0,
          ) -> np.ndarray:
  """Dev predictions of a logistic-regression probe on frozen (standardised) features.

  lbfgs on fixed data is deterministic: the same features give the same predictions. The tight
  tolerance puts the fit at the optimum, so features equal to rounding (a student scored inside
  its SuperLM or extracted) give the same predictions, not two stops on the way there.
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  model = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-7, max_iter=10_000))
  model.fit(np.asarray(train_x, np.float64), train_y)
  return model.predict(np.asarray(dev_x, np.float64))


def linear_cka(sums: dict[str, np.ndarray]) -> float:
  """Linear CKA (Kornblith et al. 2019) of X against Y from accumulated sums over n rows:
  sx = sum x, sy = sum y, xx = X^T X, yy = Y^T Y, yx = Y^T X (so any number of batches, and
  zero columns, as a masked student has, change nothing)."""
  n = float(sums["n"])
  xx = sums["xx"] - np.outer(sums["sx"], sums["sx"]) / n
  yy = sums["yy"] - np.outer(sums["sy"], sums["sy"]) / n
  yx = sums["yx"] - np.outer(sums["sy"], sums["sx"]) / n
  denominator = np.linalg.norm(xx) * np.linalg.norm(yy)
  return float(np.square(yx).sum() / denominator) if denominator > 0 else 0.0
