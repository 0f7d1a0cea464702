"""Checksums of a state's arrays, computed on the device where the arrays live: every
checkpoint records one per array at save and a restore recomputes them, so bytes that
changed on disk are refused with the array named (`verify_checksums`); the same pass
finds non-finite arrays, which are never saved.
"""

from __future__ import annotations


class CorruptCheckpoint(ValueError):
  """A checkpoint's arrays differ from the checksums recorded when it was saved."""


class NonFiniteState(ValueError):
  """A state to be saved holds NaN or Inf: it is not written."""


# ----------------------------------------------------------------------------
# Checksums of arrays (computed where the arrays live).
# ----------------------------------------------------------------------------


def _path_str(path) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree_util.keystr(path)


def _leaf_checksum(x):
  """A position-weighted sum of the array's bits modulo 2**32 (any dtype up to 32 bits)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(x).reshape(-1)
  width = x.dtype.itemsize
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif width in (1, 2, 4):
    utype = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    bits = jax.lax.bitcast_convert_type(x, utype).astype(jnp.uint32)
  else:  # 64-bit: both halves
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


def _finite(x):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.all(jnp.isfinite(x))
  return jnp.bool_(True)


def _checksum_leaves(t):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  leaves = jax.tree.leaves(t)
  sums = [_leaf_checksum(x) for x in leaves]
  finite = [_finite(x) for x in leaves]
  return sums, (jnp.all(jnp.stack(finite)) if finite else jnp.bool_(True)), finite


_CHECKSUMS_JIT = []  # one jitted function for the process: compiled once per tree shape


def _checksums_and_finite(tree):
  import jax  # pylint: disable=import-outside-toplevel
  if not _CHECKSUMS_JIT:
    _CHECKSUMS_JIT.append(jax.jit(_checksum_leaves))
  sums, all_finite, finite = jax.device_get(_CHECKSUMS_JIT[0](tree))
  paths = [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  bad = [p for p, f in zip(paths, finite) if not bool(f)]
  return {p: int(c) for p, c in zip(paths, sums)}, bool(all_finite), bad


def state_checksums(tree) -> dict[str, int]:
  """{array path: checksum} of a pytree of arrays."""
  return _checksums_and_finite(tree)[0]


def verify_checksums(tree, recorded: dict[str, int], where: str) -> None:
  """Raises CorruptCheckpoint when an array of `tree` differs from `recorded`
  (arrays absent from `recorded` are not checked)."""
  got = state_checksums(tree)
  wrong = [p for p, c in got.items() if p in recorded and int(recorded[p]) != c]
  if wrong:
    raise CorruptCheckpoint(
        f"{len(wrong)} array(s) differ from the checksums recorded at save (its files "
        f"changed on disk) in {where}: {', '.join(wrong[:5])}")
