"""A real 2-process data-parallel run on localhost (jax.distributed, CPU collectives over gloo),
launched exactly as on a pod: the same launch/main.py command on every process."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from train_test import _flat, tiny_config

from autodistil_jax import data, parallel, train
from autodistil_jax.model import get_params

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # about 67 s on 2 cores: in CI's slow step, keeping the default run short
def test_two_processes_match_one(teacher, teacher_dir, data_dir, tmp_path):
  corpus = str(data_dir / "wikitext-2" / "valid.txt")
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  workdir = tmp_path / "two"
  procs = [subprocess.Popen(
      [sys.executable, str(ROOT / "launch" / "main.py"), f"--config={ROOT}/tests/configs/tiny_test.py",
       f"--workdir={workdir}", "--mode=train", f"--config.data.corpus={corpus}",
       f"--config.distributed.coordinator=127.0.0.1:{port}", "--config.distributed.num_processes=2",
       f"--config.distributed.process_id={i}"],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs, strict=True):
    assert p.returncode == 0, out[-3000:]

  config = tiny_config()
  config.data.corpus = corpus
  mesh = parallel.make_mesh()  # the same 8 devices, in one process
  tokens = data.load_corpus(corpus, teacher_dir, 32, cache_dir=tmp_path / "cache")
  train_idx, _ = data.split_heldout(len(tokens), config.data.heldout, config.seed)
  single = train.train_superlm(config, tmp_path / "one", "mini", teacher, tokens, train_idx, mesh)
  two, step = train.load_superlm(config, workdir, "mini", teacher, mesh)
  diff = np.abs(_flat(get_params(two)) - _flat(single)).max()
  print(f"max |params(2 processes x 4 devices) - params(1 process x 8 devices)|: {diff:.2e}")
  assert step == config.train.num_steps and diff <= 1e-5
