"""One elastic BERT encoder (Flax NNX) serving as teacher, SuperLM and extracted student.

The forward takes the student architecture as a traced int32 vector [layers, hidden, ffn, heads]:
hidden units past H, FFN units past H*R and heads past A are masked, every LayerNorm normalises
over its first H units, and depth follows the layer mapping floor(i*N/L) over the weights the
model holds. All students of a sub-space therefore share one compiled program. With arch=None the
model runs at its own full size with no masks at all: that is the teacher and a sliced student.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autodistil_jax.search_space import Arch, SubSpace, TeacherShape, layer_map


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Sizes of one encoder. `stored_layers` are teacher layer indices (of `depth`) it holds."""

  vocab_size: int = 30522
  max_position: int = 512
  type_vocab_size: int = 2
  hidden: int = 768
  heads: int = 12
  head_size: int = 64
  ffn: int = 3072
  depth: int = 12
  stored_layers: tuple[int, ...] = tuple(range(12))
  max_layers: int = 12
  ln_eps: float = 1e-12
  pooler: bool = True
  pad_token_id: int = 0

  def __post_init__(self):
    object.__setattr__(self, "stored_layers", tuple(int(i) for i in self.stored_layers))
    if not self.stored_layers or list(self.stored_layers) != sorted(set(self.stored_layers)):
      raise ValueError(f"stored_layers must be sorted, unique and non-empty: {self.stored_layers}")
    if self.stored_layers[-1] >= self.depth:
      raise ValueError(f"stored layer {self.stored_layers[-1]} is past depth {self.depth}")

  @classmethod
  def dense(cls, layers: int, **sizes) -> EncoderConfig:
    """A plain encoder of `layers` layers running all of them (teacher, extracted student)."""
    return cls(depth=layers, stored_layers=tuple(range(layers)), max_layers=layers, **sizes)

  @property
  def is_dense(self) -> bool:
    return self.stored_layers == tuple(range(self.depth)) and self.max_layers == self.depth

  @property
  def qkv_width(self) -> int:
    return self.heads * self.head_size

  @property
  def teacher_shape(self) -> TeacherShape:
    if not self.is_dense:
      raise ValueError("only a dense encoder (a teacher) bounds a search space")
    return TeacherShape(self.depth, self.hidden, self.heads, self.head_size, self.ffn)

  def full_arch(self) -> Arch:
    return Arch(self.max_layers, self.hidden, self.ffn / self.hidden, self.heads)

  def layer_lookup(self) -> np.ndarray:
    """Teacher layer index -> position in this model's stacked weights (-1: not held)."""
    table = np.full((self.depth,), -1, np.int32)
    table[list(self.stored_layers)] = np.arange(len(self.stored_layers), dtype=np.int32)
    return table

  def for_subspace(self, space: SubSpace) -> EncoderConfig:
    """The SuperLM of `space`: its maximum width and only the layers its students map to."""
    space.check_fits(self.teacher_shape)
    return dataclasses.replace(self, hidden=space.hidden[-1], heads=space.heads[-1],
                               ffn=space.max_ffn, stored_layers=space.stored_layers(self.depth),
                               max_layers=space.layers[-1])

  def for_student(self, arch: Arch) -> EncoderConfig:
    """The dense encoder of `arch` at its own full size."""
    return EncoderConfig.dense(
        arch.layers, vocab_size=self.vocab_size, max_position=self.max_position,
        type_vocab_size=self.type_vocab_size, hidden=arch.hidden, heads=arch.heads,
        head_size=self.head_size, ffn=arch.ffn, ln_eps=self.ln_eps, pooler=self.pooler,
        pad_token_id=self.pad_token_id)

  def check_arch(self, arch: Arch) -> None:
    """Raises ValueError if this model cannot run `arch` (too wide, or layers it lacks)."""
    lookup = self.layer_lookup()
    for what, mine, limit in (("hidden", arch.hidden, self.hidden), ("heads", arch.heads, self.heads),
                              ("ffn", arch.ffn, self.ffn), ("layers", arch.layers, self.max_layers)):
      if mine > limit:
        raise ValueError(f"arch {arch.name}: {what}={mine} exceeds this model's {limit}")
    missing = [t for t in (layer_map(i, arch.layers, self.depth) for i in range(arch.layers))
               if lookup[t] < 0]
    if missing:
      raise ValueError(f"arch {arch.name} maps to teacher layers {missing} this model does not hold")


