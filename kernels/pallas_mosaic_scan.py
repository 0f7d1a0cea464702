"""The selective scan as fused Pallas kernels with the Mosaic GPU lowering.

Why a second kernel: JAX 0.11's Pallas changelog deprecates the Triton backend (to be
removed); Mosaic GPU is Pallas's default GPU backend since JAX 0.9. This module computes
the same function as kernels/pallas_scan.py (Triton) with the same design:

  grid      one program (one warpgroup, 128 threads) per (batch row, block of 64
            channels); programs share nothing, so they may run in any order or all at
            once (invariant 2). The sequence loop lives inside the program, in chunks
            of T steps, with the state, a (64 channels, state) tile, in registers.
  forward   fuses softplus(delta + delta_bias), exp(dt·A), the state update, y = h·C,
            the D skip and the silu(z) gate; writes y, the state entering every chunk
            and the last state.
  backward  walks the chunks in reverse: recomputes the chunk's states from its entry
            state into shared memory, then runs the adjoint recurrence backwards
            through the chunk. Gradients of u, delta and z are written per step; the
            reduced ones are partial sums (A, D, delta_bias per program; B and C per
            channel block) added up outside the kernel: no atomics, order-independent.

What differs from the Triton kernel, because of what Mosaic GPU expresses (JAX 0.10):
  * Data moves GMEM <-> SMEM by TMA copies of whole (T, 64) / (T, state) tiles; there are
    no masked loads. Tails are handled by padding outside the kernel: channels to a
    multiple of 64, the state to a multiple of 16, the length to a multiple of T (steps
    past the end get dt = 0, which leaves the state unchanged). TMA also needs 16-byte
    aligned rows, which the padding gives. The study model's shapes (2048 channels,
    state 16, length 1024) need no padding.
  * Register arrays carry layouts: the state tile uses the WGMMA layout, per-channel
    vectors its row reduction, per-state vectors its column reduction; `layout_cast`
    names them. The GPU interpreter (`InterpretGPUParams`, used on CPU for the tests)
    does not know `layout_cast`, so the casts are skipped when interpreting.
  * No log1p: softplus is max(x, 0) + 2·atanh(e/(2 + e)) with e = exp(-|x|), the atanh
    as a short series (a form with nothing for the compiler to fold away).
  * Arithmetic is float32; float64 inputs are refused (use impl="xla" or "reference").
  * The shared-memory state history of the backward is (T + 1, 64, state) float32, so T
    is capped at 16384 / (64 · state) steps (16 for the study's state 16).

The platform decides, as in pallas_scan.py: lowered for CUDA this is the Mosaic GPU
kernel (custom call `mosaic_gpu_v2`); lowered elsewhere it runs in the GPU interpreter.
Mosaic GPU targets Hopper (sm_90) and newer: `auto` picks this kernel only where the
device is sm_90+ (an export from a CPU host assumes sm_90, as Mosaic GPU does).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels.fused import INTERPRET_SCOPE, fused_scan_vjp

BLOCK_D = 64          # channels per program: the WGMMA layout's row tile
STATE_ALIGN = 16      # the WGMMA layout tile (JAX 0.7 rejects 8 columns); 16-byte TMA rows
SMEM_HISTORY_FLOATS = 16384  # cap on T * BLOCK_D * state_pad (the backward's history)
CUSTOM_CALL_TARGET = "mosaic_gpu_v2"


# The Mosaic GPU interpreter (an internal module: no public name yet). JAX 0.9 has a first
# one, which fails on this kernel ("TypeError: src must be a reference, got int32[5]" in
# its copy emulation); from 0.10 it runs it. Older JAX: the kernel lowers for CUDA only.
try:
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
except ImportError:  # pragma: no cover
  InterpretGPUParams = None
_KERNEL_PARAMS = inspect.signature(plgpu.kernel).parameters
_COMPILER_PARAMS = {f.name for f in dataclasses.fields(plgpu.CompilerParams)}
# False on JAX < 0.10: the kernel still lowers for CUDA, but cannot run off a GPU.
HAS_INTERPRETER = InterpretGPUParams is not None and "interpret" in _KERNEL_PARAMS


def _kernel(body, out_type, scratch, grid, interpret):
  """plgpu.kernel across JAX versions (out_type/scratch_types since 0.10)."""
  kw = dict(grid=grid, grid_names=("batch", "block"))
  if "lowering_semantics" in _COMPILER_PARAMS:
    # Written for per-lane semantics (scalars broadcast implicitly), the default before
    # JAX 0.11; from 0.11 the default is warpgroup semantics, which rejects it.
    kw["compiler_params"] = plgpu.CompilerParams(
        lowering_semantics=plgpu.LoweringSemantics.Lane)
  if "out_type" in _KERNEL_PARAMS:
    kw.update(out_type=out_type, scratch_types=scratch)
  else:
    kw.update(out_shape=out_type, scratch_shapes=scratch)
  if interpret:
    if not HAS_INTERPRETER:
      raise NotImplementedError(
          f"impl='pallas_mosaic' off a GPU needs the Mosaic GPU interpreter (JAX 0.10+); "
          f"this is jax {jax.__version__}.")
    kw["interpret"] = InterpretGPUParams()
  return plgpu.kernel(body, **kw)


def _round_up(x, m):
  return -(-x // m) * m


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels are specialised on (hashable: a custom_vjp nondiff arg)."""
  batch: int
  length: int           # the real length; steps at or past it have dt = 0
  length_pad: int
  channels: int
  channels_pad: int
  state: int
  state_pad: int
  chunk: int
  has_z: bool
  softplus: bool
  interpret: bool | None  # None: by lowering platform (cuda -> kernel, else interpreter)
  reverse_programs: bool  # tests only: run the grid's programs in the opposite order

  @property
  def num_blocks(self):
    return self.channels_pad // BLOCK_D

  @property
  def num_chunks(self):
    return self.length_pad // self.chunk

  @property
  def grid(self):
    return (self.batch, self.num_blocks)


