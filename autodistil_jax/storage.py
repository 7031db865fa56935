"""Files on a local disk or behind a URL (gs://, s3://, memory://, ...), through one pathlib API.

A run directory may live on cloud storage: every host of a TPU pod must see the same workdir.
`path` gives a pathlib.Path for a local path and a universal_pathlib UPath (fsspec) for a URL;
both have the pathlib methods the code uses (open, read_text, write_text, mkdir, iterdir, rglob,
exists). The few operations that differ live here.

Atomicity: on a local filesystem a rename is atomic, so a file or folder written under a temporary
name and renamed into place is seen complete or not at all. On an object store (gs://, s3://) a
rename is a copy then a delete: a reader never sees a half-written file (each object is written
whole), but may see a folder while it is being moved. Locks (workdir.Workdir.held) exist only on
local filesystems: run one job per workdir on cloud storage.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from upath import UPath

AnyPath = pathlib.Path | UPath


def path(location: str | os.PathLike) -> AnyPath:
  """A local path (expanded, absolute) or, for a URL like gs://bucket/run, an fsspec path."""
  if isinstance(location, UPath) and not is_local(location):
    return location
  text = os.fspath(location)
  if "://" in text and not text.startswith("file://"):
    return UPath(text)
  return pathlib.Path(text.removeprefix("file://")).expanduser().absolute()


def is_local(p: AnyPath) -> bool:
  return isinstance(p, pathlib.Path)


def replace(source: AnyPath, target: AnyPath) -> None:
  """Moves `source` to `target` (a file, or a folder onto a free name); atomic where local."""
  if is_local(source):
    os.replace(source, target)
  else:
    source.fs.mv(source.path, target.path, recursive=True)


def rmtree(p: AnyPath) -> None:
  if is_local(p):
    shutil.rmtree(p, ignore_errors=True)
  elif p.exists():
    p.fs.rm(p.path, recursive=True)


def local_checkpoint(name_or_path: str) -> contextlib.AbstractContextManager:
  """A model given by name, local folder or URL, as something hf_io.load_bert reads: URLs are
  copied to a temporary local folder for the block; names and local paths are left as they are."""
  if "://" in name_or_path:
    return local_copy(path(name_or_path))
  return contextlib.nullcontext(name_or_path)


@contextlib.contextmanager
def local_folder(p: AnyPath) -> Iterator[pathlib.Path]:
  """A local folder to write `p`'s files into (libraries such as safetensors write only local
  files): `p` itself when local; else a temporary folder whose files are uploaded to `p` at the
  end of the block (if it ends without an error)."""
  if is_local(p):
    yield p
    return
  with tempfile.TemporaryDirectory(prefix="autodistil-") as tmp:
    yield pathlib.Path(tmp)
    for f in sorted(pathlib.Path(tmp).rglob("*")):
      if f.is_file():
        p.fs.put_file(str(f), f"{p.path}/{f.relative_to(tmp).as_posix()}")


@contextlib.contextmanager
def local_copy(p: AnyPath) -> Iterator[pathlib.Path]:
  """`p` itself when local; else a temporary local copy of the file or folder (for libraries
  that read only local files: safetensors, tokenizers)."""
  if is_local(p):
    yield p
    return
  with tempfile.TemporaryDirectory(prefix="autodistil-") as tmp:
    local = pathlib.Path(tmp) / p.name
    p.fs.get(p.path, str(local), recursive=p.is_dir())
    yield local
