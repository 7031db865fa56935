"""Wrong inputs a user passes: each is an error that names the problem and what to do, raised
before anything is written (a fresh workdir is not even created). Each case runs in-process and
through launch/main.py (one line on stderr, exit status 2)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from safetensors.numpy import load_file, save_file
from train_test import tiny_config

from autodistil_jax import runner

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _teacher_copy(teacher_dir, tmp_path, change):
  target = tmp_path / "teacher"
  target.mkdir()
  for name in ("config.json", "vocab.txt", "tokenizer.json"):
    shutil.copy(teacher_dir / name, target / name)
  if change == "not_bert":
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    os.symlink(teacher_dir / "model.safetensors", target / "model.safetensors")
  elif change == "missing_tensor":
    tensors = load_file(teacher_dir / "model.safetensors")
    del tensors["encoder.layer.5.output.dense.weight"]
    save_file(tensors, target / "model.safetensors")
  elif change == "truncated":
    data = (teacher_dir / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 3])
  return target


def _glue_with_bad_row(data_dir, tmp_path):
  glue = tmp_path / "glue_data"
  shutil.copytree(data_dir / "glue" / "STS-B", glue / "STS-B")
  (glue / "RTE").mkdir(parents=True)
  shutil.copy(data_dir / "glue" / "RTE" / "dev.tsv", glue / "RTE" / "dev.tsv")
  lines = (data_dir / "glue" / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
  lines[2] = "1\tonly two columns\n"
  (glue / "RTE" / "train.tsv").write_text("".join(lines), encoding="utf-8")
  return glue


def _glue_variant(data_dir, tmp_path, kind):
  """The tiny config's GLUE tasks (RTE, STS-B) copied, one file spoilt as `kind` says."""
  glue = tmp_path / "glue_data"
  for task in ("RTE", "STS-B"):
    shutil.copytree(data_dir / "glue" / task, glue / task)
  rte, sts = glue / "RTE" / "train.tsv", glue / "STS-B" / "train.tsv"
  if kind == "empty_dev":
    (glue / "RTE" / "dev.tsv").write_text("")
  elif kind == "latin1_glue":
    lines = rte.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"a", "\u00e9".encode("latin-1"), 1)
    rte.write_bytes(b"\n".join(lines))
  elif kind in ("nan_score", "bad_label", "renamed_column"):
    path = sts if kind != "bad_label" else rte
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cells = lines[1].rstrip("\n").split("\t")
    if kind == "renamed_column":
      lines[0] = lines[0].replace("score", "similarity")
    else:
      cells[-1] = "nan" if kind == "nan_score" else "maybe"
      lines[1] = "\t".join(cells) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
  elif kind == "missing_train":
    rte.unlink()
  return glue


def _teacher_variant(teacher_dir, tmp_path, kind):
  """A copy of the teacher with one of its files spoilt as `kind` says."""
  target = tmp_path / "teacher"
  target.mkdir()
  for name in ("config.json", "vocab.txt", "tokenizer.json"):
    shutil.copy(teacher_dir / name, target / name)
  os.symlink(teacher_dir / "model.safetensors", target / "model.safetensors")
  config = json.loads((target / "config.json").read_text())
  if kind == "no_tokenizer":
    (target / "vocab.txt").unlink()
    (target / "tokenizer.json").unlink()
  elif kind == "string_layers":
    (target / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "6"}))
  elif kind == "tokenizer_not_json":
    (target / "tokenizer.json").write_text("this is not JSON")
  elif kind == "config_not_json":
    (target / "config.json").write_text("{ model_type: bert")
  elif kind == "foreign_vocab":
    (target / "tokenizer.json").unlink()
    extra = "".join(f"[extra{i}]\n" for i in range(100))
    (target / "vocab.txt").write_text((teacher_dir / "vocab.txt").read_text() + extra)
  elif kind == "nan_weights":
    (target / "model.safetensors").unlink()
    tensors = load_file(teacher_dir / "model.safetensors")
    tensors["encoder.layer.0.output.dense.weight"][0, 0] = float("nan")
    save_file(tensors, target / "model.safetensors")
  return target