class _Layouts:
  """The register layouts, or nothing when the GPU interpreter runs the kernel."""

  def __init__(self, interpreted):
    self.interpreted = interpreted

  def _cast(self, x, layout):
    return x if self.interpreted else plgpu.layout_cast(x, layout)

  def tile(self, x):      # (BLOCK_D, state_pad)
    return self._cast(x, plgpu.Layout.WGMMA)

  def load_tile(self, ref):
    """A (BLOCK_D, state_pad) float32 tile from SMEM. From 32 states up Mosaic GPU finds
    no bank-conflict-free transfer for the WGMMA layout (TransferPlanDerivationError),
    so those loads are the unoptimised kind."""
    if self.interpreted:
      return ref[...]
    return plgpu.load(ref, (), layout=plgpu.Layout.WGMMA,
                      optimized=ref.shape[-1] < 32)

  def row(self, x):       # (BLOCK_D,): one value per channel
    return self._cast(x, plgpu.Layout.WGMMA.reduce(1))

  def col(self, x):       # (state_pad,): one value per state
    return self._cast(x, plgpu.Layout.WGMMA.reduce(0))


def _program(st):
  b, j = lax.axis_index("batch"), lax.axis_index("block")
  if st.reverse_programs:
    b, j = st.batch - 1 - b, st.num_blocks - 1 - j
  return b, j


# 2·atanh(t) = log1p(e) with t = e / (2 + e): for e in (0, 1] t <= 1/3, so nine odd terms
# of the atanh series reach float32 precision. Nothing here cancels, so no compiler
# rewrite (XLA folds (1 + e) - 1 back to e) can undo it; Mosaic GPU has no log1p.
_ATANH_TERMS = tuple(1.0 / (2 * k + 1) for k in range(9))


def _softplus(raw):
  """softplus and its derivative (sigmoid) with exp, division and polynomials only:
  softplus(x) = max(x, 0) + log1p(exp(-|x|))."""
  e = jnp.exp(jnp.minimum(raw, -raw))                  # exp(-|x|), in (0, 1]
  t = e / (2.0 + e)
  s = t * t
  poly = _ATANH_TERMS[-1]
  for c in reversed(_ATANH_TERMS[:-1]):
    poly = c + s * poly
  inv = 1.0 / (1.0 + e)
  return jnp.maximum(raw, 0.0) + 2.0 * t * poly, jnp.where(raw >= 0.0, inv, e * inv)


