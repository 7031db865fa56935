"""A GLUE result is reused for the model it was made with, and the same model retrained on another
CPU (other float rounding, so other bytes) is that model: its result is reused and says so; a model
moved by even a little training, or with other files, is not."""

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from autodistil_jax import records


@pytest.fixture(scope="module")
def student(teacher, teacher_dir, tmp_path_factory):
  from autodistil_jax import export, model
  from autodistil_jax.search_space import Arch

  arch = Arch(1, 64, 1.0, 2)
  return export.export_student(model.extract_student(teacher, arch), arch,
                               tmp_path_factory.mktemp("identity") / "student", teacher_dir=teacher_dir,
                               teacher_name="t", subspace="t", seq_len=64)


def _copy_with_weights(source, target, change):
  """`source` copied to `target` with every float tensor w replaced by change(w, rng)."""
  shutil.copytree(source, target)
  rng = np.random.default_rng(0)
  tensors = load_file(target / "model.safetensors")
  save_file({k: change(v, rng).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in tensors.items()},
            target / "model.safetensors", metadata={"format": "pt"})
  return target


def _rounded(w, rng):
  """What other float rounding does: each weight off by about one float32 ulp."""
  return w * (1 + 1e-7 * rng.standard_normal(w.shape))


def _trained(w, rng):
  """What a little training does: weights moved by 1e-3 of their scale (the least training in our
  experiments moved them by 7e-3)."""
  return w + 1e-3 * np.sqrt(np.mean(w.astype(np.float64) ** 2)) * rng.standard_normal(w.shape)


def test_rounding_keeps_the_model_training_or_other_files_change_it(student, tmp_path):
  base = records.model_identity(student)
  rounded = records.model_identity(_copy_with_weights(student, tmp_path / "rounded", _rounded))
  trained = records.model_identity(_copy_with_weights(student, tmp_path / "trained", _trained))
  assert rounded["model"] != base["model"] and rounded["model_files"] == base["model_files"]
  assert records.weights_difference(base["model_weights"], rounded["model_weights"]) < 1e-6
  assert records.model_change(base, rounded) is None
  assert records.changed_keys({"epochs": 3, **base}, {"epochs": 3, **rounded}) == []
  assert 5e-4 < records.weights_difference(base["model_weights"], trained["model_weights"]) < 2e-3
  assert re.fullmatch(r"model weights \([0-9.e-]+ of their norm apart; the same model only below 1e-05\)",
                      records.model_change(base, trained))
  assert records.changed_keys({"epochs": 3, **base}, {"epochs": 4, **trained}) == [
      "epochs (3 -> 4)", records.model_change(base, trained)]
  other = shutil.copytree(student, tmp_path / "other")
  config = json.loads((other / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0}))
  assert records.model_change(base, records.model_identity(other)).startswith("model (")
  # A result recorded before digests existed names its model by its bytes alone.
  assert records.model_change({"model": base["model"]}, rounded).startswith("model (")
  assert records.model_change({"model": base["model"]}, base) is None


def test_weights_difference_estimates_how_far_apart_the_weights_are(student, tmp_path):
  """Within a factor 2 of the exact distance, relative to the weights' norm; integer buffers
  (position ids) and tensor shapes must match exactly."""
  trained = _copy_with_weights(student, tmp_path / "trained", _trained)
  a, b = load_file(student / "model.safetensors"), load_file(trained / "model.safetensors")
  floats = [k for k in a if a[k].dtype.kind == "f"]
  exact = np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in floats)
                  / sum(np.sum(a[k].astype(np.float64) ** 2) for k in floats))
  estimate = records.weights_difference(records.weights_digest(student), records.weights_digest(trained))
  assert exact / 2 < estimate < 2 * exact
  digest = records.weights_digest(student)
  name = next(k for k in digest if isinstance(digest[k][1], str))  # position ids
  assert records.weights_difference(digest, {**digest, name: [digest[name][0], "0" * 16]}) == float("inf")
  fewer = {k: v for k, v in digest.items() if k != floats[0]}
  assert records.weights_difference(digest, fewer) == float("inf")


