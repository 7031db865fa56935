import json

import jax
import ml_collections
import numpy as np
import pytest

from autodistil_jax import data, finetune, finetune_stage, glue, parallel
from autodistil_jax.model import extract_student, get_params, random_student
from autodistil_jax.search_space import Arch


def test_trim_padding_keeps_the_longest_row_rounded_up():
  mask = np.zeros((3, 64), np.int32)
  mask[0, :5], mask[1, :19], mask[2, :1] = 1, 1, 1
  batch = {"input_ids": mask * 7, "attention_mask": mask, "token_type_ids": 0 * mask,
           "labels": np.array([0, 1, 0])}
  cut = finetune.trim_padding(batch, 16)
  assert {k: v.shape for k, v in cut.items()} == {"input_ids": (3, 32), "attention_mask": (3, 32),
                                                  "token_type_ids": (3, 32), "labels": (3,)}
  assert cut["attention_mask"].sum() == mask.sum()
  assert finetune.trim_padding(batch, 0)["input_ids"].shape == (3, 64)
  mask[1, :] = 1
  assert finetune.trim_padding(batch, 48)["input_ids"].shape == (3, 64)  # never past seq_len


@pytest.fixture(scope="module")
def sst2(data_dir, teacher_dir):
  tokenizer = data.load_tokenizer(teacher_dir)
  task = glue.get_task("sst2")
  def first(split, n):
    examples = glue.read_split(task, data_dir / "glue", split)
    return glue.encode(glue.Examples(examples.texts[:n], examples.labels[:n]), tokenizer, 64)

  return task, first("train", 64), {"dev": first("dev", 96)}


def _cfg(pad_multiple, dropout=0.1):
  return ml_collections.ConfigDict({"batch_size": 16, "eval_batch_size": 32, "epochs": 2,
                                    "dropout": dropout, "attention_dropout": dropout,
                                    "pad_multiple": pad_multiple,
                                    "warmup_ratio": 0.0, "regression_bias": "zero"})


@pytest.mark.slow  # two fine-tuning runs: in the slow CI step, keeping the default run under 15 min
def test_cut_padding_changes_nothing_without_dropout(teacher, sst2):
  task, train, dev = sst2
  mesh = parallel.make_mesh()
  student = extract_student(teacher, Arch(2, 96, 2.0, 3))
  full = finetune.finetune(student, task, train, dev, _cfg(0, 0.0), 1e-4, 0, mesh)
  cut = finetune.finetune(student, task, train, dev, _cfg(16, 0.0), 1e-4, 0, mesh)
  assert np.median(train["attention_mask"].sum(1)) < 32  # SST-2 phrases: most batches are cut
  for a, b in zip(full.epochs, cut.epochs, strict=True):
    assert a["dev"]["accuracy"] == pytest.approx(b["dev"]["accuracy"], abs=1 / 96)


def test_seeds_learning_rates_sizes_and_same_shaped_models_share_one_compilation(teacher, sst2):
  task, train, dev = sst2
  mesh = parallel.make_mesh()
  arch = Arch(1, 64, 1.0, 2)
  sliced, scratch = extract_student(teacher, arch), random_student(teacher.config, arch, 3)
  assert sliced.config == scratch.config
  before = get_params(sliced)
  misses = finetune.make_functions.cache_info().misses
  fewer = {k: v[:48] for k, v in train.items()}  # another training-set size: another schedule
  runs = [finetune.finetune(model, task, data, dev, _cfg(16), lr, seed, mesh)
          for model, data, lr, seed in [(sliced, train, 1e-4, 0), (sliced, train, 1e-4, 1),
                                        (scratch, train, 1e-4, 0), (sliced, fewer, 3e-4, 0)]]
  assert finetune.make_functions.cache_info().misses == misses + 1
  _, train_step, predict = finetune.make_functions(sliced.config, task, 0.1, 0.1, mesh)
  assert train_step._cache_size() <= 64 // 16  # one compilation per padded length at most
  assert runs[0].epochs != runs[1].epochs or runs[0].epochs != runs[2].epochs
  # The encoder's own parameters survive the runs (the step donates only its copy).
  after = jax.tree.leaves(get_params(sliced))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), after, strict=True))