def _dt(st, delta, bias):
  raw = delta + bias
  if st.softplus:
    return _softplus(raw)
  return raw, jnp.ones_like(raw)


def _copy_in(pairs, bars):
  """TMA copies GMEM -> SMEM, one barrier each, then waits for all of them."""
  for k, (src, dst) in enumerate(pairs):
    plgpu.copy_gmem_to_smem(src, dst, bars.at[k])
  for k in range(len(pairs)):
    plgpu.barrier_wait(bars.at[k])


def _copy_out(pairs):
  """SMEM -> GMEM, waited for (the buffers are reused right after)."""
  plgpu.commit_smem()
  for src, dst in pairs:
    plgpu.copy_smem_to_gmem(src, dst)
  plgpu.wait_smem_to_gmem(0)


def _bcast_row(x, shape):
  return lax.broadcast_in_dim(x, shape, [0])


def _bcast_col(x, shape):
  return lax.broadcast_in_dim(x, shape, [1])


def _program_setup(st, interpreted, A_ref, D_ref, bias_ref, A_s, v_s, bars):
  """What both kernels start with: the layouts, this program's (batch row, channel block,
  its columns) and the block's constants A (tile), D and the dt bias (rows)."""
  lay = _Layouts(interpreted)
  b, j = _program(st)
  cols = pl.ds(j * BLOCK_D, BLOCK_D)
  _copy_in([(A_ref.at[cols, :], A_s), (D_ref.at[cols], v_s.at[0]),
            (bias_ref.at[cols], v_s.at[1])], bars)
  return lay, b, j, cols, (lay.load_tile(A_s), lay.row(v_s[0]), lay.row(v_s[1]))


def _forward_kernel(u_ref, delta_ref, A_ref, B_ref, C_ref, D_ref, z_ref, bias_ref,
                    y_ref, h_entry_ref, h_last_ref,
                    u_s, d_s, z_s, B_s, C_s, y_s, A_s, v_s, h_s, bars, *, st, interpreted):
  lay, b, j, cols, (A, Dv, bias) = _program_setup(st, interpreted, A_ref, D_ref, bias_ref,
                                                  A_s, v_s, bars)
  f32, tile = jnp.float32, (BLOCK_D, st.state_pad)

  def chunk(c, h):
    rows = pl.ds(c * st.chunk, st.chunk)
    ins = [(u_ref.at[b, rows, cols], u_s), (delta_ref.at[b, rows, cols], d_s),
           (B_ref.at[b, rows, :], B_s), (C_ref.at[b, rows, :], C_s)]
    if st.has_z:
      ins.append((z_ref.at[b, rows, cols], z_s))
    _copy_in(ins, bars)
    h_s[...] = h
    _copy_out([(h_s, h_entry_ref.at[b, c, cols, :])])

    def step(s, h):
      valid = c * st.chunk + s < st.length
      u = lay.row(u_s[s]).astype(f32)
      dt = _dt(st, lay.row(d_s[s]).astype(f32), bias)[0]
      dt = jnp.where(valid, dt, 0.0)                    # dt = 0 leaves h unchanged
      Bt = lay.col(B_s[s]).astype(f32)
      Ct = lay.col(C_s[s]).astype(f32)
      h = (jnp.exp(_bcast_row(dt, tile) * A) * h
           + _bcast_row(dt * u, tile) * _bcast_col(Bt, tile))
      y = jnp.sum(h * _bcast_col(Ct, tile), axis=1) + Dv * u
      if st.has_z:
        z = lay.row(z_s[s]).astype(f32)
        y = y * (z / (1.0 + jnp.exp(-z)))
      y_s[s] = y.astype(y_s.dtype)
      return h

    h = lax.fori_loop(0, st.chunk, step, h)
    _copy_out([(y_s, y_ref.at[b, rows, cols])])
    return h

  h = lax.fori_loop(0, st.num_chunks, chunk, lay.tile(jnp.zeros(tile, f32)))
  h_s[...] = h
  _copy_out([(h_s, h_last_ref.at[b, cols, :])])


