"""The issue-8 experiment end to end on the seconds-long test config (slow: about 2 CPU minutes)."""

import pathlib
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
  # The claim's cells run first; (c) is distilled only after them and is fine-tuned last.
  lines = done.stdout.splitlines()
  cells = [i for i, line in enumerate(lines) if " rte: " in line and not line.startswith("[headline]")]
  order = [lines[i].split(" ")[0].split("-")[0] for i in cells]
  assert order[0] == "teacher" and order[-1] == "alone" and sorted(order[2:4]) == ["random", "sliced"], order
  distil_alone = next(i for i, line in enumerate(lines) if "train alone" in line)
  assert cells[3] < distil_alone < cells[-1], lines
  again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # all done: skipped
  assert again.returncode == 0 and "train alone" not in again.stdout and "[headline] report" in again.stdout