class EncoderOutput(NamedTuple):
  hidden: jax.Array  # [B, T, hidden] final hidden states (units past H are zero)
  pooled: jax.Array | None  # [B, hidden] tanh pooler over [CLS], if the model has one
  query: jax.Array  # [B, T, qkv] the last layer's projections (heads past A are zero)
  key: jax.Array
  value: jax.Array


# Which axis of every parameter is which size: drives slicing (SuperLM init, extraction).
PARAM_AXES: dict[str, dict[str, tuple[str | None, ...]]] = {
    "embeddings": {"word": (None, "hidden"), "position": (None, "hidden"),
                   "token_type": (None, "hidden"), "ln_scale": ("hidden",), "ln_bias": ("hidden",)},
    "layers": {
        "q_kernel": ("layer", "hidden", "qkv"), "q_bias": ("layer", "qkv"),
        "k_kernel": ("layer", "hidden", "qkv"), "k_bias": ("layer", "qkv"),
        "v_kernel": ("layer", "hidden", "qkv"), "v_bias": ("layer", "qkv"),
        "attn_out_kernel": ("layer", "qkv", "hidden"), "attn_out_bias": ("layer", "hidden"),
        "attn_ln_scale": ("layer", "hidden"), "attn_ln_bias": ("layer", "hidden"),
        "ffn_in_kernel": ("layer", "hidden", "ffn"), "ffn_in_bias": ("layer", "ffn"),
        "ffn_out_kernel": ("layer", "ffn", "hidden"), "ffn_out_bias": ("layer", "hidden"),
        "ffn_ln_scale": ("layer", "hidden"), "ffn_ln_bias": ("layer", "hidden"),
    },
    "pooler": {"kernel": ("hidden", "hidden"), "bias": ("hidden",)},
}


def param_shapes(c: EncoderConfig) -> dict[str, dict[str, tuple[int, ...]]]:
  sizes = {"hidden": c.hidden, "qkv": c.qkv_width, "ffn": c.ffn, "layer": len(c.stored_layers)}
  first = {"word": c.vocab_size, "position": c.max_position, "token_type": c.type_vocab_size}
  shapes = {}
  for group, names in PARAM_AXES.items():
    if group == "pooler" and not c.pooler:
      continue
    shapes[group] = {n: tuple(sizes[a] if a else first[n] for a in axes) for n, axes in names.items()}
  return shapes


class _Group(nnx.Module):
  """A named group of parameters, initialised BERT-style (normal 0.02, zero bias, unit scale)."""

  def __init__(self, shapes: dict[str, tuple[int, ...]], rngs: nnx.Rngs):
    for name, shape in shapes.items():
      if name.endswith("bias"):
        value = jnp.zeros(shape, jnp.float32)
      elif name.endswith("scale"):
        value = jnp.ones(shape, jnp.float32)
      else:
        value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
      setattr(self, name, nnx.Param(value))

  def arrays(self) -> dict[str, jax.Array]:
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


# The named scopes (here and in train.py) only label ops in profiles (bench/profile_step.py).
@jax.named_scope("layer_norm")
def _layer_norm(x, scale, bias, eps, mask=None, count=None):
  """LayerNorm in fp32; with a mask, statistics use only the first `count` units.

  Both paths run the same arithmetic (sum times reciprocal), so a masked SuperLM and the dense
  student agree to rounding: zeros past the width add exactly nothing to the sums.
  """
  x = x.astype(jnp.float32)
  if mask is not None:
    x = x * mask
  inv_count = 1.0 / (count if count is not None else x.shape[-1])
  mean = x.sum(-1, keepdims=True) * inv_count
  centred = x - mean if mask is None else (x - mean) * mask
  var = jnp.square(centred).sum(-1, keepdims=True) * inv_count
  y = centred * jax.lax.rsqrt(var + eps) * scale + bias
  return y if mask is None else y * mask


def _dropout(x, rate: float, rng):
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


