"""The selective scan of Mamba: one meaning, several implementations.

Layout is channels-last. With `dt = softplus?(delta + delta_bias)`:

    h_t = exp(dt_t ⊗ A) ⊙ h_{t-1} + (dt_t ⊙ u_t) ⊗ B_t,   h_0 = 0
    y_t = h_t · C_t + D ⊙ u_t,   then   y_t ⊙ silu(z_t)

Shapes: u, delta, z (batch, length, channels); A (channels, state); B, C (batch, length,
state); D, delta_bias (channels,); a state (batch, channels, state).

Implementations:
  reference  plain lax.scan over materialised (batch, length, channels, state) tensors;
             the oracle of the tests (run it on float64 inputs for a float64 oracle).
  xla        chunked recurrence with a custom VJP that keeps only chunk-boundary states
             and recomputes the states inside each chunk in the backward pass.
  pallas_triton  the fused Pallas kernels with the Triton lowering (kernels/pallas_scan.py).
  pallas_mosaic  the same kernels with the Mosaic GPU lowering (kernels/pallas_mosaic_scan.py;
                 Hopper and newer, float32/bfloat16), for when JAX drops Triton.
  pallas     today's name of the fused kernel: an alias of pallas_triton.
  auto       a fused kernel where the computation is lowered for CUDA, xla elsewhere:
             pallas_mosaic on Hopper and newer, else pallas_triton (see AUTO_KERNELS).

The fused kernels and `auto` choose by the platform the computation is LOWERED for
(`lax.platform_dependent`), never by `jax.default_backend()` at trace time: exporting for
CUDA from a CPU host gives the GPU kernel; running on a CPU gives interpret mode (the
fused kernels, for tests) or xla (`auto`). `auto` only picks a kernel that is checked
against the float64 reference in interpret mode and lowered for CUDA in the CPU test
suite (tests/test_cuda_lowering.py). When no such kernel imports in this JAX build, or
(on a GPU host) none lowers, `auto` uses xla everywhere and warns once.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from kernels.fused import compute_dtype

# On a 2-core CPU, 16 was fastest of 8/16/32/64/128 (experiments/bench_scan.py).
DEFAULT_CHUNK_SIZE = 16

# The fused kernels: name -> (module, function). Each module imports only its own Pallas
# backend, so a JAX without one (JAX is retiring Triton) still offers the other.
FUSED_KERNELS = {
    "pallas_triton": ("kernels.pallas_scan", "pallas_selective_scan"),
    "pallas_mosaic": ("kernels.pallas_mosaic_scan", "mosaic_selective_scan"),
}
# Names that mean another implementation.
ALIASES = {"pallas": "pallas_triton"}
# Every name `impl` (and model.scan_impl) accepts.
IMPLEMENTATIONS = ("auto", "reference", "xla", *ALIASES, *FUSED_KERNELS)
# The fused kernels `auto` may pick on CUDA, in order of preference. Only kernels that
# pass the float64-reference tests in interpret mode and lower for CUDA in
# tests/test_cuda_lowering.py belong here. Mosaic GPU first: on an H200 (2026-12-04,
# docs/benchmarks.md) both matched xla at three shapes in float32 and bf16, and Mosaic
# ran the study shape's forward+backward 2.1x faster than Triton and the study model's
# train step 1.27x faster. Triton serves GPUs older than Hopper (sm_90).
AUTO_KERNELS = ("pallas_mosaic", "pallas_triton")
# Kernels that need Hopper (sm_90) or newer.
_NEEDS_SM90 = ("pallas_mosaic",)
# Kernels that compute in float32 only (float64 inputs go to xla under `auto`).
_FLOAT32_ONLY = ("pallas_mosaic",)

# The fused kernels whose module imports in this build: name -> function(u, delta, A, B,
# C, D, z, delta_bias, delta_softplus, chunk_size); filled at the end of this module.
_KERNELS: dict = {}
# Why a kernel did not import (name -> message), for the warning of `auto`.
_KERNEL_IMPORT_ERRORS: dict = {}


# ----------------------------------------------------------------------------------
# Argument checks: every problem is a ValueError naming the argument and both shapes.


def _check_array(name, x, shape, *, allow_none=False):
  if x is None:
    if allow_none:
      return
    raise ValueError(f"selective_scan: `{name}` is required (shape {shape}).")
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"selective_scan: `{name}` must be an array of shape {shape}, "
                     f"got {type(x).__name__}.")
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"selective_scan: `{name}` has shape {tuple(x.shape)}, "
                     f"needs {tuple(shape)}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"selective_scan: `{name}` has dtype {x.dtype}, needs a floating "
                     "dtype (float32, bfloat16, float16 or float64).")


def _check_scan_args(u, delta, A, B, C, D, z, delta_bias):
  if not hasattr(u, "ndim") or u.ndim != 3:
    got = getattr(u, "shape", type(u).__name__)
    raise ValueError(f"selective_scan: `u` has shape {got}, needs "
                     "(batch, length, channels).")
  if not hasattr(A, "ndim") or A.ndim != 2:
    got = getattr(A, "shape", type(A).__name__)
    raise ValueError(f"selective_scan: `A` has shape {got}, needs (channels, state).")
  b, l, d = u.shape
  n = A.shape[1]
  _check_array("u", u, (b, l, d))
  _check_array("delta", delta, (b, l, d))
  _check_array("A", A, (d, n))
  _check_array("B", B, (b, l, n))
  _check_array("C", C, (b, l, n))
  _check_array("D", D, (d,), allow_none=True)
  _check_array("z", z, (b, l, d), allow_none=True)
  _check_array("delta_bias", delta_bias, (d,), allow_none=True)


# ----------------------------------------------------------------------------------
# The elementwise parts shared by reference and xla: dt, the D skip and the z gate.


def _discretize(delta, delta_bias, delta_softplus, dtype):
  dt = delta.astype(dtype)
  if delta_bias is not None:
    dt = dt + delta_bias.astype(dtype)
  if delta_softplus:
    dt = jax.nn.softplus(dt)
  return dt


def _finish(y, u, D, z, dtype):
  if D is not None:
    y = y + D.astype(dtype) * u.astype(dtype)
  if z is not None:
    y = y * jax.nn.silu(z.astype(dtype))
  return y.astype(u.dtype)


# ----------------------------------------------------------------------------------
# reference


def _ssm_reference(u, dt, A, B, C):
  """(batch, length, channels) in, y and last state out; everything materialised."""
  dA = jnp.exp(dt[..., None] * A)                       # (b, l, d, n)
  dBu = (dt * u)[..., None] * B[:, :, None, :]          # (b, l, d, n)

  def step(h, ab):
    a, bu = ab
    h = a * h + bu
    return h, h

  h0 = jnp.zeros((u.shape[0],) + A.shape, u.dtype)
  h_last, hs = lax.scan(step, h0, (jnp.swapaxes(dA, 0, 1), jnp.swapaxes(dBu, 0, 1)))
  y = jnp.einsum("lbdn,bln->bld", hs, C)
  return y, h_last


# ----------------------------------------------------------------------------------
# xla: chunked recurrence, custom VJP with chunk-boundary states.
#
# Internally time-major and cut into chunks: arrays are (chunks, T, batch, ...).
# The forward keeps the state entering each chunk, (chunks, batch, channels, state),
# i.e. 1/T of the full state history; the backward recomputes a chunk's states from
# its entry state, runs the adjoint recurrence backwards through the chunk and turns
# it into gradients with whole-chunk contractions.


def _linear_recurrence(h0, a, b):
  """h_t = a_t * h_{t-1} + b_t over axis 0; returns all h_t (same shape as a)."""

  def step(h, ab):
    h = ab[0] * h + ab[1]
    return h, h

  return lax.scan(step, h0, (a, b))[1]


def _chunk_terms(A, u_c, dt_c, B_c):
  dA = jnp.exp(dt_c[..., None] * A)                     # (T, b, d, n)
  dBu = (dt_c * u_c)[..., None] * B_c[:, :, None, :]     # (T, b, d, n)
  return dA, dBu


def _ssm_chunked_fwd(u, dt, A, B, C):
  """Time-major chunked inputs -> y (chunks, T, b, d), entry states, last state."""

  def chunk(h, xs):
    u_c, dt_c, B_c, C_c = xs
    dA, dBu = _chunk_terms(A, u_c, dt_c, B_c)
    hs = _linear_recurrence(h, dA, dBu)
    y_c = jnp.einsum("tbdn,tbn->tbd", hs, C_c)
    return hs[-1], (y_c, h)

  h0 = jnp.zeros((u.shape[2],) + A.shape, u.dtype)
  h_last, (y, h_entry) = lax.scan(chunk, h0, (u, dt, B, C))
  return y, h_entry, h_last


@jax.custom_vjp
def _ssm_chunked(u, dt, A, B, C):
  y, _, h_last = _ssm_chunked_fwd(u, dt, A, B, C)
  return y, h_last


def _ssm_chunked_vjp_fwd(u, dt, A, B, C):
  y, h_entry, h_last = _ssm_chunked_fwd(u, dt, A, B, C)
  return (y, h_last), (u, dt, A, B, C, h_entry)


def _ssm_chunked_vjp_bwd(res, cts):
  u, dt, A, B, C, h_entry = res
  dy, dh_last = cts

  def chunk(carry, xs):
    g_after, dA_acc = carry          # g_after: dL/d(last state of this chunk) from later
    u_c, dt_c, B_c, C_c, dy_c, h0 = xs
    dA, dBu = _chunk_terms(A, u_c, dt_c, B_c)
    hs = _linear_recurrence(h0, dA, dBu)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)

    # Adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, run backwards through the chunk.
    def rstep(g_next_scaled, xs_t):
      a_t, c_t = xs_t
      g_t = c_t + g_next_scaled
      return a_t * g_t, g_t

    local = dy_c[..., None] * C_c[:, :, None, :]
    g_before, gs = lax.scan(rstep, g_after, (dA, local), reverse=True)

    dC_c = jnp.einsum("tbdn,tbd->tbn", hs, dy_c)
    d_log_a = gs * h_prev * dA                          # dL/d(dt ⊗ A)
    gB = jnp.einsum("tbdn,tbn->tbd", gs, B_c)
    ddt_c = jnp.einsum("tbdn,dn->tbd", d_log_a, A) + gB * u_c
    du_c = gB * dt_c
    dB_c = jnp.einsum("tbdn,tbd->tbn", gs, dt_c * u_c)
    dA_acc = dA_acc + jnp.einsum("tbdn,tbd->dn", d_log_a, dt_c)
    return (g_before, dA_acc), (du_c, ddt_c, dB_c, dC_c)

  carry0 = (dh_last.astype(u.dtype), jnp.zeros_like(A))
  (_, dA_total), (du, ddt, dB, dC) = lax.scan(
      chunk, carry0, (u, dt, B, C, dy, h_entry), reverse=True)
  return du, ddt, dA_total, dB, dC


_ssm_chunked.defvjp(_ssm_chunked_vjp_fwd, _ssm_chunked_vjp_bwd)


def _ssm_xla(u, dt, A, B, C, chunk_size):
  """(batch, length, ...) in and out; pads length to a multiple of the chunk."""
  b, l, d = u.shape
  T = max(1, min(chunk_size, l))
  nc = -(-l // T)
  pad = nc * T - l

  def to_chunks(x):  # (b, l, k) -> (nc, T, b, k); dt = 0 padding leaves the state as is
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    return jnp.transpose(x.reshape(b, nc, T, x.shape[-1]), (1, 2, 0, 3))

  y, h_last = _ssm_chunked(to_chunks(u), to_chunks(dt), A, to_chunks(B), to_chunks(C))
  y = jnp.transpose(y, (2, 0, 1, 3)).reshape(b, nc * T, d)[:, :l]
  return y, h_last


# ----------------------------------------------------------------------------------
# Public interface


def _scan_with(ssm, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
  dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
  dt = _discretize(delta, delta_bias, delta_softplus, dtype)
  y, h_last = ssm(u.astype(dtype), dt, A.astype(dtype), B.astype(dtype), C.astype(dtype))
  return _finish(y, u, D, z, dtype), h_last


def available_implementations() -> tuple:
  """The concrete implementations this build can run (aliases left out)."""
  return ("reference", "xla") + tuple(k for k in _KERNELS)


def _resolve_impl(impl):
  """A concrete implementation name, or "auto" (resolved per lowering platform)."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"selective_scan: unknown impl={impl!r}; choose one of "
                     f"{', '.join(IMPLEMENTATIONS)}.")
  impl = ALIASES.get(impl, impl)
  if impl in ("auto", "reference", "xla"):
    return impl
  if impl not in _KERNELS:
    why = _KERNEL_IMPORT_ERRORS.get(impl, "not built")
    raise ValueError(f"selective_scan: impl={impl!r} is not available in this build "
                     f"({why}); use impl='xla' or 'auto'.")
  return impl


