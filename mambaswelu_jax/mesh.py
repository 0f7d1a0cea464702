"""The device mesh and global batches, shared by the trainer and the tools.

One 1-D mesh axis, `data`, over every device of the run (across hosts too). A batch
is built per process (its rows of the global batch) and made one global array split
on `data`; the model's parameters are replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_KEYS = ("inputs", "targets")
EVAL_KEYS = ("inputs", "targets", "weights", "target_bytes")


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(batch: dict, mesh: Mesh) -> dict:
  """This process's rows of a batch -> global arrays split on `data`."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def split_batch(batch: dict, keys=MODEL_KEYS) -> tuple[dict, dict]:
  """(arrays for the device, numeric side counters such as skipped-data counts)."""
  arrays = {k: batch[k] for k in keys}
  extra = {}
  for k, v in batch.items():
    if k in keys:
      continue
    a = np.asarray(v)
    if a.dtype.kind in "iuf" and a.size >= 1:
      extra[k] = float(a.reshape(-1)[-1]) if a.ndim else float(a)
  return arrays, extra


def pad_rows(batch: dict, rows: int, keys=EVAL_KEYS) -> dict:
  """`keys` of a batch with a short final batch padded to `rows` rows of zeros (zero
  weight: padding never counts)."""
  out = {}
  for k in keys:
    v = np.asarray(batch[k])
    n = v.shape[0]
    out[k] = v if n == rows else np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)])
  return out
