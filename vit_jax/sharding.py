"""Data parallelism over one mesh: the mesh, global batches, host copies.

Training, evaluation and the benchmark all run on a 1-D mesh spanning every
device of every process: a batch is sharded along 'data', parameters are
replicated. This module holds what they share: building the mesh, checking
that batches divide over it, moving arrays between a process and the mesh,
and addressing a whole split's examples by index.
"""

import dataclasses
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vit_jax import input_pipeline


@dataclasses.dataclass(frozen=True)
class Split:
  """A whole split held as uint8 images and int32 labels (host or device)."""
  images: Any
  labels: Any
  info: input_pipeline.DatasetInfo


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process: pure data parallelism."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_sizes(config, mesh):
  devices = mesh.size
  if config.batch % (devices * config.accum_steps):
    raise ValueError(
        f'config.batch={config.batch} must be divisible by the number of '
        f'devices ({devices}) times config.accum_steps '
        f'({config.accum_steps}); e.g. --config.batch='
        f'{devices * config.accum_steps * max(1, config.batch // (devices * config.accum_steps))}.')
  if config.batch_eval % devices:
    raise ValueError(
        f'config.batch_eval={config.batch_eval} must be divisible by the '
        f'number of devices ({devices}).')


def to_global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """This process's rows of a batch -> one global array over the mesh."""
  return jax.make_array_from_process_local_data(sharding, local)


def to_host(tree):
  """Replicated device arrays -> numpy (works on every process)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def replicate(tree, mesh):
  """Host arrays (the same on every process) -> replicated over the mesh."""
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: to_global(np.asarray(x), replicated), tree)


def place_on_device(split: Split, mesh) -> Split:
  """Replicates a whole split in accelerator memory (CIFAR-sized data)."""
  replicated = NamedSharding(mesh, P())
  return dataclasses.replace(
      split, images=to_global(split.images, replicated),
      labels=to_global(split.labels, replicated))


class BatchSource:
  """Global batches by example indices, from host or device memory."""

  def __init__(self, split: Split, mesh, on_device: bool):
    self._split = place_on_device(split, mesh) if on_device else split
    self._on_device = on_device
    self._sharding = NamedSharding(mesh, P('data'))
    self._gather = jax.jit(lambda images, labels, idx: (images[idx],
                                                        labels[idx]),
                           out_shardings=(self._sharding, self._sharding))

  def get(self, global_indices: np.ndarray):
    local = input_pipeline.process_slice(global_indices, jax.process_index(),
                                         jax.process_count())
    if self._on_device:
      return self._gather(self._split.images, self._split.labels,
                          to_global(local, self._sharding))
    return (to_global(self._split.images[local], self._sharding),
            to_global(self._split.labels[local], self._sharding))
