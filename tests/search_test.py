import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autodistil_jax import distill, search
from autodistil_jax import model as M
from autodistil_jax import search_space as S


@pytest.fixture(scope="module")
def setup(teacher):
  space = S.SubSpace("t", (2, 3), (64, 96), (2.0, 3.0), (4, 7))
  sup = M.init_superlm(teacher, space)
  rng = np.random.default_rng(0)
  batches = []
  for lengths in ((24, 17, 9, 24), (24, 24, 3, 12)):
    mask = (np.arange(24)[None] < np.array(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask, rng.integers(1000, 30000, (4, 24)), 0)
    batches.append({"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
                    "token_type_ids": jnp.zeros((4, 24), jnp.int32)})
  relations = search.make_teacher_relations(teacher)
  logits = [relations(M.get_params(teacher), b) for b in batches]
  return sup, space, batches, logits


def test_evaluator_equals_training_loss_and_compiles_once(setup):
  sup, space, batches, logits = setup
  archs = space.enumerate()
  assert len(archs) == 16
  evaluator = search.make_evaluator(sup)
  params = M.get_params(sup)
  scores = search.score_students(evaluator, params, logits, batches, archs, chunk=5)  # 5+5+5+1(padded)
  assert evaluator._cache_size() == 1
  graphdef = nnx.graphdef(sup)
  for arch, score in zip(archs[::3], scores[::3], strict=True):
    per_batch = []
    for b, t in zip(batches, logits, strict=True):
      out = nnx.merge(graphdef, params)(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                                        jnp.asarray(arch.as_array()))
      per_batch.append(distill.distill_loss(t, out, arch.qkv_width(32), b["attention_mask"], "mse"))
    np.testing.assert_allclose(score, np.mean(per_batch), rtol=1e-5)
  again = search.score_students(evaluator, params, logits, batches, archs, chunk=5)
  np.testing.assert_array_equal(scores, again)


def _rows():
  return [{"subspace": "a", "name": n, "flops": f, "params": p, "loss": loss}
          for n, f, p, loss in [("x", 1.0, 10, 0.9), ("y", 2.0, 20, 0.5), ("z", 3.0, 15, 0.7),
                                ("w", 4.0, 40, 0.2), ("v", 2.0, 25, 0.6)]]


def test_pareto_front_keeps_only_undominated_students():
  assert [r["name"] for r in search.pareto_front(_rows())] == ["x", "y", "w"]


def test_proxy_selection_picks_the_best_score_ties_to_the_lower_loss_and_never_a_diverged_one():
  rows = [{**r, "proxy_score": s} for r, s in zip(_rows(), [0.7, 0.8, 0.8, float("nan"), 0.9], strict=True)]
  assert [r["name"] for r in search.pareto_front(rows, selection="proxy")] == ["x", "v"]
  teacher = {"flops": 8.0, "params": 100, "paper_flops": 4.0}
  budgets = [search.parse_budget(b, teacher) for b in ("flops<=0.3*teacher", "params<=24", "flops<=4")]
  chosen = search.select(rows, budgets, selection="proxy")
  assert chosen["flops<=0.3*teacher"]["name"] == "v"  # 0.9 beats the two 0.8s
  assert chosen["params<=24"]["name"] == "y"  # y and z tie at 0.8: y has the lower loss
  assert chosen["flops<=4"]["name"] == "v"  # w (NaN: it diverged) is never chosen
  assert search.select(rows, budgets)["flops<=4"]["name"] == "w"  # the agnostic search still can
  del rows[4]["proxy_score"]  # v not scored (the proxy search ran on a sample): never chosen by it
  assert search.select(rows, budgets, selection="proxy")["flops<=4"]["name"] == "y"
  assert search.check_selection("proxy", True) == "proxy"
  with pytest.raises(ValueError, match="selection='proxy' needs the proxy search"):
    search.check_selection("proxy", False)
  with pytest.raises(ValueError, match="must be one of"):
    search.check_selection("task", True)


def test_a_non_finite_held_out_loss_stops_the_selection_naming_the_students():
  rows = _rows()
  rows[2]["loss"] = float("nan")
  with pytest.raises(ValueError, match=r"1 student\(s\) with a non-finite held-out loss \(z@a\).*redo=train"):
    search.select(rows, [search.parse_budget("flops<=4", {})])


def test_budgets_parse_and_select_the_least_loss_student():
  teacher = {"flops": 8.0, "params": 100, "paper_flops": 4.0}
  b = search.parse_budget("flops<=0.5*teacher", teacher)
  assert (b.metric, b.limit) == ("flops", 4.0)
  assert search.parse_budget("params <= 30M", teacher).limit == 30e6
  assert search.parse_budget("paper_flops<=2.1G", teacher).limit == 2.1e9
  chosen = search.select(_rows(), [search.parse_budget("flops<=0.3*teacher", teacher),
                                    search.parse_budget("params<=24", teacher)])
  assert chosen["flops<=0.3*teacher"]["name"] == "y" and chosen["params<=24"]["name"] == "y"
  with pytest.raises(ValueError, match="is met by no student: the cheapest, x of a, has flops=1"):
    search.select(_rows(), [search.parse_budget("flops<=0.1*teacher", teacher)])
  with pytest.raises(ValueError, match="is not METRIC<=NUMBER"):
    search.parse_budget("gflops<0.5", teacher)


def test_latency_budget_measures_students(setup):
  sup, space, *_ = setup
  rows = [{"subspace": "t", "name": a.name, "layers": a.layers, "hidden": a.hidden,
           "mlp_ratio": a.mlp_ratio, "heads": a.heads, "loss": float(i)}
          for i, a in enumerate([space.largest, space.smallest])]
  chosen = search.select(rows, [search.parse_budget("latency_ms<=1e6", {})], {"t": sup}, (1, 16))
  assert chosen["latency_ms<=1e6"]["name"] == space.largest.name and rows[0]["latency_ms"] > 0
  with pytest.raises(ValueError, match="none of the 2 best students fits"):
    search.select(rows, [search.parse_budget("latency_ms<=1e-9", {})], {"t": sup}, (1, 16))


def test_the_search_scores_the_training_objective_with_its_extra_terms(setup, teacher):
  """With the H-H and sentence-embedding terms on, the evaluator's loss of each student equals the
  loss the training step reports for it (dropout off, before the update)."""
  import jax
  import optax

  from autodistil_jax import train

  sup, space, batches, _ = setup
  archs = space.enumerate()[::5]
  sc = train.StepConfig(32, 12, dropout=0.0, hidden_relation_weight=0.5, embedding_relation_weight=2.0)
  step = jax.jit(train.make_train_step(nnx.graphdef(sup), nnx.graphdef(teacher), optax.sgd(0.0), sc))
  params = M.get_params(sup)
  table = jnp.asarray(np.stack([a.as_array() for a in archs]))
  _, _, metrics = step(params, optax.sgd(0.0).init(params), M.get_params(teacher), batches[0], table,
                       jax.random.key(0))
  relations = search.make_teacher_relations(teacher, hidden=True, embedding=True)
  evaluator = search.make_evaluator(sup, hidden_weight=0.5, embedding_weight=2.0)
  scored = evaluator(params, relations(M.get_params(teacher), batches[0]), batches[0], table)
  np.testing.assert_allclose(np.asarray(metrics["losses"]), np.asarray(scored), rtol=1e-5)
  paper = search.make_evaluator(sup)(params, search.make_teacher_relations(teacher)(
      M.get_params(teacher), batches[0]), batches[0], table)
  assert np.all(np.asarray(scored) > np.asarray(paper))  # the extra terms add a positive loss
