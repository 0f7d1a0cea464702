"""The selective scan as fused Pallas kernels (Triton lowering; interpret mode on CPU).

Which of the two runs is decided by the platform the computation is LOWERED for, not by
the process's default backend: `lax.platform_dependent` stages both, and lowering for
CUDA keeps only the Triton kernel (so `jax.export(..., platforms=["cuda"])` from a CPU
host contains the real kernel), while lowering for any other platform keeps the
interpreted one. Pass `interpret=True/False` to force one.

Grid: one program per (batch row, block of `block_d` channels); programs share nothing,
so they may run in any order or all at once. Inside a program the sequence is walked in
chunks of `chunk_size` steps with the state, a (block_d, state) tile, in registers.

forward   fuses softplus(delta + delta_bias), exp(dt·A), the state update, y = h·C, the
          D skip and the silu(z) gate; writes y, the state entering every chunk, and the
          last state.
backward  walks the chunks in reverse: recomputes the chunk's states from its entry
          state into a per-program scratch buffer, then runs the adjoint recurrence
          backwards through the chunk. Gradients of u, delta and z are written per step;
          the reduced ones (A, D, delta_bias per program; B and C per channel block) are
          written as partial sums and added up outside the kernel: no atomics, and the
          result does not depend on the order programs run in.

Tails (channels not a multiple of the block, a state size that is not a power of two,
a length not a multiple of the chunk) are masked in the loads and stores.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels.fused import by_platform, compute_dtype, fused_scan_vjp

DEFAULT_BLOCK_D = 32
DEFAULT_NUM_WARPS = 4


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels are specialised on (hashable: a custom_vjp nondiff arg)."""
  batch: int
  length: int
  channels: int
  state: int
  chunk: int
  block_d: int
  has_D: bool
  has_z: bool
  has_bias: bool
  softplus: bool
  interpret: bool | None   # None: by lowering platform (cuda -> kernel, else interpret)
  num_warps: int
  reverse_programs: bool  # tests only: run the grid's programs in the opposite order
  acc_dtype: str          # float32, or float64 when an input is

  @property
  def acc(self):
    return jnp.dtype(self.acc_dtype)

  @property
  def state_pad(self):
    return pl.next_power_of_2(self.state)

  @property
  def num_blocks(self):
    return pl.cdiv(self.channels, self.block_d)

  @property
  def num_chunks(self):
    return pl.cdiv(self.length, self.chunk)

  @property
  def grid(self):
    return (self.batch, self.num_blocks)


def _program(st):
  """(batch row, channel block) of this program."""
  b, j = pl.program_id(0), pl.program_id(1)
  if st.reverse_programs:
    b, j = st.batch - 1 - b, st.num_blocks - 1 - j
  return b, j


def _tile(st, j):
  cols = j * st.block_d + jnp.arange(st.block_d)
  rows = jnp.arange(st.state_pad)
  dmask, nmask = cols < st.channels, rows < st.state
  return cols, rows, dmask, nmask, dmask[:, None] & nmask[None, :]


def _load(ref, idx, mask, dtype):
  if mask is None:
    return pltriton.load(ref.at[idx]).astype(dtype)
  return pltriton.load(ref.at[idx], mask=mask, other=0).astype(dtype)


def _dt(st, delta, bias):
  """dt from the raw delta; also its derivative d dt / d delta."""
  raw = delta + bias if st.has_bias else delta
  if st.softplus:
    return jax.nn.softplus(raw), jax.nn.sigmoid(raw)
  return raw, jnp.ones_like(raw)


def _step_inputs(st, refs, b, t, cols, rows, dmask, nmask, acc):
  """u, dt, d dt/d delta, B, C, z at step t (t clamped to the sequence; the caller
  masks the steps past its end)."""
  u_ref, delta_ref, _, B_ref, C_ref, _, z_ref, _ = refs
  tt = jnp.minimum(t, st.length - 1)
  u = _load(u_ref, (b, tt, cols), dmask, acc)
  delta = _load(delta_ref, (b, tt, cols), dmask, acc)
  Bt = _load(B_ref, (b, tt, rows), nmask, acc)
  Ct = _load(C_ref, (b, tt, rows), nmask, acc)
  z = _load(z_ref, (b, tt, cols), dmask, acc) if st.has_z else None
  return tt, u, delta, Bt, Ct, z


def _constants(st, refs, cols, rows, dmask, m2, acc):
  _, _, A_ref, _, _, D_ref, _, bias_ref = refs
  A = _load(A_ref, (cols[:, None], rows[None, :]), m2, acc)
  Dv = _load(D_ref, (cols,), dmask, acc) if st.has_D else None
  bias = _load(bias_ref, (cols,), dmask, acc) if st.has_bias else None
  return A, Dv, bias


