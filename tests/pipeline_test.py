"""train -> search -> export through launch/main.py, as a user runs it (tiny config)."""

import csv
import json
import pathlib
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from autodistil_jax.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(workdir, mode, corpus, *extra):
  return subprocess.run(
      [sys.executable, str(ROOT / "launch" / "main.py"), f"--config={ROOT}/tests/configs/tiny_test.py",
       f"--workdir={workdir}", f"--mode={mode}", f"--config.data.corpus={corpus}", *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_train_search_export(data_dir, tmp_path):
  corpus = str(data_dir / "wikitext-2" / "valid.txt")
  for mode in ("train", "search", "export"):
    result = _main(tmp_path, mode, corpus)
    assert result.returncode == 0, result.stderr[-3000:]
  with open(Workdir(tmp_path).search_file("results"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 16 and all(float(r["loss"]) > 0 and int(r["tokens"]) > 0 for r in rows)
  assert set(rows[0]) >= {"subspace", "layers", "hidden", "mlp_ratio", "heads", "params", "flops",
                          "paper_flops", "loss", "tokens"}
  selected = json.loads((Workdir(tmp_path).search_file("selected")).read_text())
  assert set(selected) == {"flops<=0.5*teacher", "params<=12M"}
  summary = json.loads((Workdir(tmp_path).search_file("summary")).read_text())
  assert summary["timing"]["mini"]["compilations"] == 1
  assert (Workdir(tmp_path).search_file("pareto")).stat().st_size > 10_000
  exported = sorted(Workdir(tmp_path).exports())
  assert exported and all(p.startswith("mini-L") for p in exported)
  card = (Workdir(tmp_path).exports()[exported[0]] / "README.md").read_text()
  assert "| SuperLM training | 5 steps of batch 8 x 32 tokens" in card and "| sub-space options |" in card
  assert "under the budget `" in card and "library_name: sentence-transformers" in card

  again = _main(tmp_path, "export", corpus)  # an existing export is never overwritten silently
  assert again.returncode != 0 and "export targets exist" in again.stderr
  glue_dir = f"--config.data.glue_dir={data_dir / 'glue'}"
  finetuned = _main(tmp_path, "finetune", corpus, glue_dir, "--config.glue.models=()")
  assert finetuned.returncode == 0, finetuned.stderr[-3000:]
  summary = (Workdir(tmp_path).glue_summary()).read_text().splitlines()
  table = [line for line in summary if line.startswith("|")]
  # 32 examples, 1 epoch: the teacher may not beat the majority class, and the table then says so.
  assert table[0].replace(" (not learnt)", "") == "| model | params | GFLOPs | rte | stsb | avg |"
  assert ("(not learnt)" in table[0]) == any("Left out of the average" in line for line in summary)
  assert table[2].startswith("| teacher | 22.71M |") and len(table) == 2 + 1 + len(exported)
  result = json.loads((Workdir(tmp_path).glue_result("teacher", "rte")).read_text())
  assert result["train_examples"] == 32 and 0 <= result["score_mean"] <= 1 and result["seconds"] > 0
  assert set(result["runs"][0]["best"]["dev"]) == {"accuracy"}
  card = (Workdir(tmp_path).exports()[exported[0]] / "README.md").read_text()
  assert card.count("## GLUE (fine-tuned") == 1 and "| RTE |" in card and "| STS-B |" in card
  glue_results = [r for r in ModelCard(card).data.eval_results if r.metric_name.endswith("(glue)")]
  assert sorted(r.dataset_config for r in glue_results) == ["rte", "stsb"]

  evaluated = _main(tmp_path, "evaluate", corpus, glue_dir)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  table = (Workdir(tmp_path).suite_file("md")).read_text().splitlines()
  assert table[2].startswith("| teacher | teacher | L6_H384_R4_A12 |") and "| 1.000 |" in table[2]
  kinds = [line.split(" | ")[1] for line in table[2:]]
  assert kinds == ["teacher"] + ["searched", "sliced", "random"] * len(exported), kinds
  with open(Workdir(tmp_path).suite_file("csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(table) - 2 and all(-100 <= float(r["sts_spearman"]) <= 100 for r in rows)
  assert (Workdir(tmp_path).suite_file("png")).stat().st_size > 10_000
  card = (Workdir(tmp_path).exports()[exported[0]] / "README.md").read_text()
  assert card.count("## Evaluation (task-agnostic suite") == 1 and f"| {exported[0]} | searched |" in card
  assert card.count("## GLUE (fine-tuned") == 1  # the suite's section sits beside fine-tuning's
  sources = [r.metric_name.rsplit("(", 1)[1] for r in ModelCard(card).data.eval_results]
  assert sources.count("glue)") == 2 and sources.count("suite)") == 2  # STS-B and the SST-2 probe

  again = _main(tmp_path, "evaluate", corpus, glue_dir)  # its card section is replaced, not repeated
  assert again.returncode == 0, again.stderr[-3000:]
  assert (Workdir(tmp_path).exports()[exported[0]] / "README.md").read_text().count("## Evaluation (") == 1

  # --mode=all over the work done stage by stage with the same settings: every stage is reused.
  whole = _main(tmp_path, "all", corpus, glue_dir)
  assert whole.returncode == 0, whole.stderr[-3000:]
  assert whole.stdout.count("done before with these settings, skipped") == 5, whole.stdout
  assert "all stages finished" in whole.stdout
  assert whole.stdout.rstrip().splitlines()[-1].startswith("| random-"), whole.stdout[-2000:]
  changed = _main(tmp_path, "all", corpus, glue_dir, "--config.evaluate.probe_train_examples=32")
  assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
  assert "evaluate.probe_train_examples (64 -> 32)" in changed.stderr and "--redo=evaluate" in changed.stderr

  impossible = _main(tmp_path, "search", corpus, "--config.search.budgets=('params<=1K',)")
  assert impossible.returncode != 0 and "is met by no student: the cheapest" in impossible.stderr
  assert (Workdir(tmp_path).search_file("selected")).read_text() == json.dumps(selected, indent=2) + "\n"
  _check_proxy_search(tmp_path, corpus, glue_dir)


def _check_proxy_search(workdir, corpus, glue_dir):
  """The task-proxy search over the trained SuperLM: refused before any work when a chunk cannot
  fit; else every student scored, selection by proxy score, kept scores reused on a re-run."""
  flags = [glue_dir, "--config.search.proxy.enabled=True", "--config.search.selection=proxy",
           "--config.search.proxy.steps=3", "--config.search.proxy.batch_size=8",
           "--config.search.proxy.seq_len=32", "--config.search.proxy.dev_examples=64"]
  too_big = _main(workdir, "search", corpus, *flags, "--config.search.proxy.students_per_call=1000000")
  assert too_big.returncode == 2 and len(too_big.stderr.strip().splitlines()) == 1, too_big.stderr
  assert "students_per_call=1000000 needs about" in too_big.stderr
  assert not Workdir(workdir).proxy_scores("mini").exists()
  proxied = _main(workdir, "search", corpus, *flags)
  assert proxied.returncode == 0, proxied.stderr[-3000:]
  assert "proxy search on sst2: 16 students" in proxied.stdout and "Kendall's tau" in proxied.stdout
  with open(Workdir(workdir).search_file("results"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 16 and all(0 <= float(r["proxy_score"]) <= 1 for r in rows)
  summary = json.loads(Workdir(workdir).search_file("summary").read_text())
  assert summary["selection"] == "proxy" and set(summary["pareto_front"]) == {"agnostic", "proxy"}
  tau = summary["proxy"]["kendall_tau"]["all"]
  assert summary["proxy"]["task"] == "sst2" and (tau is None or -1 <= tau <= 1)
  # 3 steps of batch 8 teach these students nothing: the search says so.
  assert summary["proxy"]["at_constant"] > 8
  assert f"{summary['proxy']['at_constant']} of 16 students score no better" in proxied.stdout
  for budget, row in json.loads(Workdir(workdir).search_file("selected").read_text()).items():
    limit, metric = row["budget_limit"], budget.split("<=")[0]
    assert row["proxy_score"] == max(float(r["proxy_score"]) for r in rows if float(r[metric]) <= limit)
  again = _main(workdir, "search", corpus, *flags)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads(Workdir(workdir).search_file("summary").read_text())["proxy"]["timing"]["mini"][
      "reused"] == 16
  # A sample of the sub-space: its students' kept scores are reused, the others cannot be selected.
  sample = _main(workdir, "search", corpus, *flags, "--config.search.proxy.students=5")
  assert sample.returncode == 0, sample.stderr[-3000:]
  with open(Workdir(workdir).search_file("results"), encoding="utf-8") as f:
    scored = [r for r in csv.DictReader(f) if r["proxy_score"]]
  assert len(scored) == 5
  summary = json.loads(Workdir(workdir).search_file("summary").read_text())
  assert summary["proxy"]["timing"]["mini"]["reused"] == 5
  chosen = json.loads(Workdir(workdir).search_file("selected").read_text()).values()
  assert {r["name"] for r in chosen} <= {r["name"] for r in scored}


@pytest.mark.parametrize("override,message", [
    ("--config.train.batch_sise=4", "batch_sise"),
    ("--config.data.seq_len=1024", "exceeds the teacher's max_position_embeddings"),
    ("--config.train.hidden_relation_weight=-1.0", "hidden_relation_weight=-1.0 must be a finite number"),
])
def test_bad_configs_fail_with_one_line(data_dir, tmp_path, override, message):
  result = _main(tmp_path, "train", str(data_dir / "wikitext-2" / "valid.txt"), override)
  assert result.returncode != 0 and message in result.stderr
