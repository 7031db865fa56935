"""What an experiment keeps about its own runs: wall time per stage (a JSON file, summed over
resumed runs) and the command that resumes it."""

from __future__ import annotations

import json
import pathlib
import shlex
import sys
import time


class Timer:
  """Wall time per stage in `path` (JSON), summed over resumed runs; `label` prefixes its prints;
  `on_write` gets the path each time it is written."""

  def __init__(self, path: pathlib.Path, label: str = "headline", on_write=None):
    self.path, self.label, self.on_write = path, label, on_write
    self.times = json.loads(path.read_text()) if path.is_file() else {}

  def run(self, stage: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text(json.dumps(self.times, indent=2) + "\n")
    if self.on_write is not None:
      self.on_write(self.path)
    print(f"[{self.label}] {stage}: {self.times[stage]:.1f} s")
    return result


def invocation(script: str) -> str:
  """The command as run, less --report_only: what resumes (and rewrites) the experiment."""
  args = [a for a in sys.argv[1:] if a.lstrip("-").split("=")[0] != "report_only"]
  return shlex.join(["python", script, *args])
