"""Training metrics to the workdir's metrics.jsonl and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax

from autodistil_jax import storage
from autodistil_jax.workdir import Workdir, write_text_atomic


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors the scalars to TensorBoard."""

  def __init__(self, wd: Workdir, run: str, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    self.run = run
    if not self.active:
      return
    from tensorboardX import SummaryWriter

    wd.root.mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
      _drop_records_after(wd.metrics_file, run, resume_step)
    self._file = wd.metrics_file
    # Object stores cannot append: there the file is rewritten whole at each write (it is small).
    self._lines = (None if storage.is_local(self._file) else
                   self._file.read_text(encoding="utf-8").splitlines(keepends=True)
                   if self._file.exists() else [])
    self._jsonl = open(self._file, "a", encoding="utf-8") if self._lines is None else None  # noqa: SIM115
    # TensorBoard event files only on local disks (tensorboardX writes there without TensorFlow).
    self._tb = SummaryWriter(str(wd.tensorboard(run))) if storage.is_local(wd.root) else None

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    line = json.dumps({"run": self.run, "step": step, **scalars}) + "\n"
    if self._jsonl is not None:
      self._jsonl.write(line)
      self._jsonl.flush()
    else:
      self._lines.append(line)
      self._file.write_text("".join(self._lines), encoding="utf-8")
    if self._tb is None:
      return
    for k, v in scalars.items():
      if isinstance(v, int | float):  # lists (e.g. non-finite students) stay in metrics.jsonl
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self.active:
      for f in (self._jsonl, self._tb):
        if f is not None:
          f.close()


def read_metrics(wd: Workdir | str | os.PathLike, run: str | None = None) -> list[dict]:
  """The logged records (of one run, if given), in order."""
  path = Workdir.of(wd).metrics_file
  if not path.is_file():
    return []
  records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
  return [r for r in records if run is None or r["run"] == run]


def _drop_records_after(path: Path, run: str, step: int) -> None:
  """A run resumed from a checkpoint at `step` re-logs the steps after it: drop the old copies
  (written before a crash) so each step appears once. Rewritten atomically."""
  if not path.is_file():
    return
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  kept = [line for line in lines if line.strip() and _keep(line, run, step)]
  if len(kept) != len(lines):
    write_text_atomic(path, "".join(kept))


def _keep(line: str, run: str, step: int) -> bool:
  try:
    record = json.loads(line)
  except json.JSONDecodeError:  # a line cut short by a kill
    return False
  return record.get("run") != run or record.get("step", 0) <= step
