"""A workdir on a local disk and behind a URL (an fsspec in-memory filesystem standing in for
gs://): the same records, outputs, exports, metrics, caches and fine-tuning results."""

import json

import jax
import numpy as np
import pytest
from train_test import tiny_config

from autodistil_jax import atomic, data, export, hf_io, records, runner, storage
from autodistil_jax.metrics import MetricsWriter, read_metrics
from autodistil_jax.model import extract_student, get_params
from autodistil_jax.search_space import Arch
from autodistil_jax.workdir import Workdir


@pytest.fixture(params=["local", "memory"])
def wd(request, tmp_path):
  if request.param == "local":
    yield Workdir.at(tmp_path / "run")
    return
  root = Workdir.at(f"memory://{tmp_path.name}/run")  # one bucket per test: the fs is global
  yield root
  storage.rmtree(root.root)


def test_records_outputs_redo_and_leftovers(wd):
  inputs = {"train.num_steps": 5}
  records.write(wd.stage_record("search"), inputs)
  assert records.check(wd.stage_record("search"), inputs, "x", "")
  with pytest.raises(records.StaleInputs, match=r"train.num_steps \(5 -> 6\)"):
    records.check(wd.stage_record("search"), {"train.num_steps": 6}, "x", "")
  # A folder written whole: a temporary sibling renamed into place, replacing the old one.
  for text in ("first", "second"):
    tmp = atomic.temp_dir_for(wd.search_dir)
    (tmp / wd.search_file("summary").name).write_text(text)
    atomic.replace_dir(tmp, wd.search_dir)
  assert wd.search_file("summary").read_text() == "second"
  assert [p.name for p in wd.root.iterdir() if p.name.startswith(".search")] == []
  # --redo's move aside keeps the layout; leftovers of a killed run are removed.
  aside = wd.move_aside(wd.stage_outputs("search"))
  moved = aside / str(wd.search_file("summary").relative_to(wd.root))
  assert moved.read_text() == "second" and not wd.search_dir.exists()
  left = atomic.temp_dir_for(wd.export_dir("mini", "L1_H32_R1_A2"))
  (left / "config.json").write_text("{")
  assert [p.name for p in wd.remove_leftovers()] == [left.name] and not left.exists()
  with wd.held():
    pass


def test_metrics_and_corpus_cache(wd, teacher_dir, data_dir):
  writer = MetricsWriter(wd, "superlm/mini")
  writer.write(1, {"loss/largest": 0.5})
  writer.write(2, {"loss/largest": 0.25})
  writer.close()
  again = MetricsWriter(wd, "superlm/mini", resume_step=1)  # a resumed run drops steps after 1
  again.write(2, {"loss/largest": 0.2})
  again.close()
  assert [(r["step"], r["loss/largest"]) for r in read_metrics(wd)] == [(1, 0.5), (2, 0.2)]
  corpus = str(data_dir / "wikitext-2" / "valid.txt")
  fresh = data.load_corpus(corpus, teacher_dir, 32, cache_dir=wd.data_cache)
  cached = data.load_corpus(corpus, teacher_dir, 32, cache_dir=wd.data_cache)
  assert [p.suffix for p in wd.data_cache.iterdir()] == [".npy"]
  np.testing.assert_array_equal(fresh, cached)


def test_an_export_there_loads_as_the_student(wd, teacher, teacher_dir):
  arch = Arch(2, 96, 2.0, 4)
  target = export.export_student(teacher, arch, wd.export_dir("mini", arch.name), teacher_dir=teacher_dir,
                                 teacher_name="all-MiniLM-L6-v2", subspace="mini", seq_len=32)
  assert list(wd.exports()) == [f"mini-{arch.name}"]
  with storage.local_checkpoint(str(target)) as local:
    loaded = hf_io.load_bert(local)
  expected = get_params(extract_student(teacher, arch))
  for a, b in zip(jax.tree.leaves(get_params(loaded)), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(a, b)


def test_finetuning_results_there_are_reused_on_a_rerun(wd, data_dir, capsys):
  config = tiny_config()
  config.data.glue_dir = str(data_dir / "glue")
  config.glue.tasks = ("rte",)
  runner.run("finetune", config, str(wd.root))
  result = json.loads(wd.glue_result("teacher", "rte").read_text())
  assert result["train_examples"] == 32 and np.isfinite(result["score_mean"])
  assert wd.glue_summary().read_text().startswith("| model | params |")
  capsys.readouterr()
  runner.run("finetune", config, str(wd.root))
  assert "teacher rte:" not in capsys.readouterr().out  # reused, not recomputed
