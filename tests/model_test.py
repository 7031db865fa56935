import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autodistil_jax import model as M
from autodistil_jax import search_space as S


def _subspaces(teacher):
  return {n: S.derive_subspace(s, teacher.config.teacher_shape) for n, s in S.PAPER_SUBSPACES.items()}


def _padded_batch(vocab, batch=3, length=24, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, vocab, (batch, length))
  lengths = np.array([length, length // 2, 5])[:batch]
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask, ids, 0)
  types = (np.arange(length)[None] >= lengths[:, None] // 2).astype(np.int32) * mask
  return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


def _jitted_forward(model):
  graphdef, state = nnx.split(model)
  traces = []

  @jax.jit
  def forward(state, ids, mask, types, arch):
    traces.append(1)  # runs only while tracing
    return nnx.merge(graphdef, state)(ids, mask, types, arch)
  return (lambda *args: forward(state, *args)), traces


def test_superlm_holds_only_its_subspace(teacher):
  space = S.PAPER_SUBSPACES["tiny"]
  cfg = M.EncoderConfig().for_subspace(space)
  assert (cfg.hidden, cfg.heads, cfg.ffn, cfg.max_layers) == (224, 10, 784, 7)
  demo_tiny = _subspaces(teacher)["tiny"]
  sup = M.init_superlm(teacher, demo_tiny)
  assert sup.config.stored_layers == (0, 1, 2, 3, 4) and sup.config.max_layers == 4
  assert sup.layers.q_kernel.shape == (5, 112, 320)
  # Initialised from the teacher's leading slices, layers picked by teacher index.
  np.testing.assert_array_equal(sup.layers.ffn_in_kernel[3], teacher.layers.ffn_in_kernel[3][:112, :392])


# base in the default run; tiny and small (about 50 s each on 2 cores) in the slow step.
@pytest.mark.parametrize("name", [pytest.param("tiny", marks=pytest.mark.slow),
                                  pytest.param("small", marks=pytest.mark.slow), "base"])
def test_extracted_student_equals_masked_superlm(teacher, name):
  space = _subspaces(teacher)[name]
  sup = M.init_superlm(teacher, space)
  # Perturb every weight a little, as training would, so no slice equals another by accident.
  leaves, treedef = jax.tree.flatten(M.get_params(sup))
  keys = jax.random.split(jax.random.key(1), len(leaves))
  sup = M.from_params(sup.config, jax.tree.unflatten(
      treedef, [w * (1 + 0.01 * jax.random.normal(k, w.shape)) for w, k in zip(leaves, keys, strict=True)]))
  forward, traces = _jitted_forward(sup)
  ids, mask, types = _padded_batch(teacher.config.vocab_size)
  rng = np.random.default_rng(7)
  archs = [space.largest, space.smallest] + [
      space.enumerate()[i] for i in rng.choice(len(space), 18, replace=False)]
  worst = 0.0
  for arch in archs:
    masked = forward(ids, mask, types, arch.as_array())
    student = M.extract_student(sup, arch)
    dense = jax.jit(lambda s, *a: s(*a))(student, ids, mask, types)
    H, D = arch.hidden, arch.qkv_width(sup.config.head_size)
    assert dense.hidden.shape == (3, 24, H)
    for got, want in ((masked.hidden[..., :H], dense.hidden), (masked.pooled[:, :H], dense.pooled),
                      (masked.query[..., :D], dense.query), (masked.key[..., :D], dense.key),
                      (masked.value[..., :D], dense.value)):
      worst = max(worst, float(jnp.abs(got - want).max()))
      # fp32 GEMMs of different output widths round their tail columns differently (measured:
      # up to ~6 ulps on pre-LayerNorm values near 100), so allow 1e-5 relative on top of 1e-5.
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Units past the student's width are exactly zero in the SuperLM's outputs.
    assert not jnp.any(masked.hidden[..., H:]) and not jnp.any(masked.query[..., D:])
    assert M.count_params(student) == S.exact_params(
        arch, sup.config.head_size, S.Vocab(30522, 512, 2), pooler=True)
  print(f"{name}: max |dense - masked| over {len(archs)} archs = {worst:.2e}")
  assert len(traces) == 1, "the SuperLM forward must compile once for all students"


def test_teacher_is_the_superlm_at_full_size(teacher):
  """The masked path at the teacher's own size equals the dense path."""
  ids, mask, types = _padded_batch(teacher.config.vocab_size)
  dense = teacher(ids, mask, types)
  masked = teacher(ids, mask, types, arch=teacher.config.full_arch().as_array())
  assert float(jnp.abs(dense.hidden - masked.hidden).max()) <= 1e-5
  student = M.extract_student(teacher, teacher.config.full_arch())
  assert float(jnp.abs(student(ids, mask, types).hidden - dense.hidden).max()) == 0.0


def test_padding_does_not_change_real_positions(teacher):
  ids, mask, types = _padded_batch(teacher.config.vocab_size)
  out = teacher(ids, mask, types).hidden
  short = teacher(ids[2:, :5], mask[2:, :5], types[2:, :5]).hidden
  assert float(jnp.abs(out[2, :5] - short[0]).max()) <= 1e-5


@pytest.mark.parametrize("arch", [S.Arch(2, 64, 2.0, 7), S.Arch(4, 112, 3.5, 10),
                                  S.Arch(6, 320, 4.0, 12), S.Arch(7, 160, 3.5, 10)])
def test_exact_flops_agree_with_xla_cost_analysis(arch):
  head_size = 64 if arch.layers == 7 else 32
  cfg = M.EncoderConfig(vocab_size=30522).for_student(arch)
  cfg = dataclasses.replace(cfg, head_size=head_size)
  model = M.BertEncoder(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  ids = jnp.zeros((1, 128), jnp.int32)
  compiled = jax.jit(lambda s, i: nnx.merge(graphdef, s)(i, i, unroll=True)).lower(state, ids).compile()
  xla = compiled.cost_analysis()["flops"]
  ours = S.exact_flops(arch, 128, head_size)
  assert abs(ours / xla - 1) <= 0.05, (ours, xla)


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32(teacher):
  ids, mask, types = _padded_batch(teacher.config.vocab_size)
  full = teacher(ids, mask, types).hidden
  half = teacher(ids, mask, types, dtype=jnp.bfloat16).hidden
  assert half.dtype == jnp.float32 and teacher.layers.q_kernel.dtype == jnp.float32
  assert float(jnp.abs(full - half).mean()) < 0.05


def test_dropout_is_active_only_with_a_key(teacher):
  ids, mask, types = _padded_batch(teacher.config.vocab_size)
  a = teacher(ids, mask, types, dropout_rate=0.1).hidden
  b = teacher(ids, mask, types, dropout_rate=0.1, dropout_rng=jax.random.key(0)).hidden
  c = teacher(ids, mask, types, dropout_rate=0.1, dropout_rng=jax.random.key(0)).hidden
  assert float(jnp.abs(a - b).max()) > 1e-2 and float(jnp.abs(b - c).max()) == 0.0


def test_spelt_out_attention_is_the_fused_one_and_its_dropout_is_unbiased():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 3, 8)), jnp.float32) for _ in range(3))
  key_mask = jnp.asarray(np.arange(7)[None] < np.array([7, 4])[:, None])[:, None, None, :]
  fused = jax.nn.dot_product_attention(q, k, v, mask=key_mask)
  np.testing.assert_array_equal(M.attention(q, k, v, key_mask, 0.1), fused)  # no key: fused
  # A vanishing rate keeps every probability: the spelt-out path's masking and scaling are exact.
  spelt = M.attention(q, k, v, key_mask, 1e-9, jax.random.key(0))
  np.testing.assert_allclose(spelt, fused, atol=1e-6)
  dropped = jax.vmap(lambda key: M.attention(q, k, v, key_mask, 0.3, key))(
      jax.random.split(jax.random.key(1), 4000))
  assert float(jnp.abs(dropped[0] - fused).max()) > 0.1  # some probabilities were dropped
  np.testing.assert_allclose(dropped.mean(0), fused, atol=0.05)  # and the rest rescaled
  # Padding keys get no weight with or without dropout: changing their values changes nothing.
  v2 = v.at[1, 4:].set(100.0)
  np.testing.assert_array_equal(M.attention(q, k, v2, key_mask, 0.3, jax.random.key(2))[1],
                                M.attention(q, k, v, key_mask, 0.3, jax.random.key(2))[1])