# (case, mode, config overrides, expected words in the error). Values "@name" are made by _setup.
CASES = [
    ("arch outside its sub-space", "export",
     {"export.subspace": "mini", "export.arch": "3,32,1.0,2"}, "outside sub-space 'mini': layers=3"),
    ("sub-space deeper than the teacher", "train", {"subspaces.mini.layers": (1, 7)},
     "exceeds the teacher: max layers is 7 but the teacher has 6"),
    ("sub-space wider than the teacher", "train", {"subspaces.mini.hidden": (32, 512)},
     "max hidden is 512 but the teacher has 384"),
    ("more heads than the teacher", "train", {"subspaces.mini.heads": (2, 16)},
     "max heads is 16 but the teacher has 12"),
    ("teacher is not BERT", "train", {"teacher": "@not_bert"}, "model_type is 'gpt2'"),
    ("teacher lacks a tensor", "train", {"teacher": "@missing_tensor"},
     "lacks the tensor 'encoder.layer.5.output.dense.weight'"),
    ("teacher file truncated", "train", {"teacher": "@truncated"}, "unreadable or truncated"),
    ("teacher name missing offline", "train", {"teacher": "google-bert/not-a-cached-model"},
     "not in the Hugging Face cache"),
    ("empty corpus", "train", {"data.corpus": "@empty"}, "the corpus has no text"),
    ("corpus too small for one batch", "train", {"data.corpus": "@small"},
     "needed (config.data.heldout + config.train.batch_size): add text"),
    ("non-UTF-8 corpus", "train", {"data.corpus": "@latin1"}, "not UTF-8 text (bad byte at offset 3)"),
    ("malformed GLUE row", "finetune", {"data.glue_dir": "@bad_glue"},
     "RTE/train.tsv:3: malformed row with 2 columns"),
    ("seq_len above max_position_embeddings", "train", {"data.seq_len": 1024},
     "exceeds the teacher's max_position_embeddings (512)"),
    ("workdir cannot be written", "train", {}, "cannot be written"),
]
IDS = [c[0] for c in CASES]
NAN = float("nan")
# More cases, each run in-process by default and through the command line in the slow step.
MORE_CASES = [
    ("empty GLUE dev file", "finetune", {"data.glue_dir": "@empty_dev"}, "RTE/dev.tsv is empty"),
    ("non-UTF-8 GLUE file", "finetune", {"data.glue_dir": "@latin1_glue"},
     "RTE/train.tsv:3: not UTF-8 text (bad byte at offset"),
    ("NaN STS-B score", "finetune", {"data.glue_dir": "@nan_score"},
     "STS-B/train.tsv:2: label 'nan' is not a finite number"),
    ("unknown GLUE label", "finetune", {"data.glue_dir": "@bad_label"},
     "RTE/train.tsv:2: label 'maybe' is not one of"),
    ("GLUE header without the label column", "finetune", {"data.glue_dir": "@renamed_column"},
     "STS-B/train.tsv:1: header"),
    ("GLUE training file missing", "finetune", {"data.glue_dir": "@missing_train"},
     "RTE/train.tsv not found"),
    ("GLUE problems found before training under --mode=all", "all", {"data.glue_dir": "@nan_score"},
     "STS-B/train.tsv:2: label 'nan' is not a finite number"),
    ("--mode=all without a GLUE directory", "all", {"data.glue_dir": ""},
     "config.data.glue_dir is not set but evaluate, finetune read GLUE tasks"),
    ("unknown GLUE task", "finetune", {"data.glue_dir": "@glue", "glue.tasks": ("rte", "mnli2")},
     "mnli2"),
    ("teacher without a tokenizer", "train", {"teacher": "@no_tokenizer"},
     "has neither tokenizer.json nor vocab.txt"),
    ("teacher config with a string layer count", "train", {"teacher": "@string_layers"},
     "num_hidden_layers='6' must be positive integers"),
    ("teacher tokenizer.json not JSON", "train", {"teacher": "@tokenizer_not_json"},
     "tokenizer.json is not valid JSON"),
    ("teacher config.json not JSON", "train", {"teacher": "@config_not_json"},
     "config.json is not valid JSON"),
    ("teacher tokenizer larger than its embedding table", "train", {"teacher": "@foreign_vocab"},
     "tokenizer has 30622 tokens but its embedding table only 30522 rows"),
    ("teacher with NaN weights", "train", {"teacher": "@nan_weights"},
     "weights are not finite in encoder.layer.0.output.dense.weight"),
    ("log_every 0", "train", {"train.log_every": 0}, "config.train.log_every=0 must be an integer >= 1"),
    ("checkpoint_every 0", "train", {"train.checkpoint_every": 0}, "config.train.checkpoint_every=0 must be"),
    ("keep_checkpoints 0", "train", {"train.keep_checkpoints": 0}, "config.train.keep_checkpoints=0 must be"),
    ("negative num_steps", "train", {"train.num_steps": -3},
     "config.train.num_steps=-3 must be an integer >= 1"),
    ("NaN learning rate", "train", {"train.learning_rate": NAN},
     "config.train.learning_rate=nan must be a finite number > 0"),
    ("zero learning rate", "train", {"train.learning_rate": 0.0}, "config.train.learning_rate=0.0 must be"),
    ("dropout 1", "train", {"train.dropout": 1.0}, "config.train.dropout=1.0 must be a number in [0, 1)"),
    ("batch size 0", "train", {"train.batch_size": 0}, "config.train.batch_size=0 must be an integer >= 1"),
    ("b2 of 1", "train", {"train.b2": 1.0}, "config.train.b2=1.0 must be"),
    ("negative weight decay", "train", {"train.weight_decay": -0.1},
     "config.train.weight_decay=-0.1 must be"),
    ("warmup as long as training", "train", {"train.warmup_steps": 5},
     "config.train.warmup_steps=5 must be below train.num_steps=5"),
    ("held-out split of 0", "train", {"data.heldout": 0}, "config.data.heldout=0 must be an integer >= 1"),
    ("seq_len below 8", "train", {"data.seq_len": 4}, "config.data.seq_len=4 must be an integer >= 8"),
    ("negative seed", "train", {"seed": -1}, "config.seed=-1 must be an integer >= 0"),
    ("two problems at once", "train", {"train.log_every": 0, "train.dropout": 1.5},
     "config.train.dropout=1.5 must be a number in [0, 1); config.train.log_every=0"),
    ("budget that does not parse", "search", {"search.budgets": ("flops<half",)},
     "config.search.budgets: budget 'flops<half' is not METRIC<=NUMBER"),
    ("no budget", "search", {"search.budgets": ()}, "config.search.budgets=() must be a non-empty list"),
    ("proxy selection without the proxy search", "search", {"search.selection": "proxy"},
     "selection='proxy' needs the proxy search"),
    ("unknown selection", "search", {"search.selection": "best"}, "config.search.selection='best' must be"),
    ("proxy search with 0 steps", "search",
     {"search.proxy.enabled": True, "search.proxy.steps": 0, "data.glue_dir": "@glue"},
     "config.search.proxy.steps=0 must be at least 1"),
    ("proxy search on a regression task", "search",
     {"search.proxy.enabled": True, "search.proxy.task": "stsb", "data.glue_dir": "@glue"},
     "regression task"),
    ("students_per_call 0", "search", {"search.students_per_call": 0},
     "config.search.students_per_call=0 must be an integer >= 1"),
    ("GLUE without learning rates", "finetune", {"data.glue_dir": "@glue", "glue.learning_rates": ()},
     "config.glue.learning_rates=() must be a non-empty list"),
    ("GLUE with 0 epochs", "finetune", {"data.glue_dir": "@glue", "glue.epochs": 0},
     "config.glue.epochs=0 must be an integer >= 1"),
    ("GLUE with negative epochs for one task", "finetune",
     {"data.glue_dir": "@glue", "glue.task_epochs.cola": -1},
     "config.glue.task_epochs.cola=-1 must be an integer >= 0"),
    ("GLUE regression bias unknown", "finetune", {"data.glue_dir": "@glue", "glue.regression_bias": "median"},
     "config.glue.regression_bias='median' must be zero or label_mean"),
    ("GLUE head input unknown", "finetune", {"data.glue_dir": "@glue", "glue.head_input": "max"},
     "config.glue.head_input='max' must be pooler, cls or mean"),
    ("GLUE warmup ratio above 1", "finetune", {"data.glue_dir": "@glue", "glue.warmup_ratio": 1.5},
     "config.glue.warmup_ratio=1.5 must be"),
    ("evaluation batch of 0", "evaluate", {"data.glue_dir": "@glue", "evaluate.batch_size": 0},
     "config.evaluate.batch_size=0 must be an integer >= 1"),
    ("misspelt mode", "serach", {}, "--mode='serach' is not one of all, train, search"),
]
MORE_IDS = [c[0] for c in MORE_CASES]


