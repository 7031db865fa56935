import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autodistil_jax import distill
from autodistil_jax import model as M
from autodistil_jax import search_space as S


def _batch(vocab, lengths=(20, 11, 4), length=20, seed=0):
  rng = np.random.default_rng(seed)
  mask = (np.arange(length)[None] < np.array(lengths)[:, None]).astype(np.int32)
  ids = np.where(mask, rng.integers(1000, vocab, (len(lengths), length)), 0)
  return jnp.asarray(ids), jnp.asarray(mask)


@pytest.fixture(scope="module")
def superlm(teacher):
  space = S.SubSpace("t", (2, 3, 4, 6), (64, 96, 384), (2.0, 4.0), (7, 10, 12))
  return M.init_superlm(teacher, space), space


@pytest.mark.parametrize("kind", distill.LOSS_KINDS)
def test_zero_loss_when_the_student_is_the_teacher(teacher, superlm, kind):
  sup, _ = superlm
  ids, mask = _batch(teacher.config.vocab_size)
  t_logits = distill.teacher_relations(teacher(ids, mask), teacher.config.heads)
  full = S.Arch(6, 384, 4.0, 12)
  out = sup(ids, mask, arch=full.as_array())
  loss = distill.distill_loss(t_logits, out, full.qkv_width(32), mask, kind)
  assert float(loss) < 1e-9
  small = S.Arch(2, 64, 2.0, 7)
  other = distill.distill_loss(t_logits, sup(ids, mask, arch=small.as_array()), small.qkv_width(32),
                               mask, kind)
  assert float(other) > 1e-4


@pytest.mark.parametrize("kind", distill.LOSS_KINDS)
def test_padding_does_not_change_the_loss(teacher, superlm, kind):
  sup, _ = superlm
  arch = S.Arch(3, 96, 2.0, 10)
  ids, mask = _batch(teacher.config.vocab_size, lengths=(12, 7), length=12)
  padded_ids = jnp.pad(ids, ((0, 0), (0, 9)))
  padded_mask = jnp.pad(mask, ((0, 0), (0, 9)))

  def loss(i, m):
    t = distill.teacher_relations(teacher(i, m), 12)
    return distill.distill_loss(t, sup(i, m, arch=arch.as_array()), arch.qkv_width(32), m, kind)
  np.testing.assert_allclose(loss(ids, mask), loss(padded_ids, padded_mask), rtol=2e-5)


def test_split_gathers_active_units_into_padded_heads():
  x = jnp.arange(2 * 3 * 40, dtype=jnp.float32).reshape(2, 3, 40)
  split, size = distill.split_relation_heads(x, jnp.int32(26), 4)  # head size 6, 2 units dropped
  assert split.shape == (2, 3, 4, 10) and int(size) == 6
  np.testing.assert_array_equal(split[..., :6], x[..., :24].reshape(2, 3, 4, 6))
  assert not jnp.any(split[..., 6:])


def test_gradients_are_finite_for_every_sampled_arch(teacher, superlm):
  sup, space = superlm
  ids, mask = _batch(teacher.config.vocab_size)
  t_logits = distill.teacher_relations(teacher(ids, mask), 12)
  from flax import nnx
  graphdef, params = nnx.graphdef(sup), M.get_params(sup)

  @jax.jit
  def grad(params, arch, key):
    def loss(p):
      out = nnx.merge(graphdef, p)(ids, mask, arch=arch, dropout_rate=0.1, dropout_rng=key)
      return distill.distill_loss(t_logits, out, arch[3] * 32, mask, "mse")
    return jax.value_and_grad(loss)(params)
  for step in range(4):
    for i, arch in enumerate(S.sandwich_sample(space, seed=0, step=step)):
      value, g = grad(params, jnp.asarray(arch.as_array()), jax.random.key(step * 4 + i))
      assert np.isfinite(float(value)) and float(value) > 0, arch
      assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g)), arch
      assert float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(g))) > 0, arch
  assert grad._cache_size() == 1


def test_unknown_loss_kind_is_an_error():
  t = jnp.zeros((1, 2, 3, 3))
  with pytest.raises(ValueError, match="unknown distillation loss 'l1'"):
    distill.relation_loss(t, t, jnp.ones((1, 3)), "l1")


