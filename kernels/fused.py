"""What the fused scan kernels share, and nothing of either backend: staging a kernel
for every platform, the custom VJP around a forward/backward kernel pair, and the
arithmetic dtype. Imports jax only, so each kernel module imports this and its own
Pallas backend, and losing one backend leaves the other (design invariant 9).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

# Ops of an interpreted kernel carry this name scope: the CUDA lowering test checks that
# none is left in a CUDA export (and that a CPU lowering has them).
INTERPRET_SCOPE = "pallas_interpret"


def by_platform(call):
  """`call(interpret)` staged for every platform: the compiled kernel when lowered for
  CUDA, interpret mode elsewhere (only the chosen branch is lowered)."""

  def interpreted():
    with jax.named_scope(INTERPRET_SCOPE):
      return call(True)

  return lax.platform_dependent(cuda=lambda: call(False), default=interpreted)


def fused_scan_vjp(forward: Callable, backward: Callable) -> Callable:
  """The custom VJP of a fused kernel pair, as `scan(st, *inputs) -> (y, h_last)`.

  `forward(st, *inputs)` -> (y, the state entering every chunk, the last state); only
  the chunk-entry states are kept for `backward(st, inputs, h_entry, (dy, dh_last))`,
  which returns the inputs' cotangents. `st` (the static settings) is not
  differentiated."""
  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def scan(st, *inputs):
    y, _, h_last = forward(st, *inputs)
    return y, h_last

  def scan_fwd(st, *inputs):
    y, h_entry, h_last = forward(st, *inputs)
    return (y, h_last), (inputs, h_entry)

  def scan_bwd(st, res, cts):
    inputs, h_entry = res
    return backward(st, inputs, h_entry, cts)

  scan.defvjp(scan_fwd, scan_bwd)
  return scan


def compute_dtype(*arrays):
  """float64 when any input is float64 (x64 on), float32 otherwise."""
  if any(x is not None and x.dtype == jnp.float64 for x in arrays):
    return jnp.float64
  return jnp.float32
