"""The issue-8 experiment end to end on the seconds-long test config (slow: about 2 CPU minutes)."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_headline_experiment_runs_and_reports(data_dir, tmp_path):
  command = [sys.executable, str(ROOT / "experiments" / "headline.py"),
             f"--config={ROOT}/tests/configs/tiny_test.py", f"--workdir={tmp_path / 'run'}",
             f"--data_dir={data_dir}", f"--out={tmp_path / 'docs'}", "--config.glue.seeds=(0,1)",
             "--config.glue.tasks=('rte',)"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  report = (tmp_path / "docs" / "results.md").read_text()
  assert "All cells have run." in report and "--config.glue.seeds=(0,1)" in report  # the command as run
  kinds = [line.split(" | ")[1] for line in report.splitlines() if line.startswith("| ") and " ± " in line]
  assert [k.split(" ")[0] for k in kinds] == ["teacher", "searched", "sliced", "alone", "random"]
  assert ("holds" in report or "does NOT hold" in report) and "(b) sliced from the teacher" in report
  assert "5 timed cells:" in report and "of 1 tasks" in report  # per-task wins in the verdict
  assert (tmp_path / "docs" / "figures" / "headline_glue_vs_flops.png").stat().st_size > 10_000
  # (c) is distilled before any fine-tuning: the claim's first pass holds the teacher, the
  # searched student (of sub-space "mini"), then its (b), (d) and (c).
  lines = done.stdout.splitlines()
  cells = [i for i, line in enumerate(lines) if " rte: " in line and not line.startswith("[headline]")]
  order = [lines[i].split(" ")[0].split("-")[0] for i in cells]
  assert order == ["teacher", "mini", "sliced", "random", "alone"], order  # mini: the searched one
  distil_alone = next(i for i, line in enumerate(lines) if "train alone" in line)
  assert distil_alone < cells[0], lines
  again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # all done: skipped
  assert again.returncode == 0 and "train alone" not in again.stdout and "[headline] report" in again.stdout
  # A fresh checkout: the workdir is gone, the kept results are not. Retrained to the same weights,
  # every model's cells are restored and reused, none fine-tuned again.
  kept = sorted(p.relative_to(tmp_path / "docs" / "workdir").as_posix()
                for p in (tmp_path / "docs" / "workdir").rglob("*.json"))
  assert kept == ["glue/" + m + "/rte/results.json" for m in sorted(
      line.split(" ")[0] for line in (lines[i] for i in cells))] + ["headline/timing.json"], kept
  shutil.rmtree(tmp_path / "run")
  # The wall times are not restored: the fresh workdir redoes its SuperLMs, which must not count twice.
  kept_timing = tmp_path / "docs" / "workdir" / "headline" / "timing.json"
  kept_timing.write_text(json.dumps({**json.loads(kept_timing.read_text()), "finetune rte": 1e9}))
  fresh = subprocess.run(command, capture_output=True, text=True, timeout=1200)
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  assert f"[headline] {len(kept) - 1} results restored" in fresh.stdout
  assert json.loads((tmp_path / "run" / "headline" / "timing.json").read_text())["finetune rte"] < 1e9
  assert not [line for line in fresh.stdout.splitlines() if " rte: " in line and "lr=" not in line
              and not line.startswith("[headline]")], fresh.stdout[-3000:]
  assert (tmp_path / "docs" / "results.md").read_text().count(" ± ") == report.count(" ± ")


def test_kept_results_come_back_into_a_fresh_workdir_and_never_over_a_newer_record(tmp_path):
  sys.path.insert(0, str(ROOT / "experiments"))
  from kept_results import KeptResults

  from autodistil_jax.workdir import Workdir

  wd, out = Workdir.at(tmp_path / "run"), tmp_path / "docs"
  result = wd.glue_result("teacher", "rte")
  result.parent.mkdir(parents=True)
  result.write_text(json.dumps({"score_mean": 0.6}))
  KeptResults(wd, out).keep(result)
  kept_copy = out / "workdir" / result.relative_to(wd.root)  # the same place under the kept root
  assert json.loads(kept_copy.read_text()) == {"score_mean": 0.6}
  assert KeptResults(wd, out).restore() == []  # the workdir has it: nothing to bring back
  result.write_text(json.dumps({"score_mean": 0.7}))  # recomputed here, not yet kept
  assert KeptResults(wd, out).restore() == [] and json.loads(result.read_text())["score_mean"] == 0.7
  shutil.rmtree(tmp_path / "run")
  fresh = Workdir.at(tmp_path / "run")
  assert KeptResults(fresh, out).restore() == [fresh.glue_result("teacher", "rte")]
  assert json.loads(fresh.glue_result("teacher", "rte").read_text()) == {"score_mean": 0.6}
  assert KeptResults(Workdir.at(tmp_path / "other"), tmp_path / "nothing_kept").restore() == []


def _mean_pooled(checkpoint, sentences):
  import numpy as np

  from autodistil_jax import data, hf_io

  encoder = hf_io.load_bert(checkpoint)
  batch = data.load_tokenizer(checkpoint)(sentences, padding=True, return_tensors="np")
  hidden = np.asarray(encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).hidden)
  mask = batch["attention_mask"][..., None]
  return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.slow
def test_gpu_headline_runs_from_its_bundle_at_toy_sizes(data_dir, teacher_dir, one_device_env, tmp_path):
  """experiments/headline_gpu.sh as the GPU machine runs it (pack here, run there), at the toy
  sizes of configs/headline.py:gpu,runlocal (about 5 CPU minutes)."""
  import tarfile

  import numpy as np

  bundle, out = tmp_path / "bundle", tmp_path / "out"
  env = {**one_device_env, "BUNDLE": str(bundle), "OUT": str(out), "RUNLOCAL": "1", "LIMIT": "1700",
         "WORKDIR": str(tmp_path / "work"), "TMPDIR": str(tmp_path)}
  script = str(ROOT / "experiments" / "headline_gpu.sh")
  refused = subprocess.run(["bash", script, "run"], env=env, capture_output=True, text=True, timeout=60)
  assert refused.returncode == 2 and "run 'headline_gpu.sh pack DATA_DIR' first" in refused.stderr
  packed = subprocess.run(["bash", script, "pack", str(data_dir), "--nowheels"], env=env,
                          capture_output=True, text=True, timeout=600)
  assert packed.returncode == 0, packed.stderr[-3000:]
  size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
  assert size < 50 * 2**20  # with the wheels (5 MB) and the repository, under the 64 MiB a call carries
  sentences = ["A man is playing a guitar.", "The cat sleeps on the warm windowsill all afternoon."]
  half, full = _mean_pooled(bundle / "teacher", sentences), _mean_pooled(teacher_dir, sentences)
  cosine = (half * full).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(full, axis=1)
  assert cosine.min() > 0.9999, cosine  # the float16 teacher encodes as the original

  done = subprocess.run(["bash", script, "run"], env=env, capture_output=True, text=True, timeout=1800)
  log = (out / "headline.log").read_text()
  assert done.returncode == 0, log[-3000:]
  report = (out / "results.md").read_text()
  assert "All cells have run." in report and "configs/headline.py:gpu,runlocal" in report
  assert "GLUE training sets of rte, stsb, one per sequence" in report  # the gpu variant's transfer set
  suite = report.split("## The evaluation suite")[1].split("## The claim")[0]
  assert all(f"| {kind}" in suite or f"{kind}-" in suite for kind in ("teacher", "sliced", "random", "alone"))
  assert {p.name for p in (out / "figures").iterdir()} == {
      "headline_pareto.png", "headline_glue_vs_flops.png", "headline_suite.png"}
  with tarfile.open(out / "workdir.tar.gz") as tar:
    names = tar.getnames()
  assert "work/stages/evaluate.json" in names and "work/glue/summary.md" in names
  assert not [n for n in names if "/checkpoints" in n or n.startswith("work/baselines")]


@pytest.mark.slow
def test_k_ablation_trains_searches_and_scores_every_arm(data_dir, one_device_env, tmp_path):
  """experiments/k_ablation.py at toy sizes: K=3 sub-spaces of 2 steps each against one space of
  all their values (1,800 students) trained for 6 steps and against the 3 sub-spaces trained for 6
  steps each; the suite on each arm's picks."""
  from autodistil_jax.workdir import Workdir

  command = [sys.executable, str(ROOT / "experiments" / "k_ablation.py"),
             f"--config={ROOT}/configs/headline.py:cpu,runlocal", f"--workdir={tmp_path / 'run'}",
             f"--data_dir={data_dir}", f"--out={tmp_path / 'docs'}", "--arms=k3,k1,k3_long"]
  one_device = one_device_env
  done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=one_device)
  assert done.returncode == 0, done.stderr[-3000:]
  report = (tmp_path / "docs" / "results.md").read_text()
  assert "`k3`: 3 SuperLM(s) of 2 steps each, 448 students" in report
  assert "`k1`: 1 SuperLM(s) of 6 steps each, 1800 students" in report
  assert "`k3_long`: 3 SuperLM(s) of 6 steps each, 448 students" in report
  suite, glue = report.split("GLUE dev after fine-tuning")  # the suite's table, then GLUE's
  rows = [line for line in suite.splitlines() if line.startswith("| flops<=")]
  assert [r.split(" | ")[1] for r in rows] == ["k3", "k1", "k3_long"] * 2
  assert not [r for r in rows if "—" in r or "not searched" in r]  # every pick scored, and its twin
  assert all(r.split(" | ")[3] == "all" for r in rows if r.split(" | ")[1] == "k1")
  glue_cells = [line.split(" | ")[3:] for line in glue.splitlines() if line.startswith("| flops<=")]
  assert len(glue_cells) == 6 and {c.strip(" |") for row in glue_cells for c in row} == {"—"}  # no --glue
  again = subprocess.run(command + ["--report_only"], capture_output=True, text=True, timeout=600,
                         env=one_device)
  assert again.returncode == 0 and (tmp_path / "docs" / "results.md").read_text() == report
  # The kK arm read from a finished run of the same config elsewhere (as the headline's): checked,
  # never trained or fine-tuned there; k1's stages reused, its picks fine-tuned on --glue_tasks.
  shutil.copytree(tmp_path / "run" / "k3", tmp_path / "elsewhere")
  borrowing = [*command[:-1], "--arms=k3,k1", f"--kK_from={tmp_path / 'elsewhere'}", "--glue",
               "--glue_tasks=rte", "--config.glue.seeds=(0,)"]
  stale = subprocess.run(borrowing + ["--config.train.learning_rate=1e-3"], capture_output=True, text=True,
                         timeout=600, env=one_device)
  assert stale.returncode != 0 and "its train stage ran with other settings than this arm: " \
      "train.learning_rate (4e-05 -> 0.001)" in stale.stderr, stale.stderr[-2000:]
  done = subprocess.run(borrowing, capture_output=True, text=True, timeout=900, env=one_device)
  assert done.returncode == 0, done.stderr[-3000:]
  report = (tmp_path / "docs" / "results.md").read_text()
  assert f"`k3` is read from {tmp_path / 'elsewhere'}" in report
  glue_rows = [line.split(" | ") for line in report.split("GLUE dev after fine-tuning")[1].splitlines()
               if line.startswith("| flops<=")]
  assert [(r[1], r[-1].startswith("—")) for r in glue_rows] == [("k3", True), ("k1", False)] * 2, glue_rows
  assert all("(n=1; by epoch" in r[-1] and "seed 0: " in r[-1] for r in glue_rows if r[1] == "k1")
  assert not Workdir.at(tmp_path / "elsewhere").glue_root.exists() and "[1/5] train ..." not in done.stdout
  # --report_only runs nothing, yet never reports a borrowed arm as matching without checking it.
  stale = subprocess.run(borrowing + ["--report_only", "--config.train.learning_rate=1e-3"],
                         capture_output=True, text=True, timeout=600, env=one_device)
  assert stale.returncode != 0 and "train.learning_rate (4e-05 -> 0.001)" in stale.stderr, stale.stderr[-999:]


