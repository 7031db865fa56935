"""The task-proxy search: students fine-tuned side by side in one program equal the same students
extracted and fine-tuned alone; one compilation per sub-space; a chunk that cannot fit is refused."""

import ml_collections
import numpy as np
import pytest

from autodistil_jax import data, parallel, proxy
from autodistil_jax.defaults import base_config
from autodistil_jax.model import init_superlm
from autodistil_jax.search_space import Arch, SubSpace

SPACE = SubSpace("t", (2, 3), (64, 96), (2.0, 3.0), (4, 7))


def _settings(data_dir, **overrides) -> proxy.ProxySettings:
  config = base_config()
  config.data.glue_dir = str(data_dir / "glue")
  config.search.proxy.update({
      "task": "sst2", "steps": 6, "batch_size": 16, "eval_batch_size": 32, "seq_len": 48,
      "dev_examples": 96, "learning_rate": 3e-4, "warmup_ratio": 0.2, "dropout": 0.0,
      "attention_dropout": 0.0, **overrides})
  return proxy.ProxySettings.from_config(config)


@pytest.fixture(scope="module")
def task_data(data_dir, teacher_dir):
  train, dev = proxy.read_task(_settings(data_dir), str(data_dir / "glue"), data.load_tokenizer(teacher_dir))
  return {k: v[:200] for k, v in train.items()}, dev


def test_students_finetuned_side_by_side_equal_each_extracted_and_finetuned_alone(teacher, data_dir,
                                                                                   task_data):
  train, dev = task_data
  settings = _settings(data_dir)
  mesh = parallel.make_mesh()
  superlm = init_superlm(teacher, SPACE)
  archs = [Arch(2, 64, 2.0, 4), Arch(3, 96, 3.0, 7), Arch(3, 64, 3.0, 5)]
  # Side by side (vmap) and one after another in the program (map): both equal the student alone.
  runs = {how: proxy.finetune_chunk(superlm, archs, train, dev, _settings(data_dir, student_batching=how),
                                    mesh, chunk=4) for how in ("vmap", "map")}
  for _, losses in runs.values():
    assert losses.shape == (settings.steps, 3) and len({tuple(c) for c in losses.T}) == 3
  for i, arch in enumerate(archs):
    alone_metrics, alone_losses = proxy.finetune_alone(superlm, arch, train, dev, settings, mesh)
    for metrics, losses in runs.values():
      np.testing.assert_allclose(losses[:, i], alone_losses, atol=1e-5, rtol=0)
      assert metrics[i] == pytest.approx(alone_metrics, abs=1 / len(dev["labels"]))


def test_one_compilation_per_subspace_and_kept_scores_are_reused(teacher, data_dir, task_data, tmp_path):
  train, dev = task_data
  settings = _settings(data_dir, pad_multiple=0, steps=2)
  mesh = parallel.make_mesh()
  superlm = init_superlm(teacher, SPACE)
  archs = SPACE.enumerate()[:5]
  misses = proxy.make_program.cache_info().misses
  store = lambda name: tmp_path / f"{name}.json"
  scores, timing = proxy.search(settings, {"t": (superlm, "id", archs)}, train, dev, {"t": 2}, mesh, store)
  assert proxy.make_program.cache_info().misses == misses + 1
  _, train_step, predict = proxy.make_program(superlm.config, settings.task, 0.0, 0.0, mesh, 2,
                                             proxy.student_batching(settings, mesh))
  assert train_step._cache_size() == 1 and predict._cache_size() == 1  # 3 calls, the last padded
  assert set(scores["t"]) == {a.name for a in archs} and timing["t"]["reused"] == 0
  assert all(0 <= s["proxy_score"] <= 1 and np.isfinite(s["final_train_loss"]) for s in scores["t"].values())
  again, timing = proxy.search(settings, {"t": (superlm, "id", archs)}, train, dev, {"t": 2}, mesh, store)
  assert again == scores and timing["t"]["reused"] == 5  # nothing recomputed
  _, timing = proxy.search(settings, {"t": (superlm, "another", archs[:1])}, train, dev, {"t": 2}, mesh,
                           store)
  assert timing["t"]["reused"] == 0  # another SuperLM: the kept scores are not its own