def _backward_kernel(u_ref, delta_ref, A_ref, B_ref, C_ref, D_ref, z_ref, bias_ref,
                     h_entry_ref, dy_ref, dh_last_ref,
                     du_ref, ddelta_ref, dz_ref, dB_ref, dC_ref, dA_ref, dD_ref, dbias_ref,
                     u_s, d_s, z_s, dy_s, B_s, C_s, hs, du_s, dd_s, dz_s, dB_s, dC_s,
                     A_s, v_s, bars, *, st, interpreted):
  lay, b, j, cols, (A, Dv, bias) = _program_setup(st, interpreted, A_ref, D_ref, bias_ref,
                                                  A_s, v_s, bars)
  f32, tile = jnp.float32, (BLOCK_D, st.state_pad)

  def chunk(ci, carry):
    c = st.num_chunks - 1 - ci
    rows = pl.ds(c * st.chunk, st.chunk)
    ins = [(u_ref.at[b, rows, cols], u_s), (delta_ref.at[b, rows, cols], d_s),
           (dy_ref.at[b, rows, cols], dy_s), (B_ref.at[b, rows, :], B_s),
           (C_ref.at[b, rows, :], C_s), (h_entry_ref.at[b, c, cols, :], hs.at[0])]
    if st.has_z:
      ins.append((z_ref.at[b, rows, cols], z_s))
    _copy_in(ins, bars)

    def recompute(s, h):                               # hs[s + 1] = state after step s
      valid = c * st.chunk + s < st.length
      u = lay.row(u_s[s]).astype(f32)
      dt = jnp.where(valid, _dt(st, lay.row(d_s[s]).astype(f32), bias)[0], 0.0)
      Bt = lay.col(B_s[s]).astype(f32)
      h = (jnp.exp(_bcast_row(dt, tile) * A) * h
           + _bcast_row(dt * u, tile) * _bcast_col(Bt, tile))
      hs[s + 1] = h
      return h

    lax.fori_loop(0, st.chunk, recompute, lay.load_tile(hs.at[0]))

    def step(si, carry):
      g_after, dA_acc, dD_acc, dbias_acc = carry        # g_after = a_{t+1} · dL/dh_{t+1}
      s = st.chunk - 1 - si
      valid = c * st.chunk + s < st.length
      u = lay.row(u_s[s]).astype(f32)
      dy = lay.row(dy_s[s]).astype(f32)
      dt, ddt_ddelta = _dt(st, lay.row(d_s[s]).astype(f32), bias)
      dt = jnp.where(valid, dt, 0.0)
      Bt = lay.col(B_s[s]).astype(f32)
      Ct = lay.col(C_s[s]).astype(f32)
      h = lay.load_tile(hs.at[s + 1])
      h_prev = lay.load_tile(hs.at[s])
      a = jnp.exp(_bcast_row(dt, tile) * A)

      dy_pre = dy                                       # dL/d(h·C + D·u)
      if st.has_z:
        z = lay.row(z_s[s]).astype(f32)
        y_pre = jnp.sum(h * _bcast_col(Ct, tile), axis=1) + Dv * u
        sig = 1.0 / (1.0 + jnp.exp(-z))
        dz_s[s] = dy * y_pre * sig * (1.0 + z * (1.0 - sig))
        dy_pre = dy * z * sig
      dD_acc = dD_acc + dy_pre * u

      g = _bcast_row(dy_pre, tile) * _bcast_col(Ct, tile) + g_after   # dL/dh_t
      d_log_a = g * h_prev * a                                         # dL/d(dt·A)
      gB = jnp.sum(g * _bcast_col(Bt, tile), axis=1)
      ddt = jnp.sum(d_log_a * A, axis=1) + gB * u
      du_s[s] = dy_pre * Dv + gB * dt
      ddelta = jnp.where(valid, ddt * ddt_ddelta, 0.0)
      dd_s[s] = ddelta
      dA_acc = dA_acc + d_log_a * _bcast_row(dt, tile)
      dbias_acc = dbias_acc + ddelta
      dB_s[s] = jnp.sum(g * _bcast_row(dt * u, tile), axis=0)
      dC_s[s] = jnp.sum(h * _bcast_row(dy_pre, tile), axis=0)
      return a * g, dA_acc, dD_acc, dbias_acc

    carry = lax.fori_loop(0, st.chunk, step, carry)
    outs = [(du_s, du_ref.at[b, rows, cols]), (dd_s, ddelta_ref.at[b, rows, cols]),
            (dB_s, dB_ref.at[j, b, rows, :]), (dC_s, dC_ref.at[j, b, rows, :])]
    if st.has_z:
      outs.append((dz_s, dz_ref.at[b, rows, cols]))
    _copy_out(outs)
    return carry

  _copy_in([(dh_last_ref.at[b, cols, :], hs.at[0])], bars)
  zeros_row = lay.row(jnp.zeros((BLOCK_D,), f32))
  _, dA_acc, dD_acc, dbias_acc = lax.fori_loop(
      0, st.num_chunks, chunk,
      (lay.load_tile(hs.at[0]), lay.tile(jnp.zeros(tile, f32)), zeros_row, zeros_row))
  hs[0] = dA_acc
  v_s[0] = dD_acc
  v_s[1] = dbias_acc
  _copy_out([(hs.at[0], dA_ref.at[b, cols, :]), (v_s.at[0], dD_ref.at[b, cols]),
             (v_s.at[1], dbias_ref.at[b, cols])])


