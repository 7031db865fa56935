"""orbax checkpoints of a training run: parameters, optimizer state, RNG, step and the grain
iterator's state, every N steps and at the end, keeping the last K. A run restarted on the same
directory resumes from the latest complete checkpoint by itself.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed mid-write leaves only a temporary directory (removed at the next start). A
checkpoint that is complete but unreadable (disk corruption, a truncated copy) is moved aside to
<directory>.corrupt/ and the previous one is used; it is never deleted, and neither is the only
good checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from autodistil_jax import storage


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the floating-point arrays of `tree` holding a NaN or an infinity (one host sync)."""
  import jax.numpy as jnp

  leaves = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
  finite = jax.device_get([jnp.all(jnp.isfinite(x)) for _, x in leaves])
  return [name for (name, _), ok in zip(leaves, finite, strict=True) if not ok]


class Checkpointer:
  """Saves and restores {"params", "opt_state", "rng"} plus the data iterator under `directory`."""

  def __init__(self, directory: str | os.PathLike, save_every: int, keep: int):
    self.directory = storage.path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(_epath(self.directory), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: dict, iterator: grain.DatasetIterator | None = None,
           force: bool = False) -> bool:
    if not (force or self._manager.should_save(step)):
      return False
    if bad := nonfinite_leaves(state):  # never write a state that cannot be trained on or used
      raise FloatingPointError(f"step {step}: the training state is not finite in {', '.join(bad[:3])}; "
                               f"not checkpointed (the last good checkpoint stays in {self.directory})")
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, like: dict, iterator: grain.DatasetIterator | None = None) -> tuple[int, dict] | None:
    """(step, state) of the latest readable checkpoint, shaped and sharded like `like`; the
    iterator is moved to where it was. None when there is no checkpoint.

    An unreadable latest checkpoint is moved aside with a warning and the one before it is tried.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    failures = []
    _silence_orphaned_reads()
    for candidate in steps:
      items = {"state": ocp.args.StandardRestore(abstract)}
      if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(**items))
      except Exception as e:  # orbax/tensorstore raise many types for unreadable files
        failures.append(f"step {candidate}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        logging.warning("checkpoint at step %d in %s is unreadable (%s); moved aside, trying the "
                        "previous one", candidate, self.directory, failures[-1])
        self._move_aside(candidate)
        continue
      logging.info("restored step %d from %s", candidate, self.directory)
      return candidate, restored["state"]
    if failures:
      raise ValueError(f"no readable checkpoint in {self.directory} ({'; '.join(failures)}); the "
                       f"unreadable ones are in {self.directory}.corrupt/. Restore a good copy, or "
                       "use a new --workdir to start over")
    return None

  def restore_subset(self, like: dict) -> tuple[int, dict] | None:
    """(step, the part of the saved state shaped like `like`: jax.ShapeDtypeStructs with their
    shardings) from the latest readable checkpoint, reading nothing else (the optimizer state
    stays on disk). For readers (search, export): an unreadable checkpoint is skipped with a
    warning, never moved. None when there is no checkpoint."""
    failures = []
    _silence_orphaned_reads()
    for step in sorted(self._manager.all_steps(), reverse=True):
      args = ocp.args.PyTreeRestore(item=like, restore_args=ocp.checkpoint_utils.construct_restore_args(like),
                                    partial_restore=True)
      try:
        return step, ocp.PyTreeCheckpointer().restore(_epath(self.directory / str(step) / "state"),
                                                      args=args)
      except Exception as e:  # orbax/tensorstore raise many types for unreadable files
        failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        logging.warning("checkpoint in %s unreadable (%s); trying the previous one", self.directory,
                        failures[-1])
    if failures:
      raise ValueError(f"no readable checkpoint in {self.directory} ({'; '.join(failures)}); restore "
                       "a good copy, or train again (--redo=train)")
    return None

  def _move_aside(self, step: int) -> None:
    """Keeps an unreadable checkpoint for inspection where orbax neither reads nor deletes it."""
    aside = self.directory.with_name(f"{self.directory.name}.corrupt")
    aside.mkdir(exist_ok=True)
    storage.replace(self.directory / str(step), aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _epath(p):
  """orbax reads and writes through etils.epath, which takes local paths and gs:// URLs."""
  from etils import epath

  return epath.Path(str(p))


def _silence_orphaned_reads() -> None:
  """After a failed restore, orbax's cancelled reads still complete later on their closed event
  loop, each printing 'Exception ignored ... Event loop is closed'. Those (and only those) are
  dropped: the failure itself is reported. Installed before a restore is tried, not after it
  fails: on a busy machine a read can complete between the loop's closing and the except clause
  (seen once in CI as a PytestUnraisableExceptionWarning). The same reads, garbage-collected
  before they ran, warn "coroutine 'Store._get_array_metadatas' was never awaited" (seen once in
  CI); that warning, for orbax's Store coroutines only, is dropped too (the filter is set on every
  call: pytest and warnings.catch_warnings reset filters)."""
  warnings.filterwarnings("ignore", message=r"coroutine 'Store\._\w+' was never awaited",
                          category=RuntimeWarning)
  previous = sys.unraisablehook
  if getattr(previous, "_autodistil", False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)
  hook._autodistil = True
  sys.unraisablehook = hook
