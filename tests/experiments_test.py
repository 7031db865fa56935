"""experiments/parameter_movement.py, search_validation.py and regression_bias.py on a SuperLM of
the seconds-long test config; head_input.py and slice_ablation.py on slices of the teacher;
every program's flags."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from train_test import tiny_config

from autodistil_jax import runner

ROOT = pathlib.Path(__file__).resolve().parents[1]


def toy_superlm(data_dir: pathlib.Path, tmp_path: pathlib.Path, steps: int, search: bool = False,
                config_arg: str = "") -> list[str]:
  """Trains (and searches) the toy sub-space(s) into tmp_path/work; returns the flags that give an
  experiment script the same config, data and workdir."""
  corpus, glue = str(data_dir / "wikitext-2" / "valid.txt"), str(data_dir / "glue")
  config = tiny_config(config_arg, num_steps=steps)
  config.data.corpus, config.data.glue_dir = corpus, glue
  for stage in ("train", "search") if search else ("train",):
    runner.run(stage, config, tmp_path / "work")
  return [f"--workdir={tmp_path / 'work'}", f"--out={tmp_path / 'out'}",
          f"--config={ROOT}/tests/configs/tiny_test.py" + (f":{config_arg}" if config_arg else ""),
          f"--config.data.corpus={corpus}",
          f"--config.data.glue_dir={glue}", f"--config.train.num_steps={steps}"]


def run_experiment(script: str, flags: list[str], timeout: int,
                   ok: bool = True) -> subprocess.CompletedProcess:
  done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *flags], capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
  assert (done.returncode == 0) == ok, done.stderr[-3000:]
  return done


@pytest.mark.slow
def test_parameter_movement_shows_the_last_layers_output_untrained(data_dir, tmp_path):
  """Under the paper's objective the last layer's attention output and FFN get no gradient, so
  they move only by weight decay, while its queries and keys move (docs/objective.md section 1)."""
  run_experiment("parameter_movement.py", [*toy_superlm(data_dir, tmp_path, steps=4), "--subspace=mini"], 600)
  report = (tmp_path / "out" / "work.md").read_text()
  row = lambda name: [float(x) for x in next(
      line for line in report.splitlines() if line.startswith(f"| layers/{name} |")).split("|")[2:4]]
  assert row("ffn_out_bias")[1] == 0.0 and row("attn_ln_scale")[1] == 0.0  # last layer: no gradient
  assert row("ffn_out_kernel")[1] < 0.01  # weight decay alone (percent)
  assert row("q_kernel")[1] > 0.01 and row("ffn_out_kernel")[0] > 0.01  # what the relations reach
  grads = [line for line in report.splitlines() if line.startswith("| smallest")]
  assert len(grads) == 2 and all(line.split(" | ")[-2] == "0.00e+00" for line in grads)  # L1: layer 2 unused


@pytest.mark.slow
def test_search_validation_scores_and_fine_tunes_spread_students(data_dir, tmp_path):
  """experiments/search_validation.py on a searched toy sub-space: 4 students spread over the
  search's ranking, the suite on each, then fine-tuned on STS-B and MRPC two per call (the scores
  kept after each call); taus for every measure; a re-run fine-tunes nothing again."""
  out = tmp_path / "out"
  flags = [*toy_superlm(data_dir, tmp_path, steps=2, search=True), "--config.glue.regression_bias=label_mean",
           "--students=4", "--bootstrap=50", "--finetune_tasks=stsb,mrpc", "--students_per_call=2"]
  run_experiment("search_validation.py", flags, 1200)
  stored = {t: json.loads((out / f"mini-{t}.json").read_text()) for t in ("stsb", "mrpc")}
  assert all(len(s["scores"]) == 4 and s["inputs"]["max_train_examples"] == 32 for s in stored.values())
  assert stored["stsb"]["inputs"]["steps"] == 32 // 8  # one epoch of the protocol's 32 examples
  assert 1.5 < stored["stsb"]["inputs"]["head_bias"] < 4 and stored["mrpc"]["inputs"]["head_bias"] == 0
  report = (out / "results.md").read_text()
  header = next(line for line in report.splitlines() if line.startswith("| sub-space | students |"))
  assert "fine-tuned stsb" in header and "fine-tuned mrpc" in header
  row = next(line for line in report.splitlines() if line.startswith("| mini | 4 |"))
  cells = row.split(" | ")[2:]
  assert "nan" not in row and len(cells) == 7  # five suite measures and two tasks
  assert all("[" in c or c.startswith("— (all ") for c in cells)  # a tau, or every student tied
  run_experiment("search_validation.py", flags, 1200)
  assert {t: json.loads((out / f"mini-{t}.json").read_text()) for t in stored} == stored


@pytest.mark.slow
def test_search_validation_reports_every_scored_subspace_not_only_this_runs(data_dir, tmp_path):
  """A run restricted to one sub-space (--subspaces) keeps the other sub-spaces' stored rows in
  results.md, and says "not run" where they lack a task's fine-tuned scores; a run whose students
  or protocol differ from what --out holds is refused before it writes."""
  flags = [*toy_superlm(data_dir, tmp_path, steps=2, search=True, config_arg="two"), "--students=3",
           "--bootstrap=20"]
  run_experiment("search_validation.py", flags, 1200)  # the suite on both sub-spaces
  _scale_stored_losses(tmp_path / "out" / "mini.json", 1 + 1e-7)  # float rounding of a rebuilt SuperLM
  again = run_experiment("search_validation.py", [*flags, "--subspaces=mini", "--finetune_tasks=stsb"], 1200)
  assert "mini: 3 students in" not in again.stdout  # its suite rows reused, not scored again
  rows = {line.split(" | ")[0]: line for line in (tmp_path / "out" / "results.md").read_text().splitlines()
          if line.startswith(("| mini | 3 |", "| mini2 | 3 |", "| all (pooled) | 6 |"))}
  assert set(rows) == {"| mini", "| mini2", "| all (pooled)"}  # the taus of both sub-spaces and pooled
  assert "not run" not in rows["| mini"] and rows["| mini"].count(" | ") == 7  # 5 measures and stsb
  assert rows["| mini2"].endswith("— (not run) |") and rows["| all (pooled)"].endswith("— (not run) |")
  out = tmp_path / "out"
  assert (out / "mini-stsb.json").is_file() and not (out / "mini2-stsb.json").exists()
  # Results of another search (other students) or another protocol are refused, nothing touched.
  before = {f.name: f.read_bytes() for f in out.iterdir()}
  for changed, stale in (("--students=2", "mini.json (other students"),
                         ("--finetune_epochs=2", "mini-stsb.json (other students or fine-tuning")):
    done = run_experiment("search_validation.py",
                          [*flags, "--subspaces=mini", "--finetune_tasks=stsb", changed], 600, ok=False)
    assert "holds results of another search or protocol" in done.stderr and stale in done.stderr
  assert {f.name: f.read_bytes() for f in out.iterdir()} == before
  _scale_stored_losses(out / "mini.json", 1 + 1e-3)  # another search's losses: refused as well
  done = run_experiment("search_validation.py", [*flags, "--subspaces=mini"], 600, ok=False)
  assert "mini.json (other students or search losses)" in done.stderr


def _scale_stored_losses(cell: pathlib.Path, factor: float) -> None:
  stored = json.loads(cell.read_text())
  for row in stored["rows"]:
    row["search_loss"] *= factor
  cell.write_text(json.dumps(stored))


@pytest.mark.slow
def test_regression_bias_starts_the_head_at_the_label_mean(data_dir, tmp_path):
  """experiments/regression_bias.py on a toy SuperLM: STS-B from a zero bias starts at about the
  labels' squared mean plus their variance, from the label mean at about their variance."""
  run_experiment("regression_bias.py", [*toy_superlm(data_dir, tmp_path, steps=2), "--subspace=mini",
                                         "--arch=2,48,2.0,3", "--arch=1,32,1.0,2"], 900)
  rows = [line.split(" | ") for line in (tmp_path / "out" / "mini-stsb-32.md").read_text().splitlines()
          if line.startswith(("| zero", "| label_mean"))]
  students = ["L2_H48_R2_A3", "L1_H32_R1_A2"]
  assert [r[1] for r in rows] == students * 2 and [r[0] for r in rows[:2]] == ["| zero (0.000)"] * 2
  assert rows[2][0] == rows[3][0] and rows[2][0].startswith("| label_mean (")
  assert 1.5 < float(rows[2][0].split("(")[1].rstrip(")")) < 4  # the 32 labels' mean
  first = [float(r[3]) for r in rows]
  assert min(first[:2]) > 2 * max(first[2:])  # the offset is what a zero bias must first learn