def test_a_chunk_that_cannot_fit_is_refused_naming_the_key(data_dir, teacher):
  mesh = parallel.make_mesh()
  superlm_config = teacher.config.for_subspace(SPACE)
  state, activations = proxy.student_bytes(superlm_config, 2, 16 // mesh.size, _settings(data_dir).seq_len)
  side_by_side = state + activations
  settings = _settings(data_dir, students_per_call=64, student_batching="vmap")
  assert proxy.students_per_call(settings, superlm_config, 256, mesh, free=200 * side_by_side) == 64
  with pytest.raises(ValueError, match=r"students_per_call=64 needs about .* \(at most 30 fit\)"):
    proxy.students_per_call(settings, superlm_config, 256, mesh, free=50 * side_by_side)
  auto = _settings(data_dir, student_batching="vmap")
  assert proxy.students_per_call(auto, superlm_config, 256, mesh, free=50 * side_by_side) == 30
  assert proxy.students_per_call(auto, superlm_config, 7, mesh, free=50 * side_by_side) == 7
  with pytest.raises(ValueError, match="one student of the proxy search needs about"):
    proxy.students_per_call(auto, superlm_config, 7, mesh, free=side_by_side)
  # One after another, only one student's activations are alive at a time.
  in_turn = _settings(data_dir, student_batching="map")
  free = (10 * state + activations) / 0.6 + 1
  assert proxy.students_per_call(in_turn, superlm_config, 256, mesh, free=free) == 10
  with pytest.raises(ValueError, match="one student of the proxy search needs about"):
    proxy.students_per_call(in_turn, superlm_config, 7, mesh, free=activations)
  assert proxy.student_batching(_settings(data_dir), mesh) == (
      "map" if mesh.devices.flat[0].platform == "cpu" else "vmap")


def test_settings_are_checked_and_the_default_proxy_is_the_largest_classification_task(data_dir, tmp_path):
  assert proxy.default_task(str(data_dir / "glue")) == "sst2"  # no MNLI, QQP or QNLI training set here
  assert proxy.default_task("tfds:") == "mnli"
  with pytest.raises(ValueError, match="no GLUE classification task"):
    proxy.default_task(str(tmp_path))
  with pytest.raises(ValueError, match=r"proxy.steps=0 must be at least 1; .*proxy.dropout=1.0 must be"):
    _settings(data_dir, steps=0, dropout=1.0)
  with pytest.raises(ValueError, match="student_batching='pmap' must be one of auto, vmap, map"):
    _settings(data_dir, student_batching="pmap")
  with pytest.raises(ValueError, match="regression task"):
    _settings(data_dir, task="stsb")
  assert _settings(data_dir).task.name == "sst2"
  config = ml_collections.ConfigDict(base_config())
  with pytest.raises(ValueError, match="needs config.data.glue_dir"):
    proxy.ProxySettings.from_config(config)


def test_a_sample_of_students_is_seeded_and_kept_in_order():
  archs = SPACE.enumerate()
  sample = proxy.sample_students(archs, 5, seed=0)
  assert sample == proxy.sample_students(archs, 5, seed=0) != proxy.sample_students(archs, 5, seed=1)
  assert [archs.index(a) for a in sample] == sorted(archs.index(a) for a in sample)
  assert proxy.sample_students(archs, 0, 0) == archs == proxy.sample_students(archs, 99, 0)


def test_kendall_tau_is_positive_when_lower_loss_means_higher_score_and_undefined_on_ties():
  rows = [{"loss": 0.1 * i, "proxy_score": 1 - 0.1 * i} for i in range(5)]
  assert proxy.kendall_tau(rows) == pytest.approx(1.0)
  assert proxy.kendall_tau([{**r, "proxy_score": 0.1 * i} for i, r in enumerate(rows)]) == pytest.approx(-1.0)
  assert proxy.kendall_tau([{**r, "proxy_score": 0.5} for r in rows]) is None
  assert proxy.kendall_tau(rows[:1]) is None


def test_the_constant_score_is_the_best_single_class_prediction():
  sst2, cola = proxy.glue.get_task("sst2"), proxy.glue.get_task("cola")
  labels = np.array([0, 1, 1, 1])
  assert proxy.constant_score(sst2, labels) == pytest.approx(0.75)
  assert proxy.constant_score(cola, labels) == 0.0  # MCC of a constant