def _forward_kernel(*refs, st, acc):
  inputs, (y_ref, h_entry_ref, h_last_ref) = refs[:8], refs[8:]
  b, j = _program(st)
  cols, rows, dmask, nmask, m2 = _tile(st, j)
  A, Dv, bias = _constants(st, inputs, cols, rows, dmask, m2, acc)

  def chunk(c, h):
    pltriton.store(h_entry_ref.at[b, c, cols[:, None], rows[None, :]], h, mask=m2)

    def step(s, h):
      t = c * st.chunk + s
      valid = t < st.length
      tt, u, delta, Bt, Ct, z = _step_inputs(st, inputs, b, t, cols, rows, dmask, nmask,
                                             acc)
      dt = jnp.where(valid, _dt(st, delta, bias)[0], 0)  # dt = 0 leaves h unchanged
      h = jnp.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
      y = jnp.sum(h * Ct[None, :], axis=1)
      if st.has_D:
        y = y + Dv * u
      if st.has_z:
        y = y * jax.nn.silu(z)
      pltriton.store(y_ref.at[b, tt, cols], y.astype(y_ref.dtype), mask=dmask & valid)
      return h

    return lax.fori_loop(0, st.chunk, step, h)

  h = lax.fori_loop(0, st.num_chunks, chunk,
                    jnp.zeros((st.block_d, st.state_pad), acc))
  pltriton.store(h_last_ref.at[b, cols[:, None], rows[None, :]], h, mask=m2)


def _backward_kernel(*refs, st, acc):
  inputs = refs[:8]
  h_entry_ref, dy_ref, dh_last_ref = refs[8:11]
  (du_ref, ddelta_ref, dz_ref, dB_ref, dC_ref, dA_ref, dD_ref, dbias_ref,
   scratch_ref) = refs[11:]
  b, j = _program(st)
  cols, rows, dmask, nmask, m2 = _tile(st, j)
  A, Dv, bias = _constants(st, inputs, cols, rows, dmask, m2, acc)
  tile = (jnp.arange(st.block_d)[:, None], rows[None, :])

  def chunk(ci, carry):
    c = st.num_chunks - 1 - ci
    h0 = _load(h_entry_ref, (b, c, cols[:, None], rows[None, :]), m2, acc)

    def recompute(s, h):
      t = c * st.chunk + s
      _, u, delta, Bt, _, _ = _step_inputs(st, inputs, b, t, cols, rows, dmask, nmask, acc)
      dt = jnp.where(t < st.length, _dt(st, delta, bias)[0], 0)
      h = jnp.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
      pltriton.store(scratch_ref.at[(b, j, s) + tile], h)
      return h

    lax.fori_loop(0, st.chunk, recompute, h0)

    def step(si, carry):
      g_after, dA_acc, dD_acc, dbias_acc = carry  # g_after = a_{t+1} · dL/dh_{t+1}
      s = st.chunk - 1 - si
      t = c * st.chunk + s
      valid = t < st.length
      tt, u, delta, Bt, Ct, z = _step_inputs(st, inputs, b, t, cols, rows, dmask, nmask,
                                             acc)
      dy = _load(dy_ref, (b, tt, cols), dmask & valid, acc)
      dt, ddt_ddelta = _dt(st, delta, bias)
      dt = jnp.where(valid, dt, 0)
      h = _load(scratch_ref, (b, j, s) + tile, None, acc)
      h_prev = jnp.where(s == 0, h0,
                         _load(scratch_ref, (b, j, jnp.maximum(s - 1, 0)) + tile, None, acc))
      a = jnp.exp(dt[:, None] * A)

      dy_pre = dy                                       # dL/d(h·C + D·u)
      if st.has_z:
        y_pre = jnp.sum(h * Ct[None, :], axis=1) + (Dv * u if st.has_D else 0)
        sig = jax.nn.sigmoid(z)
        dz = dy * y_pre * sig * (1 + z * (1 - sig))
        pltriton.store(dz_ref.at[b, tt, cols], dz.astype(dz_ref.dtype), mask=dmask & valid)
        dy_pre = dy * z * sig
      du = dy_pre * Dv if st.has_D else jnp.zeros_like(u)
      if st.has_D:
        dD_acc = dD_acc + dy_pre * u

      g = dy_pre[:, None] * Ct[None, :] + g_after       # dL/dh_t
      d_log_a = g * h_prev * a                          # dL/d(dt·A)
      gB = jnp.sum(g * Bt[None, :], axis=1)
      ddt = jnp.sum(d_log_a * A, axis=1) + gB * u
      du = du + gB * dt
      ddelta = jnp.where(valid, ddt * ddt_ddelta, 0)
      dA_acc = dA_acc + d_log_a * dt[:, None]
      if st.has_bias:
        dbias_acc = dbias_acc + ddelta
      out = dmask & valid
      pltriton.store(du_ref.at[b, tt, cols], du.astype(du_ref.dtype), mask=out)
      pltriton.store(ddelta_ref.at[b, tt, cols], ddelta.astype(ddelta_ref.dtype), mask=out)
      pltriton.store(dB_ref.at[j, b, tt, rows], jnp.sum(g * (dt * u)[:, None], axis=0),
                     mask=nmask & valid)
      pltriton.store(dC_ref.at[j, b, tt, rows], jnp.sum(h * dy_pre[:, None], axis=0),
                     mask=nmask & valid)
      return a * g, dA_acc, dD_acc, dbias_acc

    return lax.fori_loop(0, st.chunk, step, carry)

  zeros_d = jnp.zeros((st.block_d,), acc)
  g_last = _load(dh_last_ref, (b, cols[:, None], rows[None, :]), m2, acc)
  _, dA_acc, dD_acc, dbias_acc = lax.fori_loop(
      0, st.num_chunks, chunk,
      (g_last, jnp.zeros((st.block_d, st.state_pad), acc), zeros_d, zeros_d))
  pltriton.store(dA_ref.at[b, cols[:, None], rows[None, :]], dA_acc, mask=m2)
  pltriton.store(dD_ref.at[b, cols], dD_acc, mask=dmask)
  pltriton.store(dbias_ref.at[b, cols], dbias_acc, mask=dmask)