@pytest.mark.parametrize("pad_multiple,dropout", [(0, 0.1), (16, 0.0)])
def test_seeds_side_by_side_are_each_seed_fine_tuned_alone(teacher, data_dir, teacher_dir, pad_multiple,
                                                           dropout):
  """finetune_seeds equals finetune per seed (STS-B: continuous scores, so any difference shows):
  with dropout at full width, and with batches cut per seed and padded back when stacked."""
  tokenizer, task = data.load_tokenizer(teacher_dir), glue.get_task("stsb")
  def first(split, n):
    examples = glue.read_split(task, data_dir / "glue", split)
    return glue.encode(glue.Examples(examples.texts[:n], examples.labels[:n]), tokenizer, 64)

  train, dev = first("train", 48), {"dev": first("dev", 64)}
  mesh, student = parallel.make_mesh(), extract_student(teacher, Arch(1, 64, 1.0, 2))
  before = jax.tree.leaves(get_params(student))
  together = finetune.finetune_seeds(student, task, train, dev, _cfg(pad_multiple, dropout), 1e-3,
                                     [0, 1, 2], mesh)
  alone = [finetune.finetune(student, task, train, dev, _cfg(pad_multiple, dropout), 1e-3, s, mesh)
           for s in (0, 1, 2)]
  for a, b in zip(together, alone, strict=True):
    assert (a.seed, a.best_epoch) == (b.seed, b.best_epoch)
    for x, y in zip(a.epochs, b.epochs, strict=True):
      assert x["dev"] == pytest.approx(y["dev"], abs=1e-4)
  assert together[0].epochs != together[1].epochs  # the seeds differ
  assert all(np.array_equal(x, y) for x, y in zip(before, jax.tree.leaves(get_params(student)), strict=True))


def test_seed_batching_auto_is_sequential_on_cpu_and_one_seed_is_never_batched():
  g = lambda way, seeds: ml_collections.ConfigDict({"seed_batching": way, "seeds": seeds})
  assert not finetune_stage.seeds_side_by_side(g("auto", (0, 1, 2)))  # this machine is a CPU
  assert finetune_stage.seeds_side_by_side(g("vmap", (0, 1, 2)))
  assert not finetune_stage.seeds_side_by_side(g("vmap", (0,)))
  assert not finetune_stage.seeds_side_by_side(g("sequential", (0, 1)))


def test_learning_rate_schedule_is_transformers_linear_warmup_step_for_step():
  import torch
  from transformers import get_linear_schedule_with_warmup

  total, warmup = 50, finetune.warmup_steps(50, 0.1)
  assert warmup == 5
  opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
  reference = get_linear_schedule_with_warmup(opt, warmup, total)
  ours = finetune.learning_rate_schedule(1e-4, total, warmup)
  for step in range(total):  # the rate of the step-th update, in both
    assert float(ours(step)) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6, abs=1e-12), step
    opt.step()
    reference.step()


def test_a_regression_head_starts_at_the_label_mean_only_when_asked():
  """config.glue.regression_bias: STS-B's head bias starts at its training labels' mean under
  label_mean, at 0 under zero (transformers' init); classification heads always start at 0."""
  labels = np.array([0.0, 1.5, 4.0, 5.0], np.float32)
  stsb, rte = glue.get_task("stsb"), glue.get_task("rte")
  assert finetune.head_bias(stsb, labels, "label_mean") == pytest.approx(2.625)
  assert finetune.head_bias(stsb, labels, "zero") == 0.0
  assert finetune.head_bias(rte, np.array([0, 1, 1]), "label_mean") == 0.0
  head = finetune.init_head(8, 1, 0, 2.625)
  assert np.asarray(head["bias"]).tolist() == [2.625]
  assert np.array_equal(head["kernel"], finetune.init_head(8, 1, 0)["kernel"])  # only the bias moves
  with pytest.raises(ValueError, match="regression_bias='median' must be one of zero, label_mean"):
    finetune.head_bias(stsb, labels, "median")


