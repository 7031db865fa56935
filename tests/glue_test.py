import json
import math

import numpy as np
import pytest

from autodistil_jax import glue
from autodistil_jax.workdir import Workdir

# Rows and label balance as MANIFEST.md lists them.
EXPECTED = {("cola", "train"): 8551, ("cola", "dev"): 1043, ("sst2", "dev"): 872, ("mrpc", "train"): 3668,
            ("mrpc", "dev"): 408, ("stsb", "dev"): 1500, ("rte", "train"): 2490, ("rte", "dev"): 277,
            ("qnli", "dev"): 5463, ("wnli", "train"): 635, ("wnli", "dev"): 71}


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_real_glue_tsv_files_read_completely(data_dir, task, split):
  ex = glue.read_tsv(glue.get_task(task), data_dir / "glue", split)
  assert len(ex.texts) == len(ex.labels) == EXPECTED[(task, split)]
  assert all(all(t.strip() for t in pair) for pair in ex.texts[:50])


def test_quirks_and_label_balance(data_dir):
  root = data_dir / "glue"
  mrpc = glue.read_tsv(glue.get_task("mrpc"), root, "train")
  assert np.bincount(mrpc.labels).tolist() == [1194, 2474] and len(mrpc.texts[0]) == 2
  cola = glue.read_tsv(glue.get_task("cola"), root, "train")
  assert np.bincount(cola.labels).tolist() == [2528, 6023] and len(cola.texts[0]) == 1
  rte = glue.read_tsv(glue.get_task("rte"), root, "train")
  assert any(t[0].startswith('"') for t in rte.texts)  # quoting is off
  stsb = glue.read_tsv(glue.get_task("stsb"), root, "dev")
  assert stsb.labels.dtype == np.float32 and 0 <= stsb.labels.min() and stsb.labels.max() <= 5
  qnli = glue.read_tsv(glue.get_task("qnli"), root, "dev")
  assert np.bincount(qnli.labels).tolist() == [2702, 2761]