def test_the_papers_relations_leave_the_last_layers_output_untrained_and_the_hidden_term_reaches_it(
    teacher, superlm):
  """Q/K/V of the last layer come from its input: its attention output, FFN and LayerNorms, out of
  which the final hidden states (and sentence embeddings) come, get exactly no gradient."""
  from flax import nnx

  sup, _ = superlm
  ids, mask = _batch(teacher.config.vocab_size)
  arch = S.Arch(6, 96, 2.0, 10)  # its last layer is the teacher's layer 5
  last = sup.config.layer_lookup()[S.layer_map(5, 6, sup.config.depth)]
  graphdef, params = nnx.graphdef(sup), M.get_params(sup)

  def grads(hidden, embedding=0.0):
    t_logits = distill.teacher_relations(teacher(ids, mask), 12, hidden > 0, mask if embedding else None)
    def loss(p):
      out = nnx.merge(graphdef, p)(ids, mask, arch=jnp.asarray(arch.as_array()))
      return distill.distill_loss(t_logits, out, arch.qkv_width(32), mask, "mse", arch.hidden, hidden,
                                  embedding)
    return jax.grad(loss)(params)["layers"]
  output_side = ("attn_out_kernel", "attn_ln_scale", "ffn_in_kernel", "ffn_out_kernel", "ffn_ln_scale")
  paper, with_hidden, with_embedding = grads(0.0), grads(1.0), grads(0.0, 1.0)
  for name in output_side:
    assert not jnp.any(paper[name][last]), name
    assert float(jnp.abs(with_hidden[name][last]).sum()) > 0, name
    assert float(jnp.abs(with_embedding[name][last]).sum()) > 0, name
  # The student equal to the teacher still has zero loss with both extra terms.
  full = S.Arch(6, 384, 4.0, 12)
  t_logits = distill.teacher_relations(teacher(ids, mask), 12, hidden=True, embedding_mask=mask)
  out = sup(ids, mask, arch=full.as_array())
  assert float(distill.distill_loss(t_logits, out, full.qkv_width(32), mask, "mse", 384, 1.0, 1.0)) < 1e-9


def test_embedding_similarities_are_cosines_of_mean_pooled_embeddings_over_real_tokens(teacher):
  ids, mask = _batch(teacher.config.vocab_size)
  hidden = np.asarray(teacher(ids, mask).hidden)
  pooled = [hidden[i, :int(n)].mean(0) for i, n in enumerate(np.asarray(mask).sum(1))]
  unit = np.stack([p / np.linalg.norm(p) for p in pooled])
  np.testing.assert_allclose(distill.embedding_similarities(jnp.asarray(hidden), mask), unit @ unit.T,
                             atol=1e-5)
  # Zeros past a student's width change nothing: a narrow output padded to any width compares.
  padded = np.concatenate([hidden[..., :96], np.zeros_like(hidden[..., 96:])], -1)
  np.testing.assert_allclose(distill.embedding_similarities(jnp.asarray(padded), mask),
                             distill.embedding_similarities(jnp.asarray(hidden[..., :96]), mask), atol=1e-6)


def test_teacher_relations_equal_ones_computed_by_hand_from_transformers(teacher, teacher_dir):
  """The targets themselves: softmax(X_r X_r^T / sqrt(d_r)) of the last layer's Q, K and V, taken
  from transformers' own BertModel (hooks on its projections) and computed here in numpy, for a
  real sentence padded inside a batch beside a longer one."""
  import torch
  from transformers import AutoTokenizer, BertModel

  tok = AutoTokenizer.from_pretrained(teacher_dir)
  texts = ["Relation targets are checked by hand.", "A longer second sentence pads the first one out."]
  enc = tok(texts, padding=True, return_tensors="np")
  reference = BertModel.from_pretrained(teacher_dir, attn_implementation="eager").eval()
  captured = {}
  attention = reference.encoder.layer[-1].attention.self
  for name in ("query", "key", "value"):
    getattr(attention, name).register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().numpy()))
  with torch.no_grad():
    reference(**{k: torch.as_tensor(v) for k, v in enc.items()})
  out = teacher(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                jnp.asarray(enc["token_type_ids"]))
  ours = distill.teacher_relations(out, teacher.config.heads)
  n = int(enc["attention_mask"][0].sum())  # the first sentence's real tokens
  heads = teacher.config.heads
  for name, logits in zip(("query", "key", "value"), ours, strict=True):
    x = captured[name][0, :n].reshape(n, heads, -1).transpose(1, 0, 2)  # [heads, T, d_r]
    scores = x @ x.transpose(0, 2, 1) / np.sqrt(x.shape[-1])
    by_hand = np.exp(scores - scores.max(-1, keepdims=True))
    by_hand /= by_hand.sum(-1, keepdims=True)
    # Ours over the same real tokens; the padded keys are what relation_loss masks out.
    mine = jax.nn.softmax(logits[0, :, :n, :n], axis=-1)
    np.testing.assert_allclose(np.asarray(mine), by_hand, atol=2e-5)