def _kernel_lowers_for_cuda(impl) -> Optional[str]:
  """None when `impl`'s forward and backward lower for CUDA on a tiny input, else why."""
  kernel = _KERNELS[impl]

  def loss(u, delta, A, B, C, D, z, bias):
    y, h = kernel(u, delta, A, B, C, D, z, bias, True, DEFAULT_CHUNK_SIZE)
    return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h)

  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  args = (s(1, 3, 2), s(1, 3, 2), s(2, 2), s(1, 3, 2), s(1, 3, 2), s(2), s(1, 3, 2), s(2))
  try:
    jax.jit(jax.grad(loss, argnums=tuple(range(8)))).trace(*args).lower(
        lowering_platforms=("cuda",))
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
  return None


def _compute_capability() -> tuple:
  cc = getattr(jax.devices()[0], "compute_capability", None)
  try:
    return tuple(int(x) for x in str(cc).split("."))
  except ValueError:  # not CUDA (e.g. ROCm's gfx names)
    return (0, 0)


@functools.lru_cache(maxsize=None)
def auto_kernel() -> Optional[str]:
  """The fused kernel `auto` uses when lowered for CUDA, or None (then xla everywhere).

  The first of AUTO_KERNELS that imports; on a GPU host also the first whose tiny
  forward+backward lowers for CUDA, so a JAX without a working lowering degrades to xla
  with one warning instead of failing at step 0. On a CPU host the lowering is not
  probed: an export for CUDA of a broken kernel fails loudly (the CI test relies on it).
  """
  reasons = []
  for impl in AUTO_KERNELS:
    if impl not in _KERNELS:
      reasons.append(f"{impl}: {_KERNEL_IMPORT_ERRORS.get(impl, 'not built')}")
      continue
    if jax.default_backend() == "gpu":
      if impl in _NEEDS_SM90 and _compute_capability() < (9, 0):
        reasons.append(f"{impl}: needs sm_90+, this GPU is sm_"
                       f"{''.join(map(str, _compute_capability()))}")
        continue
      why = _kernel_lowers_for_cuda(impl)
      if why is not None:
        reasons.append(f"{impl}: {why}")
        continue
    return impl
  logging.getLogger(__name__).warning(
      "selective_scan impl='auto': no fused kernel is usable with jax %s (%s); using "
      "impl='xla' on every platform.", jax.__version__, "; ".join(reasons))
  return None


