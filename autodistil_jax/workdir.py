"""The run directory: the one module that knows where a run keeps what, which process holds it,
and how the leftovers of a killed run are cleared. Nothing else spells a path inside a workdir
(tests/workdir_test.py reads the sources to keep it so).

  <workdir>/
    data_cache/corpus_<key>.npy             the tokenised corpus (data.load_corpus)
    superlm/<subspace>/checkpoints/<step>/  orbax checkpoints of training
    superlm/<subspace>/record.json          what that SuperLM is trained with (records.py)
    metrics.jsonl, tensorboard/<run>/       training metrics
    search/                                 results.csv, pareto.png, selected.json, summary.json
    proxy/<subspace>.json                   task-proxy scores, kept as they come (proxy.py)
    export/<subspace>-<arch>/               Hugging Face checkpoints with their model cards
    evaluate/                               suite.csv, suite.md, suite.png
    glue/<model>/<task>/results.json        fine-tuning results; glue/summary.{csv,md}
    glue/<model>/<task>/finished_runs.json  the runs of a cell finished so far (resume mid-cell)
    baselines/<kind>-<arch>/                sliced / distilled-alone / random students (baselines.py)
    <experiment>/                           an experiment's own files (experiments/)
    stages/<stage>.json                     what each finished stage ran with (records.py)
    replaced/<time>[-n]/                    outputs moved aside by --redo, in the same layout
    .lock, .lock.json                       held by the process running in it
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterator

import filelock

from autodistil_jax import storage
from autodistil_jax.storage import AnyPath

# Written beside their target and renamed over it (atomic.py, records.py, metrics.py, data.py):
# any of these found at the start of a run were left by a killed process.
TEMP_MARKERS = (".tmp-", ".old-")
# The files of the search's and the suite's output folders, by what they hold.
SEARCH_FILES = {"results": "results.csv", "pareto": "pareto.png", "selected": "selected.json",
                "summary": "summary.json"}
SUITE_FILES = {"csv": "suite.csv", "md": "suite.md", "png": "suite.png"}


class WorkdirBusy(ValueError):
  """Another process holds the workdir."""


@dataclasses.dataclass(frozen=True)
class Workdir:
  root: AnyPath  # local (pathlib.Path) or on cloud storage (a UPath): storage.py

  @classmethod
  def at(cls, path: str | os.PathLike) -> Workdir:
    """The workdir at `path`, after checking it can be written. One that does not exist yet is
    not created here: each stage creates what it writes, so a command that fails its checks
    leaves nothing behind."""
    if not str(path).strip():
      raise ValueError("--workdir is empty: give the directory the run should use")
    root = storage.path(path)
    if not storage.is_local(root):
      return cls(root)  # cloud storage: permissions show at the first write
    problem = None
    if root.exists():
      if not root.is_dir():
        problem = "it is a file"
      elif not os.access(root, os.W_OK | os.X_OK):
        problem = "it is not writable"
    else:
      parent = next(p for p in root.parents if p.exists())
      if not parent.is_dir():
        problem = f"{parent} is a file"
      elif not os.access(parent, os.W_OK | os.X_OK):
        problem = f"{parent} is not writable"
    if problem:
      raise ValueError(f"workdir {str(root)!r} cannot be written ({problem}); choose another --workdir")
    return cls(root)

  @classmethod
  def of(cls, workdir: Workdir | str | os.PathLike) -> Workdir:
    """`workdir` as a Workdir (library functions take either)."""
    return workdir if isinstance(workdir, Workdir) else cls.at(workdir)

  # Training.
  @property
  def data_cache(self) -> AnyPath:
    return self.root / "data_cache"

  def superlm(self, subspace: str) -> AnyPath:
    return self.root / "superlm" / subspace

  def checkpoints(self, subspace: str) -> AnyPath:
    return self.superlm(subspace) / "checkpoints"

  def superlm_record(self, subspace: str) -> AnyPath:
    return self.superlm(subspace) / "record.json"

  @property
  def metrics_file(self) -> AnyPath:
    return self.root / "metrics.jsonl"

  def tensorboard(self, run: str) -> AnyPath:
    return self.root / "tensorboard" / run

  # Search.
  @property
  def search_dir(self) -> AnyPath:
    return self.root / "search"

  def search_file(self, kind: str) -> AnyPath:
    """One of SEARCH_FILES: results, pareto, selected or summary."""
    return self.search_dir / SEARCH_FILES[kind]

  @property
  def selected_file(self) -> AnyPath:
    return self.search_file("selected")

  def proxy_scores(self, subspace: str) -> AnyPath:
    return self.root / "proxy" / f"{subspace}.json"

  # Export, evaluation, fine-tuning.
  @property
  def export_root(self) -> AnyPath:
    return self.root / "export"

  def export_dir(self, subspace: str, arch_name: str) -> AnyPath:
    return self.export_root / f"{subspace}-{arch_name}"

  def exports(self) -> dict[str, AnyPath]:
    """Every finished export by name (a hidden temporary folder is not one)."""
    if not self.export_root.is_dir():
      return {}
    return {p.name: p for p in sorted(self.export_root.iterdir())
            if p.is_dir() and not p.name.startswith(".")}

  @property
  def evaluate_dir(self) -> AnyPath:
    return self.root / "evaluate"

  def suite_file(self, kind: str) -> AnyPath:
    """One of SUITE_FILES: csv, md or png."""
    return self.evaluate_dir / SUITE_FILES[kind]

  @property
  def glue_root(self) -> AnyPath:
    return self.root / "glue"

  def glue_result(self, model: str, task: str) -> AnyPath:
    return self.glue_root / model / task / "results.json"

  def glue_finished_runs(self, model: str, task: str) -> AnyPath:
    """The runs of a (model, task) finished so far; gone once its results.json is written."""
    return self.glue_root / model / task / "finished_runs.json"

  def glue_summary(self, suffix: str = "md") -> AnyPath:
    return self.glue_root / f"summary.{suffix}"

  # Experiments (experiments/): baselines and what an experiment keeps of its own.
  def baseline_dir(self, kind: str, arch_name: str) -> AnyPath:
    return self.root / "baselines" / f"{kind}-{arch_name}"

  def experiment_file(self, experiment: str, name: str) -> AnyPath:
    return self.root / experiment / name

  def write_archive(self, target: os.PathLike, leave_out: tuple[AnyPath, ...] = ()) -> None:
    """A .tar.gz of the run's records, tables, plots and metrics: everything but the model
    weights (checkpoints, exports, baselines), the token cache, what was moved aside, the lock,
    and `leave_out` (to bring a run's results back from a machine that keeps only small files)."""
    import tarfile

    heavy = {self.export_root, self.data_cache, self.root / "baselines", self.root / "replaced",
             self.root / ".lock", self.root / ".lock.json", *leave_out}
    heavy = {str(h) for h in heavy}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
      path = str(self.root.parent / info.name)
      return None if path in heavy or pathlib.PurePath(path).name == "checkpoints" else info

    with tarfile.open(target, "w:gz") as tar:
      tar.add(str(self.root), arcname=self.root.name, filter=keep)

  # Stage records and --redo.
  def stage_record(self, stage: str) -> AnyPath:
    return self.root / "stages" / f"{stage}.json"

  def stage_outputs(self, stage: str) -> list[AnyPath]:
    """What a stage writes, as --redo moves it aside (the stage's record included)."""
    outputs = {"train": [self.root / "superlm", self.root / "tensorboard"],
               "search": [self.search_dir, self.root / "proxy"], "export": [self.export_root],
               "evaluate": [self.evaluate_dir], "finetune": [self.glue_root]}[stage]
    return [*outputs, self.stage_record(stage)]

  def move_aside(self, paths: list[AnyPath]) -> AnyPath | None:
    """Moves the existing `paths` to a new folder replaced/<time>[-n]/, keeping their place in the
    layout; returns that folder (None when none existed). Nothing is deleted: a second move in the
    same second gets its own folder rather than overwriting the first's."""
    existing = [p for p in paths if p.exists()]
    if not existing:
      return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = self.root / "replaced" / stamp, 1
    while aside.exists():
      aside, n = self.root / "replaced" / f"{stamp}-{n}", n + 1
    for path in existing:
      target = aside / str(path.relative_to(self.root))
      target.parent.mkdir(parents=True, exist_ok=True)
      storage.replace(path, target)
    return aside

  # One process at a time.
  @contextlib.contextmanager
  def held(self, primary: bool = True) -> Iterator[None]:
    """Holds the workdir for this process; a second process fails at once with WorkdirBusy naming
    the holder. The lock is the kernel's (flock), so a killed holder leaves nothing that blocks:
    its note (.lock.json) is found, reported, and replaced. Only the primary process of a
    multi-host job takes it (every host runs the same command in the same workdir)."""
    if not primary:
      yield
      return
    if not storage.is_local(self.root):
      print(f"note: {self.root} is on cloud storage, where a workdir cannot be locked: run one job "
            "per workdir")
      yield
      return
    created = not self.root.exists()
    self.root.mkdir(parents=True, exist_ok=True)
    lock, note = filelock.FileLock(self.root / ".lock", timeout=0), self.root / ".lock.json"
    try:
      lock.acquire()
    except filelock.Timeout:
      raise WorkdirBusy(f"workdir {self.root} is in use by {_holder(note)}; wait for that run to "
                        "end (or stop it), or use another --workdir") from None
    try:
      if note.is_file():
        print(f"note: an earlier run ({_holder(note)}) ended without releasing {self.root}; "
              "taken over")
      note.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n")
      yield
    finally:
      note.unlink(missing_ok=True)
      lock.release()
      if created and not any(p.is_file() and p.name != ".lock" for p in self.root.rglob("*")):
        storage.rmtree(self.root)  # a command that failed before writing a file leaves nothing behind

  def remove_leftovers(self) -> list[AnyPath]:
    """Deletes the temporary files and folders of killed runs (call while holding the lock)."""
    if not self.root.is_dir():
      return []
    found = [p for p in self.root.rglob(".*") if any(m in p.name for m in TEMP_MARKERS)]
    removed = []
    for path in sorted(found, key=lambda p: len(p.parts)):
      if path.is_dir():
        storage.rmtree(path)
      elif path.exists():
        path.unlink()
      else:
        continue  # inside a folder removed just before
      removed.append(path)
    return removed


def temp_sibling(target: AnyPath) -> AnyPath:
  """Where to write `target` before renaming it into place: hidden, same folder, this process."""
  return target.parent / f".{target.name}.tmp-{os.getpid()}"


@contextlib.contextmanager
def writing(target: AnyPath) -> Iterator[AnyPath]:
  """Yields where to write `target` (temp_sibling; its folder created): renamed over `target` when
  the block ends, deleted when it fails (a full disk leaves no half-written file behind)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = temp_sibling(target)
  try:
    yield tmp
    storage.replace(tmp, target)
  except BaseException as e:
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    if isinstance(e, OSError) and not e.filename:  # a failed write names no file: name the target
      raise OSError(e.errno, e.strerror or str(e), str(target)) from e
    raise


def write_text_atomic(target: AnyPath, text: str) -> None:
  """Writes `target` whole or not at all."""
  with writing(target) as tmp:
    tmp.write_text(text, encoding="utf-8")


def _holder(note: AnyPath) -> str:
  try:
    h = json.loads(note.read_text())
    return f"pid {h['pid']} on {h['host']} (started {h['started']})"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (no holder note)"
