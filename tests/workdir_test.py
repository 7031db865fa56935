"""The workdir as a user meets it through launch/main.py: changed settings are named and refused,
never silently reused; nothing is moved or lost; one process at a time; killed runs' leftovers
are cleared. And no module but workdir.py spells a path inside a run directory."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from autodistil_jax import atomic, records
from autodistil_jax.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _launch(workdir, mode, corpus, *extra, wait=True):
  command = [sys.executable, str(ROOT / "launch" / "main.py"), f"--config={ROOT}/tests/configs/tiny_test.py",
             f"--workdir={workdir}", f"--mode={mode}", f"--config.data.corpus={corpus}", *extra]
  if wait:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _digest(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(data_dir):
  return str(data_dir / "wikitext-2" / "valid.txt")


def test_changed_settings_are_named_and_refused_and_redo_replaces_keeping_the_old(corpus, data_dir, tmp_path):
  wd = Workdir(tmp_path)
  assert _launch(tmp_path, "train", corpus).returncode == 0
  before = _digest(wd.superlm("mini"))
  # A search under another sub-space shape: refused before reading a checkpoint, nothing moved.
  other = _launch(tmp_path, "search", corpus, "--config.subspaces.mini.hidden=(32,40)")
  assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
  assert "subspaces.mini.hidden ([32, 48] -> [32, 40])" in other.stderr and "--redo=train" in other.stderr
  assert _digest(wd.superlm("mini")) == before
  assert not wd.checkpoints("mini").with_name("checkpoints.corrupt").exists()
  # More steps: not a silent skip (the learning-rate schedule ends at num_steps, so the finished
  # run is not a prefix of the longer one): refused under "all" and "train", naming the key.
  for mode, glue in (("all", f"--config.data.glue_dir={data_dir / 'glue'}"), ("train", "")):
    longer = _launch(tmp_path, mode, corpus, "--config.train.num_steps=7", *filter(None, [glue]))
    assert longer.returncode == 2 and "train.num_steps (5 -> 7)" in longer.stderr, longer.stderr
  assert _digest(wd.superlm("mini")) == before
  # --redo=train: the old SuperLM is moved aside whole, and the new one trained to 7 steps.
  redone = _launch(tmp_path, "train", corpus, "--config.train.num_steps=7", "--redo=train")
  assert redone.returncode == 0, redone.stderr[-2000:]
  [aside] = list((tmp_path / "replaced").iterdir())
  assert _digest(aside / wd.superlm("mini").relative_to(tmp_path)) == before
  assert json.loads(wd.superlm_record("mini").read_text())["inputs"]["train.num_steps"] == 7
  wrong = _launch(tmp_path, "search", corpus, "--redo=train")
  assert wrong.returncode == 2 and "--redo=train is not a stage that --mode=search runs" in wrong.stderr


@pytest.mark.slow  # about 75 s on 2 cores: in CI's slow step, keeping the default run short
def test_glue_results_are_reused_only_for_the_same_inputs_and_finite_scores(corpus, data_dir, tmp_path):
  glue = tmp_path / "glue_data"
  for task in ("RTE", "STS-B"):
    shutil.copytree(data_dir / "glue" / task, glue / task)
  wd, run = Workdir(tmp_path / "run"), lambda: _launch(
      tmp_path / "run", "finetune", corpus, f"--config.data.glue_dir={glue}")
  assert run().returncode == 0
  stsb = wd.glue_result("teacher", "stsb").read_text()
  # The RTE dev data changes (one label flipped): its result is recomputed, STS-B's reused.
  dev = glue / "RTE" / "dev.tsv"
  lines = dev.read_text(encoding="utf-8").splitlines(keepends=True)
  label = lines[1].rstrip("\n").rsplit("\t", 1)
  flipped = "entailment" if label[1] == "not_entailment" else "not_entailment"
  dev.write_text(lines[0] + f"{label[0]}\t{flipped}\n" + "".join(lines[2:]), encoding="utf-8")
  again = run()
  assert again.returncode == 0, again.stderr[-2000:]
  assert "teacher rte: the stored result was made with other inputs: data" in again.stdout, again.stdout
  assert "teacher stsb" not in again.stdout.replace("| teacher", "") and wd.glue_result(
      "teacher", "stsb").read_text() == stsb
  # A non-finite score is never reused.
  result = json.loads(stsb)
  wd.glue_result("teacher", "stsb").write_text(json.dumps({**result, "score_mean": float("nan")}))
  third = run()
  assert third.returncode == 0, third.stderr[-2000:]
  assert "teacher stsb: the stored result has a score that is not finite" in third.stdout
  assert json.loads(wd.glue_result("teacher", "stsb").read_text())["score_mean"] == result["score_mean"]
  assert len(list((wd.root / "replaced").rglob("results.json"))) == 2  # both old results kept
  # More epochs for RTE alone: RTE is fine-tuned again for 2 epochs, STS-B reused.
  fourth = _launch(tmp_path / "run", "finetune", corpus, f"--config.data.glue_dir={glue}",
                   "--config.glue.task_epochs.rte=2")
  assert fourth.returncode == 0, fourth.stderr[-2000:]
  assert "teacher rte: the stored result was made with other inputs: epochs" in fourth.stdout, fourth.stdout
  assert "teacher stsb:" not in fourth.stdout
  assert [len(r["epochs"]) for r in json.loads(wd.glue_result("teacher", "rte").read_text())["runs"]] == [2]


def test_one_process_per_workdir_and_a_killed_holder_is_taken_over(corpus, tmp_path):
  first = _launch(tmp_path, "train", corpus, "--config.train.num_steps=100000", wait=False)
  try:
    started = Workdir(tmp_path).superlm_record("mini")  # written once the lock is held
    deadline = time.time() + 300
    while not started.is_file() and first.poll() is None and time.time() < deadline:
      time.sleep(0.2)
    assert started.is_file(), first.communicate()[1][-2000:]
    second = _launch(tmp_path, "train", corpus, "--config.train.num_steps=100000")
    assert first.poll() is None  # refused while the holder still runs: it did not wait for it
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"is in use by pid {first.pid} on " in second.stderr
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()
  third = _launch(tmp_path, "train", corpus, "--config.train.num_steps=3")
  assert f"an earlier run (pid {first.pid} on" in third.stdout and "taken over" in third.stdout
  assert third.returncode == 2 and "train.num_steps (100000 -> 3)" in third.stderr  # its own record


def test_leftovers_of_killed_runs_are_removed_at_the_next_start(corpus, tmp_path):
  wd = Workdir(tmp_path)
  search_tmp = atomic.temp_dir_for(wd.search_dir)  # as a search killed mid-write leaves it
  (search_tmp / "pareto.png").write_bytes(b"half")
  export_tmp = atomic.temp_dir_for(wd.export_dir("mini", "L1_H32_R1_A2"))
  (export_tmp / "model.safetensors").write_bytes(b"\0" * 10)
  record_tmp = wd.glue_result("teacher", "rte").parent / f".results.json.tmp-{os.getpid()}"
  record_tmp.parent.mkdir(parents=True)
  record_tmp.write_text("{")
  result = _launch(tmp_path, "search", corpus)  # fails (nothing trained), after clearing them
  assert result.returncode == 2 and "run --mode=train first" in result.stderr, result.stderr
  fresh = _launch(tmp_path / "never_made", "search", corpus)  # the same in a workdir that is not there
  for failed in (result, fresh):  # the one line, and no library's traceback after it
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
  assert not (tmp_path / "never_made").exists()
  assert "removed 3 temporary file(s) left by a killed run" in result.stdout
  assert not any(p.exists() for p in (search_tmp, export_tmp, record_tmp))


def test_records_name_every_changed_key_and_files_by_content(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("x")
  b.write_text("x")
  same = records.files_identity([a])
  os.utime(a, (1, 1))  # touched, same bytes: the same input
  assert records.files_identity([a]) == same and records.files_identity([a, b]) != same
  a.write_text("y")
  assert records.files_identity([a]) != same
  old = {"train.num_steps": 5, "seed": 0, "subspaces.mini.hidden": [32, 48]}
  new = {"train.num_steps": 7, "seed": 0, "data.pack": False}
  assert records.changed_keys(old, new) == [
      "data.pack (unset -> false)", "subspaces.mini.hidden ([32, 48] -> unset)", "train.num_steps (5 -> 7)"]
  path = tmp_path / "record.json"
  assert records.check(path, old, "x", "") is False  # no record yet
  records.write(path, old)
  assert records.check(path, dict(old), "x", "")
  with pytest.raises(records.StaleInputs, match=r"train.num_steps \(5 -> 7\)"):
    records.check(path, {**old, "train.num_steps": 7}, "x", "")
  # A key added later is unchanged at the value older records were made with, and only there.
  assert records.check(path, {**old, "train.embedding_relation_weight": 0.0}, "x", "")
  with pytest.raises(records.StaleInputs, match=r"embedding_relation_weight \(0.0 -> 1.0\)"):
    records.check(path, {**old, "train.embedding_relation_weight": 1.0}, "x", "")
  # A GLUE result's inputs (config.glue's keys, unprefixed) made before head_input existed.
  assert records.changed_keys({"epochs": 3}, {"epochs": 3, "head_input": "pooler"}) == []
  assert records.changed_keys({"epochs": 3}, {"epochs": 3, "head_input": "mean"}) == [
      'head_input ("pooler" -> "mean")']
  # A finetune stage recorded before glue.task_epochs existed: unchanged at 0 (glue.epochs), only there.
  assert records.changed_keys({"glue.epochs": 3}, {"glue.epochs": 3, "glue.task_epochs.cola": 0}) == []
  assert records.changed_keys({"glue.epochs": 3}, {"glue.epochs": 3, "glue.task_epochs.cola": 10}) == [
      "glue.task_epochs.cola (0 -> 10)"]


# Path pieces of a run directory: only workdir.py may join them onto a directory.
_LAYOUT = ("superlm", "checkpoints", "search", "export", "evaluate", "glue", "stages", "data_cache",
           "tensorboard", "replaced", "baselines", "metrics.jsonl", "selected.json", "results.json",
           "results.csv", "pareto.png", "summary.json", "summary.md", "suite.md", "suite.csv",
           "record.json", ".lock")


def test_no_run_path_is_spelled_outside_the_workdir_module():
  joined = re.compile(r'/\s*f?"(' + "|".join(re.escape(p) for p in _LAYOUT) + r')"')
  offenders = []
  for folder in ("autodistil_jax", "experiments", "bench", "launch", "tests"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      if path.name == "workdir.py" or path == pathlib.Path(__file__):
        continue
      for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if joined.search(line) and "data_dir" not in line:  # GLUE data folders are not run paths
          offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


def test_the_archive_holds_the_results_and_leaves_out_the_weights(tmp_path):
  import tarfile

  wd = Workdir.at(tmp_path / "run")
  kept = [wd.stage_record("train"), wd.search_file("results"), wd.suite_file("md"),
          wd.glue_result("teacher", "rte"), wd.superlm_record("base"), wd.metrics_file]
  left = [wd.checkpoints("base") / "40" / "state", wd.export_dir("base", "L1") / "model.safetensors",
          wd.baseline_dir("sliced", "L1") / "config.json", wd.data_cache / "corpus.npy",
          wd.experiment_file("headline", "glue_train.txt")]
  for path in kept + left:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
  wd.write_archive(tmp_path / "a.tar.gz", leave_out=(wd.experiment_file("headline", "glue_train.txt"),))
  with tarfile.open(tmp_path / "a.tar.gz") as tar:
    files = {n for n in tar.getnames() if tar.getmember(n).isfile()}
  assert files == {str(p.relative_to(tmp_path)) for p in kept}


def test_moves_aside_in_the_same_second_each_keep_their_copy(tmp_path, monkeypatch):
  wd = Workdir.at(tmp_path / "run")
  result = wd.glue_result("teacher", "rte")
  monkeypatch.setattr(time, "strftime", lambda *_: "20261129-120000")  # one second for all three
  folders = []
  for text in ("first", "second", "third"):
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(text)
    folders.append(wd.move_aside([result]))
  assert len(set(folders)) == 3 and not result.exists()
  assert [(f / result.relative_to(wd.root)).read_text() for f in folders] == ["first", "second", "third"]