def _call(kernel, st, out_shape, *args):
  def call(interpret):
    return pl.pallas_call(
        functools.partial(kernel, st=st, acc=st.acc), grid=st.grid, out_shape=out_shape,
        interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=st.num_warps, num_stages=1),
    )(*args)

  return call(st.interpret) if st.interpret is not None else by_platform(call)


def _forward(st, u, delta, A, B, C, D, z, bias):
  acc = st.acc
  out_shape = [
      jax.ShapeDtypeStruct(u.shape, u.dtype),
      jax.ShapeDtypeStruct((st.batch, st.num_chunks, st.channels, st.state), acc),
      jax.ShapeDtypeStruct((st.batch, st.channels, st.state), acc)]
  return _call(_forward_kernel, st, out_shape, u, delta, A, B, C, D, z, bias)


def _backward(st, inputs, h_entry, cts):
  u, delta, A, B, C, D, z, bias = inputs
  dy, dh_last = cts
  acc = st.acc
  bl = (st.batch, st.length)
  out_shape = [
      jax.ShapeDtypeStruct(bl + (st.channels,), acc),                 # du
      jax.ShapeDtypeStruct(bl + (st.channels,), acc),                 # ddelta
      jax.ShapeDtypeStruct(bl + (st.channels,), acc),                 # dz
      jax.ShapeDtypeStruct((st.num_blocks,) + bl + (st.state,), acc),  # dB per block
      jax.ShapeDtypeStruct((st.num_blocks,) + bl + (st.state,), acc),  # dC per block
      jax.ShapeDtypeStruct((st.batch, st.channels, st.state), acc),   # dA per row
      jax.ShapeDtypeStruct((st.batch, st.channels), acc),             # dD per row
      jax.ShapeDtypeStruct((st.batch, st.channels), acc),             # dbias per row
      jax.ShapeDtypeStruct((st.batch, st.num_blocks, st.chunk, st.block_d, st.state_pad),
                           acc)]                                       # state scratch
  du, ddelta, dz, dB, dC, dA, dD, dbias, _ = _call(
      _backward_kernel, st, out_shape, u, delta, A, B, C, D, z, bias, h_entry,
      dy, dh_last.astype(acc))
  cast = lambda g, x, present=True: g.astype(x.dtype) if present else jnp.zeros_like(x)
  return (cast(du, u), cast(ddelta, delta), cast(dA.sum(0), A), cast(dB.sum(0), B),
          cast(dC.sum(0), C), cast(dD.sum(0), D, st.has_D), cast(dz, z, st.has_z),
          cast(dbias.sum(0), bias, st.has_bias))


_scan = fused_scan_vjp(_forward, _backward)


def pallas_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, chunk_size=64, *, block_d=None,
                          num_warps=None, interpret=None, reverse_programs=False):
  """(y in u's dtype, last state) for checked, channels-last inputs.

  `interpret=None` (default) decides by the lowering platform: the Triton kernel when
  lowered for CUDA, interpret mode elsewhere; True/False force one. `reverse_programs`
  exists for the test that the result does not depend on the order grid programs run in.
  """
  b, l, d = u.shape
  n = A.shape[1]
  block_d = block_d or min(DEFAULT_BLOCK_D, pl.next_power_of_2(d))
  if block_d & (block_d - 1):
    raise ValueError(f"pallas selective scan: block_d={block_d} must be a power of two.")
  st = _Static(batch=b, length=l, channels=d, state=n, chunk=min(chunk_size, l),
               block_d=block_d, has_D=D is not None, has_z=z is not None,
               has_bias=delta_bias is not None, softplus=bool(delta_softplus),
               interpret=interpret, num_warps=num_warps or DEFAULT_NUM_WARPS,
               reverse_programs=reverse_programs,
               acc_dtype=jnp.dtype(compute_dtype(u, delta, A, B, C, D, z, delta_bias)).name)
  # Absent inputs become small placeholders the kernels never read.
  placeholder = jnp.zeros((1,), u.dtype)
  y, h_last = _scan(st, u, delta, A, B, C,
                    placeholder if D is None else D,
                    jnp.zeros((1, 1, 1), u.dtype) if z is None else z,
                    placeholder if delta_bias is None else delta_bias)
  return y, h_last
