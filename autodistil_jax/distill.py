"""Task-agnostic objective: self-attention relation distillation (MiniLMv2 style, docs/paper.md §3).

For each of Q, K and V of the last layer, the concatenated heads are split into the teacher's
number of relation heads; the relation is softmax(X X^T / sqrt(d_r)) over keys. The student's
relation head size depends on its (traced) head count, so its active units are gathered into a
padded [relation heads, max head size] layout: one relation's worth of work, whatever the arch.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from autodistil_jax.model import EncoderOutput

LossKind = Literal["mse", "kl", "raw_mse"]
LOSS_KINDS = ("mse", "kl", "raw_mse")


def split_relation_heads(x: jax.Array, width: jax.Array | int, num_heads: int) -> tuple[jax.Array, jax.Array]:
  """[B, T, D] with `width` active units -> ([B, T, heads, D // heads], head size).

  Head r takes units [r*d, (r+1)*d) with d = width // heads (a remainder is dropped, as in the
  authors' code); units past d in each head are zero.
  """
  max_size = x.shape[-1] // num_heads
  size = jnp.asarray(width, jnp.int32) // num_heads
  offsets = jnp.arange(num_heads)[:, None] * size + jnp.arange(max_size)[None, :]
  valid = jnp.arange(max_size)[None, :] < size
  gathered = jnp.take(x, jnp.where(valid, offsets, 0), axis=-1)  # [B, T, heads, max_size]
  return jnp.where(valid, gathered, jnp.zeros((), x.dtype)), size


def relation_logits(x: jax.Array, head_size: jax.Array) -> jax.Array:
  """Scaled dot products X X^T / sqrt(d_r) per relation head: [B, heads, T, T] in fp32."""
  x = x.astype(jnp.float32)
  return jnp.einsum("bqhd,bkhd->bhqk", x, x) / jnp.sqrt(head_size.astype(jnp.float32))


def relation_loss(teacher_logits: jax.Array, student_logits: jax.Array, attention_mask: jax.Array,
                  kind: LossKind = "mse") -> jax.Array:
  """One relation's loss between teacher and student logits, padded queries and keys excluded."""
  valid = attention_mask.astype(bool)
  key_valid = valid[:, None, None, :]
  pair_valid = key_valid & valid[:, None, :, None]
  num_heads = teacher_logits.shape[1]
  if kind == "raw_mse":
    sq = jnp.square(teacher_logits - student_logits)
    return jnp.sum(jnp.where(pair_valid, sq, 0.0)) / (num_heads * _num_pairs(valid))
  neg = jnp.finfo(jnp.float32).min
  log_t = jax.nn.log_softmax(jnp.where(key_valid, teacher_logits, neg), axis=-1)
  log_s = jax.nn.log_softmax(jnp.where(key_valid, student_logits, neg), axis=-1)
  if kind == "mse":
    sq = jnp.square(jnp.exp(log_t) - jnp.exp(log_s))
    return jnp.sum(jnp.where(pair_valid, sq, 0.0)) / (num_heads * _num_pairs(valid))
  if kind == "kl":
    kl = jnp.where(pair_valid, jnp.exp(log_t) * (log_t - log_s), 0.0)
    return jnp.sum(kl) / (num_heads * jnp.maximum(valid.sum(), 1))
  raise ValueError(f"unknown distillation loss {kind!r}; choose one of {LOSS_KINDS}")


def _num_pairs(valid: jax.Array) -> jax.Array:
  per_example = valid.sum(-1).astype(jnp.float32)
  return jnp.maximum(jnp.sum(per_example * per_example), 1.0)


def embedding_similarities(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """[B, B] cosine similarities of the batch's mean-pooled sentence embeddings (fp32): what a
  sentence encoder is used for (zero-shot STS-B scores exactly these). Units past a student's
  width are zero in the masked model's output, so any width compares with the teacher's."""
  mask = attention_mask.astype(jnp.float32)[..., None]
  pooled = (hidden.astype(jnp.float32) * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
  unit = pooled * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(pooled), -1, keepdims=True), 1e-12))
  return unit @ unit.T


def teacher_relations(teacher_out: EncoderOutput, num_heads: int, hidden: bool = False,
                      embedding_mask: jax.Array | None = None) -> tuple[jax.Array, ...]:
  """The teacher's Q-Q, K-K, V-V relation logits (computed once per batch); then, with `hidden`,
  the H-H relation of the last layer's output; then, given the batch's attention mask, the
  sentence-embedding similarities (embedding_similarities)."""
  xs = [teacher_out.query, teacher_out.key, teacher_out.value]
  widths = [teacher_out.query.shape[-1]] * 3
  if hidden:
    xs.append(teacher_out.hidden)
    widths.append(teacher_out.hidden.shape[-1])
  out = []
  for x, width in zip(xs, widths, strict=True):
    split, size = split_relation_heads(x, width, num_heads)
    out.append(relation_logits(split, size))
  if embedding_mask is not None:
    out.append(embedding_similarities(teacher_out.hidden, embedding_mask))
  return tuple(out)


def distill_loss(teacher_logits: tuple[jax.Array, ...], student_out: EncoderOutput,
                 student_qkv_width: jax.Array | int, attention_mask: jax.Array,
                 kind: LossKind = "mse", student_hidden: jax.Array | int | None = None,
                 hidden_weight: float = 0.0, embedding_weight: float = 0.0) -> jax.Array:
  """Sum over Q-Q, K-K and V-V (weights 1) of the relation loss against the teacher's, plus
  `hidden_weight` times the H-H relation's and `embedding_weight` times the mean squared
  difference of the sentence-embedding similarities, each taken from the teacher's tuple in that
  order when its weight is positive (teacher_relations made with the same terms).

  The paper's three relations all come from the last layer's input: the last layer's attention
  output, FFN and LayerNorms (what the final hidden states, and so the sentence embeddings, come
  out of) get no gradient from them at all (tests/distill_test.py). The H-H term reaches them.
  """
  num_heads = teacher_logits[0].shape[1]
  total = jnp.zeros((), jnp.float32)
  for t_logits, x in zip(teacher_logits[:3], (student_out.query, student_out.key, student_out.value),
                         strict=True):
    split, size = split_relation_heads(x, student_qkv_width, num_heads)
    total = total + relation_loss(t_logits, relation_logits(split, size), attention_mask, kind)
  extra = list(teacher_logits[3:])
  if hidden_weight > 0:
    split, size = split_relation_heads(student_out.hidden, student_hidden, num_heads)
    total = total + hidden_weight * relation_loss(extra.pop(0), relation_logits(split, size),
                                                  attention_mask, kind)
  if embedding_weight > 0:
    similarities = embedding_similarities(student_out.hidden, attention_mask)
    total = total + embedding_weight * jnp.mean(jnp.square(extra.pop(0) - similarities))
  return total