def _setup(case, overrides, tmp_path, teacher_dir, data_dir):
  """Materialises the '@' values; returns (overrides, fresh workdir)."""
  made = {}
  for key, value in overrides.items():
    if isinstance(value, str) and value.startswith("@"):
      name = value[1:]
      if name in ("not_bert", "missing_tensor", "truncated"):
        made[key] = str(_teacher_copy(teacher_dir, tmp_path, name))
      elif name == "empty":
        (tmp_path / "empty.txt").write_text("\n \n = Heading = \n")
        made[key] = str(tmp_path / "empty.txt")
      elif name == "small":
        (tmp_path / "small.txt").write_text("A few words of text.\nAnd a second short line.\n")
        made[key] = str(tmp_path / "small.txt")
      elif name == "latin1":
        (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 au lait".encode("latin-1"))
        made[key] = str(tmp_path / "latin1.txt")
      elif name == "bad_glue":
        made[key] = str(_glue_with_bad_row(data_dir, tmp_path))
      elif name == "glue":
        made[key] = str(data_dir / "glue")
      elif name in ("empty_dev", "latin1_glue", "nan_score", "bad_label", "renamed_column", "missing_train"):
        made[key] = str(_glue_variant(data_dir, tmp_path, name))
      elif name in ("no_tokenizer", "string_layers", "tokenizer_not_json", "config_not_json", "nan_weights",
                    "foreign_vocab"):
        made[key] = str(_teacher_variant(teacher_dir, tmp_path, name))
    else:
      made[key] = value
  workdir = tmp_path / "work"
  if case == "workdir cannot be written":
    (tmp_path / "a_file").write_text("not a directory")
    workdir = tmp_path / "a_file" / "work"
  return made, workdir


def _config(overrides, corpus):
  config = tiny_config()
  config.data.corpus = corpus
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.mark.parametrize("case,mode,overrides,message", CASES + MORE_CASES, ids=IDS + MORE_IDS)
def test_hostile_input_is_a_clear_error_leaving_nothing(case, mode, overrides, message, tmp_path,
                                                       teacher_dir, data_dir, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  made, workdir = _setup(case, overrides, tmp_path, teacher_dir, data_dir)
  config = _config(made, str(data_dir / "wikitext-2" / "valid.txt"))
  with pytest.raises(runner.USER_ERRORS) as info:
    runner.run(mode, config, workdir)
  assert message in " ".join(str(info.value).split())
  assert not workdir.exists()


@pytest.mark.parametrize("case,mode,overrides,message", CASES + [
    pytest.param(*c, marks=pytest.mark.slow) for c in MORE_CASES], ids=IDS + MORE_IDS)
def test_hostile_input_through_the_command_line(case, mode, overrides, message, tmp_path, teacher_dir,
                                                data_dir):
  made, workdir = _setup(case, overrides, tmp_path, teacher_dir, data_dir)
  flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in made.items()]
  result = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "main.py"), f"--config={ROOT}/tests/configs/tiny_test.py",
       f"--workdir={workdir}", f"--mode={mode}",
       f"--config.data.corpus={data_dir / 'wikitext-2' / 'valid.txt'}", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
  assert not workdir.exists()


def test_an_empty_workdir_is_refused_before_anything_is_written(data_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # an empty --workdir would otherwise mean the current directory
  config = _config({}, str(data_dir / "wikitext-2" / "valid.txt"))
  with pytest.raises(ValueError, match="--workdir is empty: give the directory"):
    runner.run("train", config, "")
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("pack,accepted", [(True, True), (False, True), ("no", False), (0, False)])
def test_a_boolean_setting_accepts_both_values_and_nothing_else(pack, accepted):
  import ml_collections

  from autodistil_jax import validate

  config = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)  # as a config file may give
  config.data.pack = pack
  problems = [p for p in validate.config_problems(config) if "data.pack" in p]
  assert (not problems) == accepted, problems