@pytest.mark.slow
def test_head_input_fine_tunes_each_head_input_and_reuses_its_results(teacher, teacher_dir, data_dir,
                                                                     tmp_path):
  """experiments/head_input.py on a small slice of the teacher: one STS-B result per head input,
  each made with its own config.glue.head_input, in one table; a re-run trains nothing again."""
  from autodistil_jax import export, model
  from autodistil_jax.search_space import Arch
  from autodistil_jax.workdir import Workdir

  student = export.export_student(model.extract_student(teacher, Arch(1, 64, 1.0, 2)), Arch(1, 64, 1.0, 2),
                                  tmp_path / "student", teacher_dir=teacher_dir, teacher_name="t",
                                  subspace="t", seq_len=64)
  flags = [f"--workdir={tmp_path / 'w'}", f"--data_dir={data_dir}", f"--models={student}",
           "--head_inputs=mean,pooler", "--config.glue.max_train_examples=64", "--config.glue.epochs=1",
           "--config.glue.seq_len=64", f"--out={tmp_path / 'out'}"]
  run_experiment("head_input.py", flags, 600)
  results = {h: Workdir.at(tmp_path / "w" / h).glue_result("student", "stsb") for h in ("mean", "pooler")}
  stored = {h: json.loads(path.read_text()) for h, path in results.items()}
  assert {h: r["inputs"]["head_input"] for h, r in stored.items()} == {"mean": "mean", "pooler": "pooler"}
  assert stored["mean"]["runs"][0]["epochs"] != stored["pooler"]["runs"][0]["epochs"]
  rows = [line for line in (tmp_path / "out" / "results.md").read_text().splitlines()
          if line.startswith("| student |")]
  assert [r.split(" | ")[1] for r in rows] == ["mean", "pooler"] and "not run" not in "".join(rows)
  again = run_experiment("head_input.py", flags, 600)
  assert "step/s" not in again.stderr and {h: json.loads(p.read_text()) for h, p in results.items()} == stored