def test_attention_dropout_is_separate_from_hidden_dropout(teacher):
  ids, mask, types = _padded_batch(teacher.config.vocab_size)
  key = jax.random.key(0)
  hidden_only = teacher(ids, mask, types, dropout_rate=0.1, dropout_rng=key).hidden
  both = teacher(ids, mask, types, dropout_rate=0.1, attention_dropout_rate=0.1, dropout_rng=key).hidden
  attention_only = teacher(ids, mask, types, attention_dropout_rate=0.1, dropout_rng=key).hidden
  plain = teacher(ids, mask, types).hidden
  assert float(jnp.abs(both - hidden_only).max()) > 1e-2
  assert float(jnp.abs(attention_only - plain).max()) > 1e-2


def test_bad_arch_or_params_are_named(teacher):
  sup = M.init_superlm(teacher, _subspaces(teacher)["tiny"])
  with pytest.raises(ValueError, match="hidden=384 exceeds this model's 112"):
    M.extract_student(sup, S.Arch(2, 384, 2.0, 7))
  with pytest.raises(ValueError, match="layers=6 exceeds this model's 4"):
    M.extract_student(sup, S.Arch(6, 64, 2.0, 7))
  gappy = M.init_superlm(teacher, S.SubSpace("gappy", (2, 4), (64,), (2.0,), (7,)))
  with pytest.raises(ValueError, match=r"maps to teacher layers \[2\] this model does not hold"):
    M.extract_student(gappy, S.Arch(3, 64, 2.0, 7))
  params = M.get_params(sup)
  params["layers"]["q_bias"] = params["layers"]["q_bias"][:, :3]
  with pytest.raises(ValueError, match=r"layers.q_bias has shape \(5, 3\), expected \(5, 320\)"):
    M.from_params(sup.config, params)
  with pytest.raises(ValueError, match="SuperLM needs an arch"):
    sup(jnp.zeros((1, 4), jnp.int32))