@jax.named_scope("attention")
def attention(q, k, v, key_mask, dropout_rate: float = 0.0, rng=None):
  """Scaled dot-product attention over [B, T, heads, head_size]; `key_mask` is [B, 1, 1, T].

  Without dropout this is jax.nn.dot_product_attention (the fused path accelerators want). With
  it, the probabilities are spelt out so they can be dropped as BERT's attention_probs_dropout
  does; fine-tuning uses this to train as transformers' BertModel does (tested equal at rate 0).
  """
  if rng is None or dropout_rate == 0.0:
    return jax.nn.dot_product_attention(q, k, v, mask=key_mask)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
  logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
  probs = _dropout(jax.nn.softmax(logits, axis=-1), dropout_rate, rng).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class BertEncoder(nnx.Module):
  """Post-LN BERT encoder with masked dynamic width and mapped depth."""

  def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    shapes = param_shapes(config)
    self.embeddings = _Group(shapes["embeddings"], rngs)
    self.layers = _Group(shapes["layers"], rngs)
    self.pooler = _Group(shapes["pooler"], rngs) if config.pooler else None

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, arch: jax.Array | None = None, *,
               dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
               attention_dropout_rate: float = 0.0, dtype: jnp.dtype = jnp.float32,
               unroll: int | bool = 1) -> EncoderOutput:
    """Encodes a batch; `arch` is [layers, hidden, ffn, heads] (None: full size, no masks).

    Dropout applies only when `dropout_rng` is given: `dropout_rate` on the embeddings and each
    sub-layer's output, `attention_dropout_rate` on the attention probabilities. `dtype` is the
    matmul compute dtype; parameters stay fp32 and LayerNorm runs in fp32. `unroll` is lax.scan's, over layers
    (True unrolls all, which also lets XLA's cost analysis count every layer).
    """
    c = self.config
    if arch is None and not c.is_dense:
      raise ValueError("a SuperLM needs an arch: it holds a subset of layers")
    batch, length = input_ids.shape
    if length > c.max_position:
      raise ValueError(f"sequence length {length} exceeds max_position {c.max_position}")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    keys = (jax.random.split(dropout_rng, c.max_layers + 1) if dropout_rng is not None
            else [None] * (c.max_layers + 1))

    if arch is None:
      hmask = hcount = fmask = head_mask = None
    else:
      arch = jnp.asarray(arch, jnp.int32)
      hcount = arch[1].astype(jnp.float32)
      hmask = (jnp.arange(c.hidden) < arch[1]).astype(jnp.float32)
      fmask = (jnp.arange(c.ffn) < arch[2]).astype(dtype)
      head_mask = (jnp.arange(c.heads) < arch[3]).astype(dtype)

    e = self.embeddings.arrays()
    h = (e["word"][input_ids] + e["position"][jnp.arange(length)][None]
         + e["token_type"][token_type_ids])
    h = _layer_norm(h, e["ln_scale"], e["ln_bias"], c.ln_eps, hmask, hcount)
    h = _dropout(h, dropout_rate, keys[0])
    key_mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, T] over keys

    def layer(h, p, rng):
      r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
      r3 = jax.random.fold_in(rng, 2) if rng is not None else None  # leaves r1, r2 as they were
      x = h.astype(dtype)
      proj = [x @ p[f"{n}_kernel"].astype(dtype) + p[f"{n}_bias"].astype(dtype) for n in "qkv"]
      q, k, v = (t.reshape(batch, length, c.heads, c.head_size) for t in proj)
      ctx = attention(q, k, v, key_mask, attention_dropout_rate, r3)
      if head_mask is not None:
        ctx = ctx * head_mask[:, None]
        q, k, v = (t * head_mask[:, None] for t in (q, k, v))
      ctx = ctx.reshape(batch, length, c.qkv_width)
      attn = ctx @ p["attn_out_kernel"].astype(dtype) + p["attn_out_bias"].astype(dtype)
      h = _layer_norm(h + _dropout(attn, dropout_rate, r1), p["attn_ln_scale"], p["attn_ln_bias"],
                      c.ln_eps, hmask, hcount)
      inter = jax.nn.gelu(h.astype(dtype) @ p["ffn_in_kernel"].astype(dtype)
                          + p["ffn_in_bias"].astype(dtype), approximate=False)
      if fmask is not None:
        inter = inter * fmask
      out = inter @ p["ffn_out_kernel"].astype(dtype) + p["ffn_out_bias"].astype(dtype)
      h = _layer_norm(h + _dropout(out, dropout_rate, r2), p["ffn_ln_scale"], p["ffn_ln_bias"],
                      c.ln_eps, hmask, hcount)
      qkv = tuple(t.reshape(batch, length, c.qkv_width) for t in (q, k, v))
      return h, qkv

    stacked = self.layers.arrays()
    layer_rngs = None if dropout_rng is None else jnp.stack(keys[1:])
    zeros = jnp.zeros((batch, length, c.qkv_width), dtype)
    if arch is None:
      def dense_step(carry, xs):
        h, _ = carry
        p, rng = xs
        return layer(h, p, rng), None
      (h, qkv), _ = jax.lax.scan(dense_step, (h, (zeros,) * 3), (stacked, layer_rngs),
                                    unroll=unroll)
    else:
      steps = jnp.arange(c.max_layers)
      mapped = layer_map(jnp.minimum(steps, arch[0] - 1), arch[0], c.depth)
      positions = jnp.asarray(c.layer_lookup())[mapped]
      gathered = jax.tree.map(lambda w: jnp.take(w, positions, axis=0), stacked)

      def masked_step(carry, xs):
        p, active, rng = xs
        # Layers past L leave the carry as it is, and are not computed (under vmap over archs
        # the cond becomes a select: both sides run, as masking would).
        return jax.lax.cond(active, lambda c: layer(c[0], p, rng), lambda c: c, carry), None
      (h, qkv), _ = jax.lax.scan(masked_step, (h, (zeros,) * 3),
                                 (gathered, steps < arch[0], layer_rngs), unroll=unroll)

    pooled = None
    if self.pooler is not None:
      pp = self.pooler.arrays()
      pooled = jnp.tanh(h[:, 0].astype(dtype) @ pp["kernel"].astype(dtype)
                        + pp["bias"].astype(dtype)).astype(jnp.float32)
      if hmask is not None:
        pooled = pooled * hmask
    return EncoderOutput(h, pooled, *qkv)