def _call(kernel, st, out_type, scratch, *args):
  def call(interpret, *xs):
    return _kernel(functools.partial(kernel, st=st, interpreted=interpret), out_type,
                   scratch, st.grid, interpret)(*xs)

  if st.interpret is not None:
    return call(st.interpret, *args)

  # The GPU interpreter carries an ordered IO effect, and `lax.platform_dependent` cannot
  # lower a cond whose branches differ in ordered effects (JAX 0.10: "Lowering rule for
  # `cond` returns incorrect set of output tokens"). So off CUDA the interpreted kernel
  # runs inside a pure host callback, which has no effect to stage.
  interpret_jit = jax.jit(functools.partial(call, True))

  def host(*xs):
    return jax.tree.map(np.asarray, interpret_jit(*xs))

  def interpreted():
    with jax.named_scope(INTERPRET_SCOPE):
      return jax.pure_callback(host, out_type, *args)

  return lax.platform_dependent(cuda=lambda: call(False, *args), default=interpreted)


def _forward(st, u, delta, A, B, C, D, z, bias):
  f32, T = jnp.float32, st.chunk
  out_type = [
      jax.ShapeDtypeStruct(u.shape, u.dtype),
      jax.ShapeDtypeStruct((st.batch, st.num_chunks, st.channels_pad, st.state_pad), f32),
      jax.ShapeDtypeStruct((st.batch, st.channels_pad, st.state_pad), f32)]
  scratch = [plgpu.SMEM((T, BLOCK_D), u.dtype), plgpu.SMEM((T, BLOCK_D), delta.dtype),
             plgpu.SMEM((T, BLOCK_D), z.dtype), plgpu.SMEM((T, st.state_pad), B.dtype),
             plgpu.SMEM((T, st.state_pad), C.dtype), plgpu.SMEM((T, BLOCK_D), u.dtype),
             plgpu.SMEM((BLOCK_D, st.state_pad), f32), plgpu.SMEM((2, BLOCK_D), f32),
             plgpu.SMEM((BLOCK_D, st.state_pad), f32), plgpu.Barrier(num_barriers=5)]
  return _call(_forward_kernel, st, out_type, scratch, u, delta, A, B, C, D, z, bias)