# (script, the flag that makes its command complete, a bad flag, what its one line says)
BAD_FLAGS = [("head_input.py", "--teacher", "--head_inputs=pooler,max", "--head_inputs: ['max'] not in"),
             ("head_input.py", "--teacher", "--seeds=0,one", "--seeds: ['one'] are not integers"),
             ("slice_ablation.py", "--arch=1,64,1,2", "--arch=6,176,2.5",
              "--arch='6,176,2.5' is not 'L,H,R,A'"),
             ("slice_ablation.py", "--arch=1,64,1,2", "--arch=6,176,2.5,16",
              "max heads is 16 but the teacher has 12"),
             ("slice_ablation.py", "--arch=1,64,1,2", "--seeds=0,one", "--seeds: ['one'] are not integers")]


@pytest.mark.parametrize("script, required, flag, message", BAD_FLAGS)
def test_a_fine_tuning_experiment_refuses_bad_flags_in_one_line_before_any_write(data_dir, tmp_path, script,
                                                                                 required, flag, message):
  command = [sys.executable, str(ROOT / "experiments" / script), f"--workdir={tmp_path / 'w'}",
             f"--data_dir={data_dir}", required, f"--out={tmp_path / 'out'}", flag]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
  assert done.stderr.startswith("error: ") and message in done.stderr
  assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_slice_ablation_slices_each_arch_fine_tunes_it_and_reuses_both(data_dir, tmp_path):
  """experiments/slice_ablation.py: each --arch sliced from the teacher (its layers, width and heads
  cut as asked), fine-tuned, in one table; a re-run slices and trains nothing again."""
  from autodistil_jax import hf_io
  from autodistil_jax.workdir import Workdir

  flags = [f"--workdir={tmp_path / 'w'}", f"--data_dir={data_dir}", "--arch=1,64,1,2", "--arch=2,96,2,3",
           "--config.glue.max_train_examples=64", "--config.glue.epochs=1", "--config.glue.seq_len=64",
           f"--out={tmp_path / 'out'}"]
  run_experiment("slice_ablation.py", flags, 600)
  wd = Workdir.at(tmp_path / "w")
  shapes = [hf_io.read_config(wd.baseline_dir("sliced", name)) for name in ("L1_H64_R1_A2", "L2_H96_R2_A3")]
  assert [(c.depth, c.hidden, c.ffn, c.heads) for c in shapes] == [(1, 64, 64, 2), (2, 96, 192, 3)]
  results = [wd.glue_result(f"sliced-{name}", "stsb") for name in ("L1_H64_R1_A2", "L2_H96_R2_A3")]
  stored = [json.loads(path.read_text()) for path in results]
  page = (tmp_path / "out" / "results.md").read_text()
  rows = [line for line in page.splitlines() if line.startswith("| sliced-")]
  assert [r.split(" | ")[0] for r in rows] == ["| sliced-L1_H64_R1_A2", "| sliced-L2_H96_R2_A3"]
  assert "| GFLOPs at length 64 |" in page  # the fine-tuning length, not the search's
  assert "not run" not in "".join(rows) and stored[0]["flops"] < stored[1]["flops"]
  again = run_experiment("slice_ablation.py", flags, 600)
  assert "step/s" not in again.stderr and [json.loads(p.read_text()) for p in results] == stored


