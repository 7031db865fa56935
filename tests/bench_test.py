"""The benchmark scripts run end to end at toy sizes and agree with what they compare against.
No timing is asserted: only that each script works and its two sides compute the same thing."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench(script, tmp_path, *flags):
  out = tmp_path / f"{script}.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user runs it
  result = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *flags, f"--json={out}"],
                          cwd=ROOT / "bench", capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.slow
def test_search_bench_scores_the_same_losses_both_ways(tmp_path):
  r = _bench("search", tmp_path, "--subspace=tiny", "--batch=4", "--seq_len=32", "--batches=1",
             "--static_students=3", "--students_per_call=8")
  assert r["students"] > 0 and r["compilations"] == 1
  assert r["max_loss_diff"] <= 1e-5


@pytest.mark.slow
def test_proxy_search_bench_gets_the_same_scores_both_ways(data_dir, tmp_path):
  r = _bench("proxy_search", tmp_path, f"--glue_dir={data_dir / 'glue'}", "--subspace=tiny", "--batch=4",
             "--seq_len=32", "--students=4", "--alone=2", "--steps=2", "--dev_examples=32")
  assert r["students"] == 4 and r["alone_students_timed"] == 2 and set(r["programs"]) == {"vmap", "map"}
  assert all(p["max_score_diff"] <= 1e-6 for p in r["programs"].values())
  # the compile clock hears every side's compilations (each alone student compiles its own step)
  assert 0 < r["alone_compile_s"] < r["alone_s"] and r["speedup_bound"] > 1
  assert all(0 < p["compile_s"] < p["seconds"] for p in r["programs"].values())


@pytest.mark.slow
def test_versus_torch_bench_starts_from_the_same_loss(tmp_path):
  r = _bench("versus_torch", tmp_path, "--batch=2", "--seq_len=32", "--rounds=1")
  assert r["initial_loss_diff"] <= 1e-5 and r["ours_s"] > 0 and r["torch_s"] > 0


@pytest.mark.slow
def test_train_step_and_memory_benches_run(tmp_path):
  r = _bench("train_step", tmp_path, "--subspaces=tiny", "--batch=2", "--seq_len=32", "--rounds=1")
  (tiny,) = r["results"]
  assert len(tiny["archs"]) == 4 and tiny["useful_fraction"] > 0 and tiny["overhead_vs_static4"] > 0
  m = _bench("memory", tmp_path, "--subspaces=tiny", "--batch=2", "--seq_len=32")
  assert m["results"][0]["xla_total_mib"] > m["results"][0]["params_mib"] > 0


@pytest.mark.slow
def test_glue_reference_runs_both_sides_and_resumes(data_dir, tmp_path):
  flags = [f"--data_dir={data_dir / 'glue'}", f"--out={tmp_path / 'cells'}", "--tasks=rte", "--seeds=0",
           "--max_train=48", "--epochs=1", "--batch_size=16", "--seq_len=64"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  command = [sys.executable, str(ROOT / "bench" / "glue_reference.py"), *flags]
  first = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  cells = {p.name: json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*.json")}
  assert set(cells) == {"ours-rte-0.json", "torch-rte-0.json"}
  for cell in cells.values():  # both sides saw the same examples under the same protocol
    assert cell["protocol"]["train_examples"] == 48 and len(cell["epochs"]) == 1
    assert 0.0 <= cell["epochs"][0]["dev"]["accuracy"] <= 1.0
  again = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
  assert again.returncode == 0 and "seed 0:" not in again.stdout  # finished cells are not rerun
  assert "| rte |" in again.stdout


@pytest.mark.slow
def test_pooler_readouts_give_the_teachers_known_zero_shot_score(data_dir, tmp_path):
  """The mean readout is the teacher's sentence-transformers embedding: its STS-B dev Spearman is
  the suite's, 86.7 (tests/evaluate_test.py checks the suite's against sentence-transformers' own
  score); [CLS] and the pooler are read from the same forward pass."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  command = [sys.executable, str(ROOT / "bench" / "pooler_readouts.py"), f"--data_dir={data_dir / 'glue'}",
             f"--out={tmp_path}"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  teacher = json.loads((tmp_path / "readouts.json").read_text())["teacher"]
  assert abs(teacher["mean"] - 86.7) < 0.1, teacher
  assert 0 < teacher["pooler_std"] < 1 and teacher["cls"] != teacher["pooler"]
  assert "| teacher | 86.7 |" in done.stdout


@pytest.mark.slow
def test_gpu_script_runs_every_part_at_toy_sizes_and_profiles_the_step(one_device_env, tmp_path):
  env = {**one_device_env, "TINY": "1", "OUT": str(tmp_path)}
  result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True,
                          timeout=1800, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  status = (tmp_path / "status.txt").read_text().split("\n")
  failed = [line for line in status if line and " rc=0 " not in line]
  assert not failed, [(line, (tmp_path / f"{line.split()[0]}.log").read_text()[-2000:]) for line in failed]
  for name in ("train_step", "train_step_b2", "train_step_b4", "versus_torch", "search", "memory"):
    assert json.loads((tmp_path / f"{name}.json").read_text())
  profile = json.loads((tmp_path / "profile" / "profile.json").read_text())
  cats = profile["categories"]
  # Every part of the step is found in the trace, and the parts add up to the ops' busy time.
  for part in ("matmul", "attention", "layer_norm", "relation_loss", "optimizer"):
    assert cats[part]["ms"] > 0, part
  assert cats["unattributed"]["ms"] < 0.05 * profile["busy_ms"]
  assert sum(c["ms"] for c in cats.values()) == pytest.approx(profile["busy_ms"])
  assert profile["phases"]["teacher"]["flops"] > 0 and profile["phases"]["students"]["flops"] > 0


def test_hlo_breakdown_counts_matmul_flops_inside_loops_and_names_scopes():
  sys.path.insert(0, str(ROOT / "bench"))
  import hlo_breakdown
  import jax
  import jax.numpy as jnp

  def f(x, w):
    with jax.named_scope("optimizer"):
      y = jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ w), x)
    return jnp.sum(y)

  x, w = jnp.ones((64, 128)), jnp.ones((128, 128))
  table = hlo_breakdown.instruction_table(jax.jit(f).lower(x, w).compile().as_text())
  matmuls = [op for op in table.values() if op.flops]
  assert sum(op.flops * op.executions for op in matmuls) == 3 * 2 * 64 * 128 * 128
  assert {op.category for op in matmuls} == {"optimizer"}
