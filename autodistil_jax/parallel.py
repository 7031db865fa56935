"""Data parallelism over every device of every host: a ('data',) mesh and NamedShardings.

The same command runs on each worker of a TPU pod slice or multi-node GPU job:
`maybe_initialize_distributed` joins the job, each host feeds its slice of the global batch and
`global_batch` assembles the sharded array; parameters are replicated.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Environment variables that mean a multi-process launch (TPU pods set up jax.distributed
# themselves; SLURM/Open MPI/explicit coordinator jobs are detected by JAX's cluster plugins).
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
  """Joins a multi-process job when one is configured (explicitly or by the environment)."""
  if jax.distributed.is_initialized():
    return
  pod = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
  cluster = any(os.environ.get(k) for k in _MULTIHOST_ENV[:-1])
  if coordinator is None and not (pod or cluster):
    return
  # CPU processes need a collectives backend to talk to each other (no effect on GPU/TPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
  logging.info("joined process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes (or the first `num_devices` of them),
  with automatic sharding propagation."""
  if num_devices is None:
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))
  devices = np.array(jax.devices()[:num_devices])
  return jax.sharding.Mesh(devices, (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """The per-host batch size; the global batch must divide evenly over devices."""
  if global_batch_size % mesh.size:
    raise ValueError(f"batch_size {global_batch_size} must be a multiple of the number of devices "
                     f"({mesh.size}); change config.train.batch_size")
  return global_batch_size // jax.process_count()


def global_batch(mesh: jax.sharding.Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This host's rows of the batch -> one global array per key, sharded over 'data'."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def global_batch_from_full(mesh: jax.sharding.Mesh, full: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """A batch every host holds whole (fixed eval batches, GLUE) -> global arrays: each host
  contributes only its own rows, so the global batch is not multiplied by the host count."""
  local = check_batch_size(len(next(iter(full.values()))), mesh)
  lo = jax.process_index() * local
  return global_batch(mesh, {k: v[lo:lo + local] for k, v in full.items()})


def replicate(mesh: jax.sharding.Mesh, tree):
  """Puts a host-identical pytree on every device (parameters, optimizer state)."""
  return jax.device_put(tree, replicated(mesh))