def test_a_result_is_reused_for_the_retrained_model_and_not_for_a_trained_one(student, data_dir, tmp_path,
                                                                              monkeypatch, capsys):
  """The finetune stage end to end: a stored result for `student` is reused once its weights are
  rewritten with rounding noise (one line says so), and recomputed once they moved."""
  from finetune_test import _tiny_glue_config

  from autodistil_jax import finetune, finetune_stage, glue
  from autodistil_jax.workdir import Workdir

  config, wd = _tiny_glue_config(data_dir), Workdir.at(tmp_path / "run")
  model = shutil.copytree(student, tmp_path / "student")
  config.glue.update(include_teacher=False, models=(str(model),))
  inputs = finetune_stage.result_inputs(config, glue.get_task("rte"), records.model_identity(model))
  score = {"dev": {"accuracy": 0.5}}
  runs = [finetune.RunResult(1e-4, seed, 0, score, [score]) for seed in (0, 1)]
  finetune_stage.FinishedRuns(wd.glue_finished_runs("student", "rte"), inputs, None).add(runs, 3.0)
  finetune_stage.run_stage(config, wd)  # every run finished: the result is written, nothing trained
  stored = wd.glue_result("student", "rte").read_text()
  shutil.rmtree(model)
  _copy_with_weights(student, model, _rounded)
  monkeypatch.setattr(finetune_stage, "finetune", lambda *a, **k: pytest.fail("fine-tuned again"))
  finetune_stage.run_stage(config, wd)
  assert wd.glue_result("student", "rte").read_text() == stored
  assert "student rte: the stored result is reused: its model is the current one in other bytes (weights " \
         in capsys.readouterr().out
  tensors = load_file(student / "model.safetensors")  # the stored result's values in other bytes
  save_file(tensors, model / "model.safetensors", metadata={"format": "pt", "written": "again"})
  finetune_stage.run_stage(config, wd)
  assert "(weights equal to the digest's 12 significant figures: float rounding" in capsys.readouterr().out
  shutil.rmtree(model)
  _copy_with_weights(student, model, _trained)

  class Recomputed(Exception):
    pass

  monkeypatch.setattr(finetune_stage, "finetune", lambda *a, **k: (_ for _ in ()).throw(Recomputed()))
  with pytest.raises(Recomputed):
    finetune_stage.run_stage(config, wd)
  assert re.search(r"student rte: the stored result was made with other inputs: model weights \([0-9.e-]+ of "
                   r"their norm apart", capsys.readouterr().out)
  assert not wd.glue_result("student", "rte").exists()


@pytest.mark.slow
def test_rekey_only_where_a_recomputed_run_reproduces_the_kept_one(student, data_dir, tmp_path):
  """experiments/rekey_results.py: a kept result made before digests (its model named by its bytes
  alone) is re-keyed to the model retrained with other rounding once an STS-B seed fine-tuned
  again agrees with the kept run, and is left as it was for a model moved by a little training."""
  import importlib.util

  from experiments_test import ROOT, run_experiment

  from autodistil_jax import finetune_stage
  from autodistil_jax.workdir import Workdir

  spec = importlib.util.spec_from_file_location("headline_config", ROOT / "configs" / "headline.py")
  headline = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(headline)
  protocol = ["--config.glue.max_train_examples=64", "--config.glue.epochs=1", "--config.glue.seq_len=64"]
  config = headline.get_config()
  config.data.glue_dir = str(data_dir / "glue")
  config.glue.update(max_train_examples=64, epochs=1, seq_len=64, seeds=(0,), include_teacher=False)
  for name, change, rekeyed in (("retrained", _rounded, True), ("moved", _trained, False)):
    kept, model = Workdir.at(tmp_path / name / "kept"), tmp_path / name / "student"
    shutil.copytree(student, model)
    config.glue.models = (str(model),)
    finetune_stage.run_stage(config, kept, ["stsb"])
    path = kept.glue_result("student", "stsb")
    old = json.loads(path.read_text())
    for key in ("model_files", "model_weights"):  # as recorded before digests existed
      del old["inputs"][key]
    path.write_text(json.dumps(old))
    shutil.rmtree(model)
    _copy_with_weights(student, model, change)
    done = run_experiment("rekey_results.py", [f"--kept={kept.root}", f"--data_dir={data_dir}", "--task=stsb",
                                               f"--workdir={tmp_path / name / 'again'}", f"--models={model}",
                                               *protocol], 600)
    now = json.loads(path.read_text())
    if rekeyed:
      assert "[rekey] student: 1 kept result(s) re-keyed" in done.stdout, done.stdout[-2000:]
      assert now["inputs"]["model"] == old["inputs"]["model"] != records.model_identity(model)["model"]
      assert now["inputs"]["model_weights"] == records.model_identity(model)["model_weights"]
      assert now["model_rekeyed"]["evidence"].startswith("stsb seed 0 fine-tuned again from the current")
      assert now["runs"] == old["runs"]
    else:
      assert "nothing re-keyed" in done.stdout and now == old, done.stdout[-2000:]
  flags = [f"--kept={tmp_path}", f"--data_dir={data_dir}", "--task=rte", f"--workdir={tmp_path / 'x'}",
           f"--models={student}"]
  bad = run_experiment("rekey_results.py", flags, 120, ok=False)
  assert "choose a regression task (stsb)" in bad.stderr