def _backward(st, inputs, h_entry, cts):
  u, delta, A, B, C, D, z, bias = inputs
  dy, dh_last = cts
  f32, T = jnp.float32, st.chunk
  bl = (st.batch, st.length_pad)
  out_type = [
      jax.ShapeDtypeStruct(bl + (st.channels_pad,), f32),                    # du
      jax.ShapeDtypeStruct(bl + (st.channels_pad,), f32),                    # ddelta
      jax.ShapeDtypeStruct(bl + (st.channels_pad,), f32),                    # dz
      jax.ShapeDtypeStruct((st.num_blocks,) + bl + (st.state_pad,), f32),    # dB per block
      jax.ShapeDtypeStruct((st.num_blocks,) + bl + (st.state_pad,), f32),    # dC per block
      jax.ShapeDtypeStruct((st.batch, st.channels_pad, st.state_pad), f32),  # dA per row
      jax.ShapeDtypeStruct((st.batch, st.channels_pad), f32),                # dD per row
      jax.ShapeDtypeStruct((st.batch, st.channels_pad), f32)]                # dbias per row
  ch = lambda dt: plgpu.SMEM((T, BLOCK_D), dt)
  sv = lambda dt: plgpu.SMEM((T, st.state_pad), dt)
  scratch = [ch(u.dtype), ch(delta.dtype), ch(z.dtype), ch(dy.dtype), sv(B.dtype),
             sv(C.dtype), plgpu.SMEM((T + 1, BLOCK_D, st.state_pad), f32),
             ch(f32), ch(f32), ch(f32), sv(f32), sv(f32),
             plgpu.SMEM((BLOCK_D, st.state_pad), f32), plgpu.SMEM((2, BLOCK_D), f32),
             plgpu.Barrier(num_barriers=7)]
  du, ddelta, dz, dB, dC, dA, dD, dbias = _call(
      _backward_kernel, st, out_type, scratch, u, delta, A, B, C, D, z, bias, h_entry,
      dy, dh_last.astype(f32))
  cast = lambda g, x: g.astype(x.dtype)
  return (cast(du, u), cast(ddelta, delta), dA.sum(0), cast(dB.sum(0), B),
          cast(dC.sum(0), C), dD.sum(0), cast(dz, z) if st.has_z else jnp.zeros_like(z),
          dbias.sum(0))


_scan = fused_scan_vjp(_forward, _backward)


def mosaic_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, chunk_size=16, *, interpret=None,
                          reverse_programs=False):
  """(y in u's dtype, last state in float32) for checked, channels-last inputs.

  `interpret=None` (default) decides by the lowering platform: the Mosaic GPU kernel
  when lowered for CUDA, the GPU interpreter elsewhere; True/False force one.
  """
  if any(x is not None and x.dtype == jnp.float64
         for x in (u, delta, A, B, C, D, z, delta_bias)):
    raise ValueError("selective_scan: impl='pallas_mosaic' computes in float32; use "
                     "impl='xla' or 'reference' for float64 inputs.")
  b, l, d = u.shape
  n = A.shape[1]
  dp, np_ = _round_up(d, BLOCK_D), _round_up(n, STATE_ALIGN)
  cap = max(1, SMEM_HISTORY_FLOATS // (BLOCK_D * np_))
  T = max(1, min(chunk_size, l, 1 << (cap.bit_length() - 1)))
  lp = _round_up(l, T)
  st = _Static(batch=b, length=l, length_pad=lp, channels=d, channels_pad=dp, state=n,
               state_pad=np_, chunk=T, has_z=z is not None, softplus=bool(delta_softplus),
               interpret=interpret, reverse_programs=reverse_programs)
  f32 = jnp.float32

  def pad(x, shape):  # zeros after the end of every axis; a no-op when aligned
    if x.shape == shape:
      return x
    return jnp.pad(x, [(0, s - k) for s, k in zip(shape, x.shape)])

  bld, bln = (b, lp, dp), (b, lp, np_)
  args = (pad(u, bld), pad(delta, bld), pad(A.astype(f32), (dp, np_)),
          pad(B, bln), pad(C, bln),
          pad((jnp.zeros((d,), f32) if D is None else D.astype(f32)), (dp,)),
          pad(z, bld) if z is not None else jnp.zeros((1, 1, 1), u.dtype),
          pad((jnp.zeros((d,), f32) if delta_bias is None else delta_bias.astype(f32)),
              (dp,)))
  # The kernel on padded arrays, sliced back (gradients flow through the padding).
  y, h_last = _scan(st, *args)
  return y[:, :st.length, :st.channels], h_last[:, :st.channels, :st.state]
