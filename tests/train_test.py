import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autodistil_jax import data, parallel, train
from autodistil_jax.defaults import subspace_config
from autodistil_jax.metrics import read_metrics
from autodistil_jax.model import get_params, init_superlm
from autodistil_jax.search_space import SubSpace
from autodistil_jax.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(config_arg: str = "", **train_overrides):
  spec = importlib.util.spec_from_file_location("tiny_test", ROOT / "tests" / "configs" / "tiny_test.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(config_arg)
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope="module")
def corpus(teacher_dir, data_dir, tmp_path_factory):
  tokens = data.load_corpus(str(data_dir / "wikitext-2" / "valid.txt"), teacher_dir, 32,
                            cache_dir=tmp_path_factory.mktemp("cache"))
  train_idx, _ = data.split_heldout(len(tokens), 16, seed=0)
  return tokens, train_idx


def _flat(params):
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(params)])


def _compiled_step(teacher, **train_overrides):
  """(sub-space, its SuperLM, optimizer, mesh, jitted step) of the tiny config."""
  config = tiny_config(**train_overrides)
  space = SubSpace.from_config("mini", config.subspaces["mini"])
  superlm = init_superlm(teacher, space)
  optimizer = train.make_optimizer(config.train)
  mesh = parallel.make_mesh()
  step = train.jit_train_step(train.make_train_step(
      nnx.graphdef(superlm), nnx.graphdef(teacher), optimizer,
      train.StepConfig.from_config(config, teacher)), mesh)
  return space, superlm, optimizer, mesh, step


def test_step_compiles_once_for_the_whole_run(teacher, corpus):
  space, superlm, optimizer, mesh, step = _compiled_step(teacher)
  params = parallel.replicate(mesh, get_params(superlm))
  opt_state = parallel.replicate(mesh, optimizer.init(params))
  teacher_params = parallel.replicate(mesh, get_params(teacher))
  dataset = data.train_dataset(*corpus, 8, seed=0)
  losses = []
  for i in range(6):
    archs = train.sandwich_archs(space, 0, i, 2)
    batch = parallel.global_batch(mesh, dataset[i])
    params, opt_state, metrics = step(params, opt_state, teacher_params, batch, archs, jax.random.key(i))
    losses.append(np.asarray(metrics["losses"]))
  assert step._cache_size() == 1
  assert np.all(np.isfinite(losses)) and np.all(np.asarray(losses) > 0)


def _one_step(teacher, corpus, **train_overrides):
  """run(key) -> the parameters before and after one real SuperLM step of the tiny config, and
  its metrics; compiled once for every key."""
  space, superlm, optimizer, mesh, step = _compiled_step(teacher, **train_overrides)
  before = jax.device_get(get_params(superlm))
  batch = parallel.global_batch(mesh, data.train_dataset(*corpus, 8, seed=0)[0])
  teacher_params = parallel.replicate(mesh, get_params(teacher))

  def run(key):
    params = parallel.replicate(mesh, get_params(superlm))
    after, _, metrics = step(params, parallel.replicate(mesh, optimizer.init(params)), teacher_params,
                             batch, train.sandwich_archs(space, 0, 0, 2), jax.random.key(key))
    return before, jax.device_get(after), metrics
  return run


def test_the_step_applies_the_configured_learning_rate_and_dropout(teacher, corpus):
  """What training does is what the config says (issue 15, part 2): Adam's first update moves every
  parameter with a gradient by the schedule's step-0 rate (|m / sqrt(v)| = 1), none at all when
  warmup starts from 0; dropout makes the step depend on its key, and only when configured."""
  before, after, _ = _one_step(teacher, corpus, learning_rate=1e-3, warmup_steps=0, weight_decay=0.0,
                               eps=1e-12)(0)  # gradients here are ~1e-6: the default eps would show
  moved = np.abs(np.asarray(after["layers"]["q_bias"]) - np.asarray(before["layers"]["q_bias"]))
  assert np.median(moved[moved > 0]) == pytest.approx(1e-3, rel=1e-3)
  before, after, _ = _one_step(teacher, corpus, learning_rate=1e-3, warmup_steps=3)(0)
  leaves = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
  assert all(np.array_equal(a, b) for a, b in leaves)
  runs = {}
  for rate in (0.0, 0.1):
    run = _one_step(teacher, corpus, dropout=rate)
    runs.update({(rate, key): np.asarray(run(key)[2]["losses"]) for key in (0, 1)})
  assert np.array_equal(runs[0.0, 0], runs[0.0, 1])
  assert not np.allclose(runs[0.1, 0], runs[0.1, 1])
  assert not np.allclose(runs[0.0, 0], runs[0.1, 0])