def _kernel_scan(impl, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
  # The fused kernels fuse discretisation, the D skip and the gate themselves.
  return _KERNELS[impl](u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)


def _xla_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
  return _scan_with(functools.partial(_ssm_xla, chunk_size=chunk_size),
                    u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, *, impl="auto", return_last_state=False,
                   chunk_size=DEFAULT_CHUNK_SIZE):
  """The selective scan. Returns y (u's dtype), and the last state when asked.

  Arithmetic is float32 (float64 when an input is float64). `chunk_size` is the
  recomputation chunk of the xla and fused implementations. `impl`: see the module
  docstring; "auto" and the fused kernels choose by the platform they are lowered for.
  """
  _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
  impl = _resolve_impl(impl)
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"selective_scan: chunk_size={chunk_size!r}, needs a positive int.")
  args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
  if impl == "auto":
    kernel = auto_kernel()
    if kernel in _FLOAT32_ONLY and compute_dtype(u, delta, A, B, C, D, z,
                                                 delta_bias) == jnp.float64:
      kernel = None
    if kernel is None:
      y, h_last = _xla_scan(*args)
    else:  # both branches are traced; lowering keeps the one of its platform
      y, h_last = lax.platform_dependent(cuda=lambda: _kernel_scan(kernel, *args),
                                         default=lambda: _xla_scan(*args))
  elif impl == "reference":
    y, h_last = _scan_with(_ssm_reference, u, delta, A, B, C, D, z, delta_bias,
                           delta_softplus)
  elif impl == "xla":
    y, h_last = _xla_scan(*args)
  else:
    y, h_last = _kernel_scan(impl, *args)
  return (y, h_last) if return_last_state else y


