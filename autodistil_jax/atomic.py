"""Whole-directory outputs that appear complete or not at all (search results, exports)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def temp_dir_for(target: Path) -> Path:
  """A fresh hidden sibling of `target` to write into (same filesystem, so rename is atomic)."""
  tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  return tmp


def replace_dir(tmp: Path, target: Path) -> None:
  """Moves the finished `tmp` to `target`; an existing target is swapped out, then removed."""
  if target.exists():
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old)
  else:
    os.replace(tmp, target)