def test_malformed_rows_name_file_and_line(tmp_path):
  (tmp_path / "RTE").mkdir()
  (tmp_path / "RTE" / "dev.tsv").write_text(
      "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"RTE/dev.tsv:3: malformed row with 2 columns"):
    glue.read_tsv(glue.get_task("rte"), tmp_path, "dev")
  (tmp_path / "RTE" / "dev.tsv").write_text(
      "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"dev.tsv:2: label 'maybe' is not one of"):
    glue.read_tsv(glue.get_task("rte"), tmp_path, "dev")
  with pytest.raises(FileNotFoundError, match="config.data.glue_dir"):
    glue.read_tsv(glue.get_task("cola"), tmp_path, "dev")
  with pytest.raises(ValueError, match="unknown GLUE task 'mnlii'"):
    glue.get_task("mnlii")


def test_pair_encoding_uses_segments(teacher_dir):
  from autodistil_jax.data import load_tokenizer
  ex = glue.Examples([("a cat", "a dog sat")], np.array([1], np.int32))
  enc = glue.encode(ex, load_tokenizer(teacher_dir), 16)
  assert enc["input_ids"].shape == (1, 16)
  assert enc["token_type_ids"][0].tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
  assert enc["attention_mask"][0].sum() == 8


def test_metrics_on_fixed_predictions():
  labels = np.array([1, 1, 0, 0, 1, 0, 1, 1])
  preds = np.array([1, 0, 0, 1, 1, 0, 1, 1])
  tp, tn, fp, fn = 4, 2, 1, 1
  mrpc = glue.compute_metrics(glue.get_task("mrpc"), preds, labels)
  assert mrpc["accuracy"] == 6 / 8 and math.isclose(mrpc["f1"], 2 * tp / (2 * tp + fp + fn))
  mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  assert math.isclose(glue.compute_metrics(glue.get_task("cola"), preds, labels)["mcc"], mcc)
  scores = np.array([0.1, 0.4, 0.35, 0.8])
  gold = np.array([0.0, 1.0, 2.0, 3.0])
  sts = glue.compute_metrics(glue.get_task("stsb"), scores, gold)
  assert math.isclose(sts["pearson"], np.corrcoef(scores, gold)[0, 1], rel_tol=1e-9)
  assert math.isclose(sts["spearman"], 0.8)  # ranks 1,3,2,4 vs 1,2,3,4
  assert glue.main_score(glue.get_task("stsb"), sts) == (sts["pearson"] + sts["spearman"]) / 2


@pytest.mark.parametrize("task", ["rte", "cola", "stsb"])
def test_tfds_glue_gives_the_same_examples(data_dir, tmp_path, monkeypatch, task):
  """tfds's own glue builder, prepared offline from the real TSV files (its download replaced by
  a local folder), read through read_split("tfds:...") equals the TSV reader."""
  import shutil

  import tensorflow_datasets as tfds
  import tensorflow_datasets.text.glue  # noqa: F401

  t = glue.get_task(task)
  src = tmp_path / "glue_zip" / t.directory
  src.mkdir(parents=True)
  for split in ("train", "dev"):
    shutil.copy(data_dir / "glue" / t.directory / f"{split}.tsv", src)
  test_tsv = {"rte": "index\tsentence1\tsentence2\n0\tA.\tB.\n", "cola": "index\tsentence\n0\tA.\n",
              "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
                      "0\tg\tf\t2017\t0\ts\ts\tA.\tB.\n"}
  (src / "test.tsv").write_text(test_tsv[task])  # unlabeled; tfds needs one row per split
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, url: str(tmp_path / "glue_zip"))
  tfds.builder(f"glue/{task}", data_dir=str(tmp_path / "tfds")).download_and_prepare(
      file_format="array_record")
  for split in ("train", "dev"):
    from_tsv = glue.read_split(t, data_dir / "glue", split)
    from_tfds = glue.read_split(t, f"tfds:{tmp_path / 'tfds'}", split)
    assert from_tfds.texts == from_tsv.texts
    np.testing.assert_array_equal(from_tfds.labels, from_tsv.labels)
  with pytest.raises(FileNotFoundError, match="download_and_prepare"):
    glue.read_split(glue.get_task("wnli"), f"tfds:{tmp_path / 'tfds'}", "dev")


def test_summary_leaves_out_of_the_average_the_tasks_the_teacher_did_not_learn(tmp_path):
  from autodistil_jax import finetune_report

  def result(model, task, score, trivial):
    path = Workdir(tmp_path).glue_result(model, task)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"params": 1e6, "flops": 1e9, "score_mean": score, "score_std": 0.0,
                                "trivial_score": trivial}))
  result("teacher", "cola", 0.0, 0.0)  # majority class: MCC 0, learnt nothing
  result("teacher", "stsb", 0.85, 0.0)
  result("student", "cola", 0.1, 0.0)
  result("student", "stsb", 0.75, 0.0)
  summary = finetune_report.write_summary(Workdir(tmp_path), ["teacher", "student"], ["cola", "stsb"])
  lines = summary.read_text().splitlines()
  assert lines[0] == "| model | params | GFLOPs | cola (not learnt) | stsb | avg |"
  assert lines[2].endswith("| 85.0 |") and lines[3].endswith("| 75.0 |")
  assert "| 0.0 ± 0.0 † |" in lines[2] and "| 10.0 ± 0.0 |" in lines[3]  # the cells that learnt nothing
  assert any(line.startswith("† at or within a point") for line in lines)
  assert "Left out of the average" in lines[-1] and "cola (0.0 vs 0.0)" in lines[-1]
  assert glue.trivial_score(glue.get_task("sst2"), np.array([1, 1, 0]), np.array([1, 0, 1, 1])) == 0.75