def test_optimizer_decays_only_matrices_and_embeddings():
  params = {"layers": {"q_kernel": jnp.ones((2, 3, 3)), "q_bias": jnp.ones((2, 3)),
                       "attn_ln_scale": jnp.ones((2, 3))},
            "embeddings": {"word": jnp.ones((5, 3)), "ln_bias": jnp.ones(3)}}
  config = tiny_config(learning_rate=0.1, weight_decay=0.5, num_steps=10)
  opt = train.make_optimizer(config.train)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zero_grads, opt.init(params), params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  assert moved == {"layers": {"q_kernel": True, "q_bias": False, "attn_ln_scale": False},
                   "embeddings": {"word": True, "ln_bias": False}}


def test_eight_devices_match_one(teacher, corpus, tmp_path):
  assert jax.device_count() == 8
  config = tiny_config()
  results = {}
  for n in (1, 8):
    params = train.train_superlm(config, tmp_path / f"d{n}", "mini", teacher, *corpus,
                                 parallel.make_mesh(n))
    results[n] = (_flat(params), [r["loss/largest"] for r in read_metrics(tmp_path / f"d{n}")])
  diff = np.abs(results[1][0] - results[8][0]).max()
  print(f"max |params(8 devices) - params(1 device)| after 5 steps: {diff:.2e}")
  assert diff <= 1e-5
  np.testing.assert_allclose(results[1][1], results[8][1], atol=1e-5, rtol=0)


def test_resumed_run_equals_uninterrupted(teacher, corpus, tmp_path):
  config = tiny_config(num_steps=6, checkpoint_every=2)
  mesh = parallel.make_mesh()
  straight = train.train_superlm(config, tmp_path / "straight", "mini", teacher, *corpus, mesh)
  train.train_superlm(config, tmp_path / "resumed", "mini", teacher, *corpus, mesh, stop_after=3)
  ckpts = sorted(p.name for p in (Workdir(tmp_path / "resumed").checkpoints("mini")).iterdir())
  assert ckpts == ["2", "3"]
  resumed = train.train_superlm(config, tmp_path / "resumed", "mini", teacher, *corpus, mesh)
  diff = np.abs(_flat(straight) - _flat(resumed)).max()
  print(f"max |params(resumed) - params(uninterrupted)| at step 6: {diff:.2e}")
  assert diff <= 1e-6
  steps = [r["step"] for r in read_metrics(tmp_path / "resumed")]
  assert steps == [1, 2, 3, 4, 5, 6]
  loaded, step = train.load_superlm(config, tmp_path / "resumed", "mini", teacher, mesh)
  assert step == 6 and np.abs(_flat(get_params(loaded)) - _flat(straight)).max() == 0


def test_metrics_are_logged(teacher, corpus, tmp_path):
  config = tiny_config(num_steps=4, log_every=2)
  train.train_superlm(config, tmp_path, "mini", teacher, *corpus, parallel.make_mesh())
  records = read_metrics(tmp_path, "superlm/mini")
  assert [r["step"] for r in records] == [2, 4]
  for key in ("loss/largest", "loss/smallest", "loss/random", "learning_rate", "grad_norm"):
    assert all(np.isfinite(r[key]) for r in records), key
  assert "tokens_per_s" in records[1] and records[1]["tokens_per_s"] > 0
  assert list((Workdir(tmp_path).tensorboard("superlm/mini")).glob("events.out.tfevents.*"))
  json.dumps(records)


def test_one_student_subspace_is_distilled_alone(teacher, corpus, tmp_path):
  config = tiny_config(num_steps=3, log_every=1)
  arch = SubSpace.from_config("mini", config.subspaces["mini"]).largest
  config.subspaces["alone"] = subspace_config(SubSpace.only("alone", arch))
  space = SubSpace.from_config("alone", config.subspaces["alone"])
  assert train.sandwich_archs(space, 0, 5, config.train.num_random).tolist() == [list(arch.as_array())]
  params = train.train_superlm(config, tmp_path, "alone", teacher, *corpus, parallel.make_mesh())
  losses = [r["loss/student"] for r in read_metrics(tmp_path, "superlm/alone")]
  assert len(losses) == 3 and all(np.isfinite(losses)) and min(losses) > 0
  initial = get_params(init_superlm(teacher, space))
  assert np.abs(_flat(params) - _flat(initial)).max() > 0