def selective_state_update(state, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False):
  """One decoding step: state (b, d, n), u/delta/z (b, d), B/C (b, n).

  Returns (y in u's dtype, new state in the compute dtype).
  """
  if not hasattr(u, "ndim") or u.ndim != 2:
    got = getattr(u, "shape", type(u).__name__)
    raise ValueError(f"selective_state_update: `u` has shape {got}, needs "
                     "(batch, channels).")
  b, d = u.shape
  n = A.shape[-1] if hasattr(A, "shape") and A.ndim == 2 else None
  if n is None:
    raise ValueError(f"selective_state_update: `A` has shape "
                     f"{getattr(A, 'shape', None)}, needs (channels, state).")
  for name, x, shape, optional in (
      ("state", state, (b, d, n), False), ("delta", delta, (b, d), False),
      ("A", A, (d, n), False), ("B", B, (b, n), False), ("C", C, (b, n), False),
      ("D", D, (d,), True), ("z", z, (b, d), True), ("delta_bias", delta_bias, (d,), True)):
    try:
      _check_array(name, x, shape, allow_none=optional)
    except ValueError as e:
      raise ValueError(str(e).replace("selective_scan", "selective_state_update")) from None
  dtype = compute_dtype(state, u, delta, A, B, C, D, z, delta_bias)
  dt = _discretize(delta, delta_bias, delta_softplus, dtype)
  A, B, C = A.astype(dtype), B.astype(dtype), C.astype(dtype)
  new_state = (jnp.exp(dt[..., None] * A) * state.astype(dtype)
               + (dt * u.astype(dtype))[..., None] * B[:, None, :])
  y = jnp.einsum("bdn,bn->bd", new_state, C)
  return _finish(y, u, D, z, dtype), new_state


def _import_kernels():
  for name, (module, function) in FUSED_KERNELS.items():
    try:
      _KERNELS[name] = getattr(importlib.import_module(module), function)
    except ImportError as e:
      _KERNEL_IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"


_import_kernels()
