"""Packs what the headline experiment needs on a GPU machine that can reach nothing and receives at
most 64 MiB with the repository: the teacher in float16 (half of its 91 MB), the data files
xz-compressed, and the wheels its image lacks. Run here, before the device call:

  python experiments/gpu_bundle.py --data_dir=../shared/data --out=.bundle   # about 50 MB

experiments/headline_gpu.sh runs it (`pack`) and reads the bundle on the GPU machine (`run`).
float16 keeps every weight of all-MiniLM-L6-v2 to 3 significant digits (the loader casts back to
float32; tests/headline_test.py checks the teacher's embeddings against the original's).
"""

from __future__ import annotations

import io
import pathlib
import shutil
import subprocess
import sys
import tarfile

import numpy as np
from absl import flags

from autodistil_jax import cli

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/, wikitext-2/ and tinyshakespeare/.")
_OUT = flags.DEFINE_string("out", ".bundle", "The bundle's folder (replaced).")
_TEACHER = flags.DEFINE_string("teacher", "all-MiniLM-L6-v2", "HF directory or hub name of the teacher.")
_WHEELS = flags.DEFINE_bool("wheels", True, "Download the wheels the GPU image lacks (needs pip's index).")
flags.mark_flags_as_required(["data_dir"])

# What the experiment reads: the GLUE tasks of configs/headline.py:gpu and the suite's probes, and
# the mixed transfer set's text files.
GLUE_TASKS = ("CoLA", "SST-2", "MRPC", "STS-B", "RTE")
TEXT_FILES = ("wikitext-2/valid.txt", "wikitext-2/test.txt", "tinyshakespeare/input.txt")
# Packages this project imports that the GPU image (jax 0.11.2, flax 0.12.10) does not have, with
# those of their requirements it lacks too; flax is never carried (docs/benchmarks.md).
WHEELS = ("grain==0.2.18", "array-record==0.8.6", "portpicker", "ml-collections==1.1.0",
          "tensorboardX==2.6.5", "universal_pathlib==0.3.10", "pathlib_abc")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
# The teacher's files a run reads (weights, config, tokenizer, sentence-transformers pooling).
TEACHER_SKIP = ("README.md", "data_config.json", ".gitattributes", "model.safetensors")


def half_teacher(source: pathlib.Path, target: pathlib.Path) -> None:
  """The teacher directory with its floating-point weights stored as float16."""
  from safetensors.numpy import load_file, save_file

  shutil.copytree(source, target, ignore=lambda _, names: [n for n in names if n in TEACHER_SKIP])
  tensors = load_file(source / "model.safetensors")
  big = [k for k, v in tensors.items() if v.dtype.kind == "f" and np.abs(v).max() > 6e4]
  if big:
    raise ValueError(f"weights beyond float16's range: {big}; carry the float32 checkpoint instead")
  save_file({k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in tensors.items()},
            target / "model.safetensors", metadata={"format": "pt"})


def data_archive(data_dir: pathlib.Path, target: pathlib.Path) -> None:
  files = [f"glue/{t}/{s}.tsv" for t in GLUE_TASKS for s in ("train", "dev")] + list(TEXT_FILES)
  if missing := [f for f in files if not (data_dir / f).is_file()]:
    raise FileNotFoundError(f"not under --data_dir={data_dir}: {', '.join(missing)}")
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
    for f in files:
      tar.add(data_dir / f, arcname=f)
  target.write_bytes(buffer.getvalue())


def download_wheels(target: pathlib.Path) -> None:
  platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
  subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                  "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(target),
                  *WHEELS], check=True)


def main() -> None:
  from autodistil_jax import hf_io

  data_dir = pathlib.Path(_DATA_DIR.value)
  out = pathlib.Path(_OUT.value)
  teacher = pathlib.Path(hf_io.resolve_checkpoint(_TEACHER.value))
  tmp = out.with_name(out.name + ".tmp")  # built whole, then renamed: never half a bundle
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  data_archive(data_dir, tmp / "data.tar.xz")
  half_teacher(teacher, tmp / "teacher")
  if _WHEELS.value:
    download_wheels(tmp / "wheels")
  shutil.rmtree(out, ignore_errors=True)
  tmp.rename(out)
  size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
  print(f"bundle: {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
  cli.run(main)
