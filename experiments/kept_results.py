"""An experiment's result records kept beside its report, so that a new checkout resumes from them.

A workdir holds weights, caches and records and is not committed: on a fresh machine it is gone,
and with it hours of fine-tuning. The records themselves are small. Each one is copied, as soon as
it is written, to <out>/workdir/<its path in the workdir>, which is committed with the report; a
fresh workdir gets them back before anything runs.

Restoring reuses nothing by itself: a restored GLUE result is reused only where the finetune stage
finds its inputs (settings, seed, data and the model, autodistil_jax.finetune_stage) equal to the
run's, so a model retrained to other weights has its cells recomputed, and says so; the same
student retrained on another CPU, equal to float rounding, is the same model (records.model_identity).
"""

from __future__ import annotations

import pathlib

from autodistil_jax.storage import AnyPath
from autodistil_jax.workdir import Workdir, write_text_atomic


class KeptResults:
  """Copies of a workdir's records under `out`/workdir, mirroring their place in the workdir."""

  def __init__(self, wd: Workdir, out: pathlib.Path):
    self.wd, self.root = wd, out / "workdir"

  def keep(self, record: AnyPath) -> None:
    """Copies `record` (a file under the workdir) to its place under the kept root; a record the
    workdir no longer has (a cell's finished runs, once its results.json is written) loses its copy."""
    relative = pathlib.PurePosixPath(str(record)).relative_to(pathlib.PurePosixPath(str(self.wd.root)))
    if record.exists():
      write_text_atomic(self.root / relative, record.read_text(encoding="utf-8"))
    else:
      (self.root / relative).unlink(missing_ok=True)

  def restore(self, leave_out: tuple[AnyPath, ...] = ()) -> list[AnyPath]:
    """Copies every kept record the workdir lacks back into it (a record the workdir has, it
    keeps: it is the newer), but those at `leave_out` (workdir paths); returns the restored paths."""
    restored, left_out = [], {str(p) for p in leave_out}
    for kept in sorted(p for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else []:
      target = self.wd.root / kept.relative_to(self.root).as_posix()
      if not target.exists() and str(target) not in left_out:
        write_text_atomic(target, kept.read_text(encoding="utf-8"))
        restored.append(target)
    return restored
