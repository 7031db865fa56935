"""The task-agnostic suite: its measures on hand-made inputs, the teacher's zero-shot STS-B against
sentence-transformers itself, students inside their SuperLM against extracted, determinism."""

import json

import jax
import numpy as np
import pytest

from autodistil_jax import data, evaluate, glue, measures
from autodistil_jax.model import extract_student, from_params, get_params, init_superlm
from autodistil_jax.search_space import Arch, SubSpace


def _settings(**overrides) -> evaluate.SuiteSettings:
  base = dict(pooling="mean", probe_tasks=("sst2", "mrpc"), probe_train_examples=300, sts_examples=300,
              seq_len=128, batch_size=64, students_per_call=2, loss="mse", seed=0, cost_seq_len=32)
  return evaluate.SuiteSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def heldout(data_dir, teacher_dir):
  tokens = data.load_corpus(str(data_dir / "wikitext-2" / "valid.txt"), teacher_dir, 32)
  _, held = data.split_heldout(len(tokens), 16, 0)
  return data.heldout_batches(tokens, held, 8)


def _suite(settings, data_dir, teacher_dir, teacher, heldout):
  texts = evaluate.read_texts(settings, str(data_dir / "glue"))
  return evaluate.build_suite(settings, texts, data.load_tokenizer(teacher_dir), teacher, heldout)


def test_linear_cka_is_one_for_the_same_features_and_ignores_rotation_and_zero_columns():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6))
  rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
  padded = np.concatenate([3 * x @ rotation, np.zeros((200, 2))], axis=1)

  def sums(a, b):
    return {"sx": a.sum(0), "xx": a.T @ a, "yx": b.T @ a, "sy": b.sum(0), "yy": b.T @ b, "n": len(a)}
  assert measures.linear_cka(sums(x, x)) == pytest.approx(1.0)
  assert measures.linear_cka(sums(padded, x)) == pytest.approx(1.0)
  assert measures.linear_cka(sums(rng.normal(size=(200, 6)), x)) < 0.2


def test_read_pooling_follows_the_sentence_transformers_config(teacher_dir, tmp_path):
  assert measures.read_pooling(teacher_dir) == "mean"
  assert measures.read_pooling(tmp_path) == "mean"  # not a sentence-transformers folder
  (tmp_path / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type":
                                                      "sentence_transformers.models.Pooling"}]))
  (tmp_path / "1_Pooling").mkdir()
  (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
  assert measures.read_pooling(tmp_path) == "cls"
  (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
  with pytest.raises(ValueError, match="set config.evaluate.pooling"):
    measures.read_pooling(tmp_path)


def test_mean_pooling_excludes_padding():
  hidden = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
  pooled = measures.pool(hidden, np.array([[1, 1, 0, 0]]), "mean")
  np.testing.assert_allclose(pooled, [[1.5, 2.5, 3.5]])


@pytest.mark.slow  # a minute: two encoders over all of STS-B dev
def test_teacher_zero_shot_stsb_equals_sentence_transformers(teacher, teacher_dir, data_dir, heldout):
  from scipy import stats
  from sentence_transformers import SentenceTransformer

  suite = _suite(_settings(probe_tasks=(), sts_examples=0), data_dir, teacher_dir, teacher, heldout)
  ours = evaluate.score(evaluate.Subject("teacher", "teacher", teacher), suite)[0]
  model = SentenceTransformer(str(teacher_dir), device="cpu")
  dev = glue.read_split(glue.get_task("stsb"), data_dir / "glue", "dev")
  a = model.encode([t[0] for t in dev.texts], batch_size=64)
  b = model.encode([t[1] for t in dev.texts], batch_size=64)
  reference = 100 * stats.spearmanr(dev.labels, measures.cosine(a, b))[0]
  assert ours["sts_spearman"] == pytest.approx(reference, abs=1e-3)
  assert ours["sts_spearman"] > 80  # the teacher is a good sentence encoder
  assert ours["relation"] == pytest.approx(0.0, abs=1e-7) and ours["cka"] == pytest.approx(1.0)


def test_student_inside_its_superlm_scores_as_the_extracted_student(teacher, teacher_dir, data_dir, heldout):
  space = SubSpace("t", layers=(2, 3), hidden=(96, 128), mlp_ratio=(2.0, 3.0), heads=(3, 4))
  superlm = init_superlm(teacher, space)
  # Moved off the teacher's slice, so the test does not hinge on slicing alone.
  moved = jax.tree.map(lambda w: w + 0.01 * jax.random.normal(jax.random.key(1), w.shape),
                       get_params(superlm))
  superlm = from_params(superlm.config, moved)
  archs = [Arch(2, 96, 2.0, 3), Arch(3, 128, 3.0, 4), Arch(3, 96, 3.0, 4)]
  suite = _suite(_settings(), data_dir, teacher_dir, teacher, heldout)
  inside = evaluate.run_suite([evaluate.Subject("t", "searched", superlm, archs)], suite)
  for arch, row in zip(archs, inside, strict=True):
    alone = evaluate.run_suite([evaluate.Subject("x", "export", extract_student(superlm, arch))], suite)[0]
    assert row["arch"] == alone["arch"] and row["params"] == alone["params"]
    assert row["gflops"] == pytest.approx(alone["gflops"])
    for key, value in alone.items():
      if isinstance(value, float):
        assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (arch.name, key)


def test_suite_is_deterministic_run_to_run(teacher, teacher_dir, data_dir, heldout):
  student = extract_student(teacher, Arch(2, 64, 1.0, 2))
  first = evaluate.run_suite([evaluate.Subject("s", "sliced", student)],
                             _suite(_settings(), data_dir, teacher_dir, teacher, heldout))
  second = evaluate.run_suite([evaluate.Subject("s", "sliced", student)],
                              _suite(_settings(), data_dir, teacher_dir, teacher, heldout))
  assert first == second
  assert set(first[0]) >= {"relation", "cka", "sts_spearman", "sts_pearson", "probe_sst2",
                           "probe_mrpc_f1", "probe_mrpc_accuracy", "probe_avg"}


@pytest.mark.parametrize("override,message", [
    ("--config.evaluate.pooling=avg", "config.evaluate.pooling='avg' is not one of"),
    ("--config.evaluate.probe_tasks=('stsb',)", "stsb is a regression task"),
    ("--config.data.glue_dir=/nonexistent", "/nonexistent/STS-B/dev.tsv not found"),
])
def test_bad_evaluate_inputs_fail_with_one_line_and_write_nothing(data_dir, tmp_path, override, message):
  import pathlib
  import subprocess
  import sys

  root = pathlib.Path(__file__).resolve().parents[1]
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, str(root / "launch" / "main.py"), f"--config={root}/tests/configs/tiny_test.py",
       f"--workdir={workdir}", "--mode=evaluate", f"--config.data.corpus={data_dir}/wikitext-2/valid.txt",
       f"--config.data.glue_dir={data_dir}/glue", override],
      cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
  assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
  assert not workdir.exists()