@pytest.mark.parametrize("flags, message", [
    (["--arms=k3,k2"], "--arms: unknown ['k2']; this config's arms are ['k3', 'k1', 'k3_long']"),
    (["--arms=k3,k1", "--kK_from=/nowhere"], "--kK_from=/nowhere: no finished SuperLM training there"),
    (["--arms=k1", "--kK_from=/nowhere"], "--kK_from: the k3 arm is not in --arms=k1"),
    (["--glue_tasks=stsb,nli"], "unknown GLUE task 'nli'")])
def test_k_ablation_refuses_bad_flags_before_any_work(data_dir, tmp_path, flags, message):
  command = [sys.executable, str(ROOT / "experiments" / "k_ablation.py"),
             f"--config={ROOT}/configs/headline.py:cpu,runlocal", f"--workdir={tmp_path / 'run'}",
             f"--data_dir={data_dir}", *flags]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode != 0 and message in done.stderr and not (tmp_path / "run").exists(), done.stderr


def test_a_cut_short_headline_compares_per_task_what_has_run():
  """Before every cell has run the claim gives no verdict, but per task the searched student has
  run: the share of the teacher's score (where it has run) and the gap to each baseline run there,
  with the seed noise of the difference."""
  sys.path.insert(0, str(ROOT / "experiments"))
  import headline_report

  budget = "flops<=0.5*teacher"
  row = lambda kind, cells: {"model": kind, "kind": kind, "budgets": [budget], "gflops": 1.0,
                             "cells": {t: (m, sd, 3) for t, (m, sd) in cells.items()}}
  rows = [row("teacher", {"stsb": (86.0, 0.3), "cola": (30.0, 1.0)}),
          row("searched", {"stsb": (81.0, 0.4)}),
          row("sliced", {"stsb": (80.0, 0.3)}), row("random", {"stsb": (10.0, 4.0)})]
  lines = headline_report.claim(rows, budget)
  assert lines[0] == f"- {budget}: not every cell has run; no verdict."
  assert lines[1:] == ["  - so far, stsb: searched 81.0 ± 0.4 = 94% of the teacher's 86.0; against "
                       "sliced 80.0 (+1.0, seed std of the difference ~0.5), random 10.0 (+71.0, "
                       "seed std of the difference ~4.0)"]
  assert headline_report.claim(rows[:1], budget) == [f"- {budget}: not every cell has run; no verdict."]
  without_teacher = headline_report.claim(rows[1:3], budget)  # the teacher's cells not run yet
  assert without_teacher[1] == ("  - so far, stsb: searched 81.0 ± 0.4; against sliced 80.0 (+1.0, seed "
                                "std of the difference ~0.5)")
  rows[0]["trivial"] = {"stsb": 76.0}  # as MRPC's majority class: the gain over it is what was learnt
  assert headline_report.claim(rows, budget)[1].startswith(
      "  - so far, stsb: searched 81.0 ± 0.4 = 94% of the teacher's 86.0, 50% of its 10.0 points over "
      "learning nothing (76.0); against sliced")


def test_the_report_names_each_task_that_has_its_own_epochs():
  from autodistil_jax.defaults import demo_config
  from autodistil_jax.finetune_report import epochs_text

  g = demo_config().glue
  assert epochs_text(g, ["stsb", "cola", "rte"]) == f"{g.epochs} epochs"
  g.task_epochs.cola, g.task_epochs.rte = 10, g.epochs  # the same as glue.epochs: not named
  assert epochs_text(g, ["stsb", "cola", "rte"]) == f"{g.epochs} epochs (CoLA 10)"
  assert epochs_text(g, ["stsb"]) == f"{g.epochs} epochs"  # CoLA not run here
