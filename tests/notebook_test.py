"""The Colab notebook, executed cell by cell as a user runs it (nbclient), on the CPU with the tiny
test configuration and the local data: only its settings cell is replaced."""

import json
import pathlib

import pytest

from autodistil_jax.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the whole pipeline at tiny size, through a Jupyter kernel
def test_the_notebook_runs_every_cell(data_dir, tmp_path):
  import nbclient
  import nbformat

  notebook = nbformat.read(ROOT / "notebooks" / "autodistil_demo.ipynb", as_version=4)
  [settings] = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  settings.source = "\n".join([
      'PROJECT_GIT_URL = ""', 'CONFIG = "tests/configs/tiny_test.py"', f'WORKDIR = "{tmp_path / "run"}"',
      f'DATA_DIR = "{data_dir}"', 'GLUE_TASKS = ("rte", "stsb")', 'EXTRA_FLAGS = ""'])
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT / "notebooks")}})
  client.execute()
  outputs = {i: "".join(o.get("text", "") for o in c.get("outputs", [])) for i, c in enumerate(notebook.cells)
             if c.cell_type == "code"}
  assert any("cpu" in text.lower() for text in outputs.values())  # jax.devices()
  last = outputs[max(outputs)]
  assert "export" in last and "(2, " in last  # an export loaded; two sentence embeddings
  run = Workdir(tmp_path / "run")
  assert run.glue_summary().is_file() and json.loads(run.selected_file.read_text())
