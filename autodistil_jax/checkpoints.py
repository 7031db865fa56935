"""orbax checkpoints of a training run: parameters, optimizer state, RNG, step and the grain
iterator's state, every N steps and at the end, keeping the last K. A run restarted on the same
directory resumes from the latest complete checkpoint by itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves and restores {"params", "opt_state", "rng"} plus the data iterator under `directory`."""

  def __init__(self, directory: str | os.PathLike, save_every: int, keep: int):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                           create=True, enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: dict, iterator: grain.DatasetIterator | None = None,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, like: dict, iterator: grain.DatasetIterator | None = None,
              step: int | None = None) -> tuple[int, dict] | None:
    """(step, state) of the latest (or given) checkpoint, shaped and sharded like `like`;
    the iterator is moved to where it was. None when there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("restored step %d from %s", step, self.directory)
    return step, restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