def test_the_head_reads_the_pooler_the_cls_state_or_the_mean_of_real_tokens(teacher, sst2):
  """config.glue.head_input: "pooler" is BERT's pooled [CLS], "cls" the last layer's [CLS] state,
  "mean" the mean over real tokens only (the suite's mean pooling; more padding changes nothing)."""
  from autodistil_jax import measures

  _, train, _ = sst2
  batch = {k: v[:4, :24] for k, v in train.items() if k != "labels"}
  wider = {k: np.pad(v, [(0, 0), (0, 40)]) for k, v in batch.items()}  # 40 more padding columns
  student = extract_student(teacher, Arch(2, 96, 2.0, 3))
  features = lambda b, mode: np.asarray(finetune.head_features(
      student(b["input_ids"], b["attention_mask"], b["token_type_ids"]), b["attention_mask"], mode))
  out = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
  assert out.pooled is not None  # the teacher (and its slices) carry BERT's pooler
  np.testing.assert_allclose(features(batch, "pooler"), out.pooled, rtol=1e-6)
  np.testing.assert_allclose(features(batch, "cls"), out.hidden[:, 0], rtol=1e-6)
  mean = measures.pool(out.hidden, batch["attention_mask"], "mean")
  np.testing.assert_allclose(features(batch, "mean"), mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(features(wider, "mean"), mean, rtol=1e-4, atol=1e-5)
  assert not np.allclose(features(batch, "mean"), features(batch, "cls"), atol=1e-3)
  with pytest.raises(ValueError, match="head_input='max' must be one of pooler, cls, mean"):
    finetune.step_functions(None, glue.get_task("sst2"), 0.0, 0.0, finetune.make_optimizer(),
                            head_input="max")


def test_task_epochs_change_only_their_own_task_and_its_stored_inputs():
  """glue.task_epochs: a task's own entry replaces glue.epochs for it alone, so raising CoLA's
  epochs leaves every STS-B result reusable (its inputs are unchanged) and CoLA's not."""
  from autodistil_jax.defaults import demo_config

  config = demo_config()
  stsb, cola = glue.get_task("stsb"), glue.get_task("cola")
  before = {t.name: finetune_stage.result_inputs(config, t, "model-id") for t in (stsb, cola)}
  config.glue.task_epochs.cola = config.glue.epochs + 7
  assert finetune_stage.task_epochs(config.glue, "cola") == config.glue.epochs + 7
  assert finetune_stage.task_settings(config.glue, "stsb").epochs == config.glue.epochs
  assert finetune_stage.result_inputs(config, stsb, "model-id") == before["stsb"]
  after = finetune_stage.result_inputs(config, cola, "model-id")
  assert after["epochs"] == config.glue.epochs + 7 and before["cola"]["epochs"] == config.glue.epochs
  assert not any(k.startswith("task_epochs") for k in after)
  assert config.glue.epochs == finetune_stage.task_epochs(config.glue, "stsb")  # the default untouched


def _tiny_glue_config(data_dir, seed_batching="sequential"):
  from train_test import tiny_config

  config = tiny_config()
  config.data.glue_dir = str(data_dir / "glue")
  config.glue.update(tasks=("rte",), seeds=(0, 1), seed_batching=seed_batching)
  return config


class _Stopped(Exception):
  pass


def test_a_cell_stopped_part_way_resumes_after_its_last_finished_run(data_dir, tmp_path, monkeypatch):
  """A cell's finished runs are written as they finish (and handed to on_result); a re-run after a
  stop fine-tunes only the runs left and ends where an unstopped run ends; then the file goes."""
  from autodistil_jax.workdir import Workdir

  config, real = _tiny_glue_config(data_dir), finetune_stage.finetune
  calls, written = [], []
  def stops_at_the_second_seed(*args, **kwargs):
    calls.append(args[6])  # the seed
    if len(calls) == 2:
      raise _Stopped
    return real(*args, **kwargs)

  wd = Workdir.at(tmp_path / "stopped")
  monkeypatch.setattr(finetune_stage, "finetune", stops_at_the_second_seed)
  with pytest.raises(_Stopped):
    finetune_stage.run_stage(config, wd, on_result=written.append)
  finished = wd.glue_finished_runs("teacher", "rte")
  assert not wd.glue_result("teacher", "rte").exists() and written == [finished]
  assert [r["seed"] for r in json.loads(finished.read_text())["runs"]] == [0]
  calls.clear()
  monkeypatch.setattr(finetune_stage, "finetune", lambda *a, **k: calls.append(a[6]) or real(*a, **k))
  finetune_stage.run_stage(config, wd, on_result=written.append)
  assert calls == [1] and not finished.exists()
  assert written == [finished] * 2 + [wd.glue_result("teacher", "rte"), finished]  # the last: removed
  resumed = json.loads(wd.glue_result("teacher", "rte").read_text())
  whole = Workdir.at(tmp_path / "whole")
  finetune_stage.run_stage(config, whole)
  unstopped = json.loads(whole.glue_result("teacher", "rte").read_text())
  assert [r["seed"] for r in resumed["runs"]] == [0, 1] and resumed["runs"] == unstopped["runs"]
  assert resumed["score_mean"] == unstopped["score_mean"] and 0 < resumed["seconds"]

  # A seed added to the finished cell: its two runs are kept (in finished_runs.json before the new
  # seed starts, their result being moved aside), only the new seed is fine-tuned.
  calls.clear()
  kept_before = []
  monkeypatch.setattr(finetune_stage, "finetune", lambda *a, **k: calls.append(a[6]) or kept_before.append(
      [r["seed"] for r in json.loads(finished.read_text())["runs"]]) or real(*a, **k))
  config.glue.seeds = (0, 1, 2)
  finetune_stage.run_stage(config, wd)
  assert kept_before == [[0, 1]]
  grown = json.loads(wd.glue_result("teacher", "rte").read_text())
  assert calls == [2] and grown["runs"][:2] == resumed["runs"] and grown["seconds"] > resumed["seconds"]
  assert grown["inputs"]["seeds"] == [0, 1, 2] and not finished.exists()


def test_finished_runs_of_other_inputs_are_moved_aside_and_unfinite_runs_recomputed(tmp_path):
  from autodistil_jax.workdir import Workdir

  wd = Workdir.at(tmp_path / "run")
  path = wd.glue_finished_runs("teacher", "rte")
  runs = [finetune.RunResult(1e-4, seed, 0, {"dev": {"accuracy": score}}, [{"dev": {"accuracy": score}}])
          for seed, score in ((0, 0.6), (1, float("nan")))]
  stored = finetune_stage.FinishedRuns(path, {"epochs": 3}, None)
  stored.add(runs, 12.5)
  loaded = finetune_stage.FinishedRuns.load(wd, path, {"epochs": 3})
  assert loaded.has(1e-4, 0) and not loaded.has(1e-4, 1) and loaded.seconds == 12.5
  assert loaded.get(1e-4, 0) == runs[0]
  grown = finetune_stage.FinishedRuns.load(wd, path, {"epochs": 3, "seeds": [0, 1, 2]})  # the grid's own
  assert grown.has(1e-4, 0) and path.exists()
  other = finetune_stage.FinishedRuns.load(wd, path, {"epochs": 10})
  assert not other.has(1e-4, 0) and other.seconds == 0 and not path.exists()
  moved = [p for p in wd.root.rglob("finished_runs.json") if p != path]  # under replaced/<time>/
  assert len(moved) == 1 and json.loads(moved[0].read_text())["inputs"] == {"epochs": 3}
  path.write_text('{"inputs": {"epochs": 3}, "runs": [')  # cut short: unreadable
  assert not finetune_stage.FinishedRuns.load(wd, path, {"epochs": 3}).has(1e-4, 0) and not path.exists()
  assert len([p for p in wd.root.rglob("finished_runs.json") if p != path]) == 2


def test_seeds_side_by_side_reuse_a_learning_rate_whose_seeds_all_finished(data_dir, tmp_path, monkeypatch):
  from autodistil_jax.workdir import Workdir

  config, wd = _tiny_glue_config(data_dir, "vmap"), Workdir.at(tmp_path / "run")
  inputs = finetune_stage.result_inputs(config, glue.get_task("rte"), _checkpoint_identity(config.teacher))
  scores = {0: 0.5, 1: 0.75}
  runs = [finetune.RunResult(1e-4, s, 0, {"dev": {"accuracy": a}}, [{"dev": {"accuracy": a}}])
          for s, a in scores.items()]
  finetune_stage.FinishedRuns(wd.glue_finished_runs("teacher", "rte"), inputs, None).add(runs, 3.0)
  monkeypatch.setattr(finetune_stage, "finetune_seeds", lambda *a, **k: pytest.fail("fine-tuned again"))
  finetune_stage.run_stage(config, wd)
  result = json.loads(wd.glue_result("teacher", "rte").read_text())
  assert result["score_mean"] == 0.625 and result["seconds"] == 3.0


def _checkpoint_identity(checkpoint):
  from autodistil_jax import hf_io, records

  return records.checkpoint_identity(hf_io.resolve_checkpoint(checkpoint))