@pytest.mark.parametrize("flag, message", [("--variants=paper,nope", "unknown variants ['nope']"),
                                           ("--steps=20,x", "--steps: ['x'] are not positive")])
def test_learning_curves_refuses_bad_flags_in_one_line_before_any_write(data_dir, tmp_path, flag, message):
  command = [sys.executable, str(ROOT / "experiments" / "learning_curves.py"), f"--workdir={tmp_path / 'w'}",
             f"--data_dir={data_dir}", f"--out={tmp_path / 'out'}", flag]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1 and done.stderr.strip().splitlines() == [done.stderr.strip()]
  assert message in done.stderr and not (tmp_path / "w").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("experiment", ["headline.py", "k_ablation.py"])
def test_an_experiment_refuses_a_missing_data_root_in_one_line_before_any_write(tmp_path, experiment):
  """What a user must fix ends an experiment as launch/main.py ends: `error: ...`, exit 2, no
  traceback (autodistil_jax.cli.one_line_errors), and nothing written."""
  command = [sys.executable, str(ROOT / "experiments" / experiment), f"--workdir={tmp_path / 'w'}",
             f"--data_dir={tmp_path / 'no_data'}", f"--out={tmp_path / 'out'}"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
  assert done.stderr.startswith("error: ") and "no_data/glue" in done.stderr
  assert "Traceback" not in done.stderr
  assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()


PROGRAMS_AND_REQUIRED_FLAGS = {
  "launch/main.py": ["--config=configs/demo.py", "--workdir={tmp}/w"],
  "experiments/headline.py": ["--workdir={tmp}/w", "--data_dir={tmp}/d"],
  "experiments/k_ablation.py": ["--workdir={tmp}/w", "--data_dir={tmp}/d"],
  "experiments/learning_curves.py": ["--workdir={tmp}/w", "--data_dir={tmp}/d", "--out={tmp}/o"],
  "experiments/parameter_movement.py": ["--workdir={tmp}/w", "--out={tmp}/o"],
  "experiments/regression_bias.py": ["--workdir={tmp}/w", "--out={tmp}/o", "--arch=6,288,2.5,12"],
  "experiments/search_validation.py": ["--workdir={tmp}/w", "--out={tmp}/o"],
  "experiments/gpu_bundle.py": ["--data_dir={tmp}/d", "--out={tmp}/o", "--nowheels"],
  "experiments/head_input.py": ["--workdir={tmp}/w", "--data_dir={tmp}/d", "--teacher"],
  "experiments/slice_ablation.py": ["--workdir={tmp}/w", "--data_dir={tmp}/d", "--arch=1,64,1,2"],
}


@pytest.mark.parametrize("program", sorted(PROGRAMS_AND_REQUIRED_FLAGS))
def test_every_program_refuses_a_positional_argument_before_any_work(tmp_path, program):
  """Every input is a flag (autodistil_jax.cli.run): a stray word, e.g. a path typed without its
  --flag=, is named in one line, and nothing is read or written."""
  flags = [f.format(tmp=tmp_path) for f in PROGRAMS_AND_REQUIRED_FLAGS[program]]
  done = subprocess.run([sys.executable, str(ROOT / program), *flags, "stray"], capture_output=True,
                        text=True, timeout=120, cwd=ROOT)
  assert done.returncode == 1 and "unexpected arguments: ['stray']" in done.stderr, done.stderr
  assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())