def get_params(model: BertEncoder) -> dict:
  """The model's parameters as a nested dict of arrays (group -> name -> array)."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def from_params(config: EncoderConfig, params: dict) -> BertEncoder:
  """Builds a model of `config` holding `params`, checking every name and shape first."""
  expected = param_shapes(config)
  problems = []
  for group, names in expected.items():
    for name, shape in names.items():
      got = params.get(group, {}).get(name)
      if got is None:
        problems.append(f"{group}.{name} is missing")
      elif tuple(got.shape) != shape:
        problems.append(f"{group}.{name} has shape {tuple(got.shape)}, expected {shape}")
  for group, names in params.items():
    for name in names:
      if name not in expected.get(group, {}):
        problems.append(f"{group}.{name} is unexpected")
  if problems:
    raise ValueError("parameters do not fit the encoder config: " + "; ".join(problems))
  abstract = nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def slice_params(params: dict, dst: EncoderConfig, layer_positions: Sequence[int]) -> dict:
  """Leading slices of every matrix to `dst`'s sizes, keeping the stacked layers at the positions
  given (in order). Serves both teacher -> SuperLM initialisation and SuperLM -> student."""
  sizes = {"hidden": dst.hidden, "qkv": dst.qkv_width, "ffn": dst.ffn}
  positions = np.asarray(layer_positions, np.int32)
  out = {}
  for group, names in param_shapes(dst).items():
    out[group] = {}
    for name in names:
      w = params[group][name]
      for axis, kind in enumerate(PARAM_AXES[group][name]):
        if kind == "layer":
          w = jnp.take(w, positions, axis=axis)
        elif kind is not None:
          w = jax.lax.slice_in_dim(w, 0, sizes[kind], axis=axis)
      out[group][name] = w
  return out


def init_superlm(teacher: BertEncoder, space: SubSpace) -> BertEncoder:
  """A SuperLM for `space`, initialised from the teacher's leading slices."""
  cfg = teacher.config.for_subspace(space)
  return from_params(cfg, slice_params(get_params(teacher), cfg, cfg.stored_layers))


def extract_student(model: BertEncoder, arch: Arch) -> BertEncoder:
  """The dense student `arch` sliced out of `model` (a SuperLM or a teacher)."""
  cfg = model.config
  cfg.check_arch(arch)
  lookup = cfg.layer_lookup()
  positions = [int(lookup[layer_map(i, arch.layers, cfg.depth)]) for i in range(arch.layers)]
  student_cfg = cfg.for_student(arch)
  return from_params(student_cfg, slice_params(get_params(model), student_cfg, positions))


def random_student(config: EncoderConfig, arch: Arch, seed: int) -> BertEncoder:
  """The dense student `arch` of an encoder like `config`, randomly initialised (BERT-style)."""
  config.check_arch(arch)
  return BertEncoder(config.for_student(arch), rngs=nnx.Rngs(seed))


def count_params(model_or_params) -> int:
  params = get_params(model_or_params) if isinstance(model_or_params, nnx.Module) else model_or_params
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
