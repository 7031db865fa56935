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


@pytest.mark.parametrize("case,mode,overrides,message", CASES, ids=IDS)
def test_hostile_input_is_a_clear_error_leaving_nothing(case, mode, overrides, message, tmp_path,
                                                       teacher_dir, data_dir, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  made, workdir = _setup(case, overrides, tmp_path, teacher_dir, data_dir)
  config = _config(made, str(data_dir / "wikitext-2" / "valid.txt"))
  with pytest.raises(runner.USER_ERRORS) as info:
    runner.run(mode, config, workdir)
  assert message in " ".join(str(info.value).split())
  assert not workdir.exists()


@pytest.mark.parametrize("case,mode,overrides,message", CASES, ids=IDS)
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
