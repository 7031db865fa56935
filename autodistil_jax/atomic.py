"""Whole-directory outputs that appear complete or not at all (search results, exports): written
into a hidden temporary sibling and renamed into place (storage.py: atomic on local disks)."""

from __future__ import annotations

import os

from autodistil_jax import storage
from autodistil_jax.storage import AnyPath
from autodistil_jax.workdir import temp_sibling


def temp_dir_for(target: AnyPath) -> AnyPath:
  """A fresh hidden sibling of `target` to write into (same filesystem, so rename is atomic)."""
  tmp = temp_sibling(target)
  storage.rmtree(tmp)
  tmp.mkdir(parents=True)
  return tmp


def replace_dir(tmp: AnyPath, target: AnyPath) -> None:
  """Moves the finished `tmp` to `target`; an existing target is swapped out, then removed."""
  if target.exists():
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    storage.replace(target, old)
    storage.replace(tmp, target)
    storage.rmtree(old)
  else:
    storage.replace(tmp, target)
