"""The selective scan: every implementation against a float64 reference.

The reference itself is checked against an independent NumPy float64 loop; the other
implementations are checked against the reference run in float64 (outputs and the
gradients of every input), on fresh random inputs of awkward shapes.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
import kernels.scan
from kernels import selective_scan, selective_state_update

CHUNK = 16
IMPLS = [i for i in kernels.available_implementations() if i != "reference"]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(rng, b, l, d, n, *, D=True, z=True, bias=True, softplus=True,
                dtype=np.float32):
  f = lambda *s: rng.normal(size=s).astype(dtype)
  # Without softplus, dt must already be positive (else exp(dt·A) > 1 and h explodes).
  delta = (0.5 * f(b, l, d) - 1.0) if softplus else rng.uniform(0.01, 0.5, (b, l, d))
  return {
      "u": f(b, l, d), "delta": delta.astype(dtype),
      # A < 0 as in the model; spread over two decades like S4D-real's -(1..N).
      "A": (-np.exp(rng.uniform(-1.0, 1.5, size=(d, n)))).astype(dtype),
      "B": f(b, l, n), "C": f(b, l, n),
      "D": f(d) if D else None, "z": f(b, l, d) if z else None,
      "delta_bias": (0.3 * (f(d) if softplus else np.abs(f(d)))).astype(dtype)
                    if bias else None,
  }


def numpy_scan(u, delta, A, B, C, D, z, delta_bias, softplus):
  """An independent float64 loop over time, batch-by-batch, channel-by-channel."""
  u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
  b, l, d = u.shape
  dt = delta + (0 if delta_bias is None else np.asarray(delta_bias, np.float64))
  if softplus:
    dt = np.logaddexp(0.0, dt)
  y = np.zeros((b, l, d))
  h = np.zeros((b, d, A.shape[1]))
  for t in range(l):
    for i in range(b):
      h[i] = np.exp(dt[i, t][:, None] * A) * h[i] + (dt[i, t] * u[i, t])[:, None] * B[i, t]
      y[i, t] = h[i] @ C[i, t]
  if D is not None:
    y += np.asarray(D, np.float64) * u
  if z is not None:
    zz = np.asarray(z, np.float64)
    y *= zz / (1 + np.exp(-zz))
  return y, h


def run(impl, inputs, softplus, *, grads=False, seed=0):
  """y, last state and (optionally) gradients of a random projection of both."""
  names = [k for k in NAMES if inputs[k] is not None]
  arrays = [jnp.asarray(inputs[k]) for k in names]
  y0 = np.random.default_rng(seed + 1)

  def loss(*xs):
    kw = dict(zip(names, xs))
    y, h = selective_scan(kw.pop("u"), kw.pop("delta"), kw.pop("A"), kw.pop("B"),
                          kw.pop("C"), **kw, delta_softplus=softplus, impl=impl,
                          return_last_state=True, chunk_size=CHUNK)
    wy = jnp.asarray(y0.normal(size=y.shape), y.dtype)
    wh = jnp.asarray(y0.normal(size=h.shape), h.dtype)
    return (jnp.sum(y.astype(h.dtype) * wy) + jnp.sum(h * wh)), (y, h)

  if not grads:
    _, (y, h) = loss(*arrays)
    return y, h, None
  (_, (y, h)), g = jax.value_and_grad(loss, argnums=tuple(range(len(arrays))),
                                      has_aux=True)(*arrays)
  return y, h, dict(zip(names, g))


def close(got, want, rtol, what):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, what
  scale = max(np.max(np.abs(want)), 1e-3)
  err = np.max(np.abs(got - want)) / scale
  assert err <= rtol, f"{what}: relative max error {err:.2e} > {rtol:.0e}"


SHAPES = [  # (batch, length, channels, state)
    (2, 1, 5, 3), (1, 7, 12, 16), (2, 64, 6, 4), (1, 257, 5, 3),
    (2, CHUNK - 1, 7, 5), (1, CHUNK, 3, 2), (2, CHUNK + 1, 5, 3)]
OPTIONS = [  # (D, z, delta_bias, softplus)
    (True, True, True, True), (False, False, False, False), (True, False, True, False),
    (False, True, False, True)]


def test_reference_matches_independent_numpy_loop():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    for (b, l, d, n), (D, z, bias, sp) in zip(SHAPES, itertools.cycle(OPTIONS)):
      x = make_inputs(rng, b, l, d, n, D=D, z=z, bias=bias, softplus=sp, dtype=np.float64)
      y, h, _ = run("reference", x, sp)
      y_np, h_np = numpy_scan(**x, softplus=sp)
      close(y, y_np, 1e-12, f"y {b, l, d, n}")
      close(h, h_np, 1e-12, f"last state {b, l, d, n}")


# Every shape with two option sets, every option set with several shapes.
def _case_id(shape, options):
  flags = "".join(name for name, on in zip(("D", "z", "bias", "softplus"), options) if on)
  return "x".join(map(str, shape)) + "-" + (flags or "plain")


CASES = [pytest.param(shape, OPTIONS[(i + j) % len(OPTIONS)],
                      id=_case_id(shape, OPTIONS[(i + j) % len(OPTIONS)]))
         for i, shape in enumerate(SHAPES) for j in (0, 2)]


# The Mosaic GPU kernel runs in the GPU interpreter here (~15 s a case on 2 cores): the
# default suite takes the cases with every kind of tail, `-m slow` the rest.
_MOSAIC_FAST = {"2x1x5x3-Dzbiassoftplus", "1x7x12x16-plain", "2x17x5x3-Dzbiassoftplus",
                "2x17x5x3-Dbias"}
def _marks(impl, case_id=None):
  if impl != "pallas_mosaic":
    return []
  from kernels.pallas_mosaic_scan import HAS_INTERPRETER
  marks = [pytest.mark.skipif(not HAS_INTERPRETER, reason="no Mosaic GPU interpreter")]
  return marks + ([pytest.mark.slow] if case_id and case_id not in _MOSAIC_FAST else [])


IMPL_CASES = [pytest.param(impl, *case.values, id=f"{impl}-{case.id}",
                           marks=_marks(impl, case.id))
              for impl in IMPLS for case in CASES]


@pytest.mark.parametrize("impl, shape, options", IMPL_CASES)
def test_float32_outputs_and_gradients_match_float64_reference(impl, shape, options):
  D, z, bias, sp = options
  rng = np.random.default_rng(abs(hash((shape, options))) % 2**32)
  x = make_inputs(rng, *shape, D=D, z=z, bias=bias, softplus=sp)
  y, h, g = run(impl, x, sp, grads=True)
  assert y.dtype == jnp.float32 and h.dtype == jnp.float32
  with jax.enable_x64(True):
    x64 = {k: None if v is None else v.astype(np.float64) for k, v in x.items()}
    y_ref, h_ref, g_ref = run("reference", x64, sp, grads=True)
  # float32 arithmetic over up to 257 steps: observed errors are ~1e-6 of the
  # largest value; 1e-4 leaves room without hiding a wrong formula (those are O(1)).
  close(y, y_ref, 1e-4, "y")
  close(h, h_ref, 1e-4, "last state")
  assert set(g) == set(g_ref)
  for name in g:
    close(g[name], g_ref[name], 1e-4, f"d/d{name}")


@pytest.mark.parametrize("impl", [pytest.param(i, marks=_marks(i)) for i in IMPLS])
def test_bfloat16_inputs(impl):
  """bf16 in, bf16 out: compared with float64 on the same bf16-rounded inputs."""
  rng = np.random.default_rng(7)
  x = make_inputs(rng, 2, 33, 12, 16)
  x = {k: None if v is None else np.asarray(jnp.asarray(v, jnp.bfloat16)) for k, v in x.items()}
  y, h, g = run(impl, x, True, grads=True)
  assert y.dtype == jnp.bfloat16 and h.dtype == jnp.float32
  assert all(v.dtype == jnp.bfloat16 for v in g.values())
  with jax.enable_x64(True):
    x64 = {k: None if v is None else np.asarray(v, np.float64) for k, v in x.items()}
    y_ref, h_ref, g_ref = run("reference", x64, True, grads=True)
  # Only the final rounding to bf16 (8 bits of mantissa, 2^-8 ≈ 4e-3) should show.
  close(y, y_ref, 1e-2, "y")
  close(h, h_ref, 1e-4, "last state")
  for name in g:
    close(g[name], g_ref[name], 1e-2, f"d/d{name}")


@pytest.mark.parametrize("chunk", [1, 3, 16, 100])
def test_xla_chunk_size_does_not_change_the_result(chunk):
  rng = np.random.default_rng(3)
  x = {k: jnp.asarray(v) for k, v in make_inputs(rng, 2, 37, 6, 4).items()}
  args = [x.pop(k) for k in ("u", "delta", "A", "B", "C")]
  y_ref = selective_scan(*args, **x, delta_softplus=True, impl="xla", chunk_size=CHUNK)
  y = selective_scan(*args, **x, delta_softplus=True, impl="xla", chunk_size=chunk)
  close(y, y_ref, 1e-5, f"chunk {chunk}")


def test_state_update_steps_equal_the_scan():
  rng = np.random.default_rng(5)
  x = make_inputs(rng, 2, 9, 5, 3)
  y_full, h_full, _ = run("reference", x, True)
  state = jnp.zeros((2, 5, 3))
  for t in range(9):
    y_t, state = selective_state_update(
        state, x["u"][:, t], x["delta"][:, t], x["A"], x["B"][:, t], x["C"][:, t],
        D=x["D"], z=x["z"][:, t], delta_bias=x["delta_bias"], delta_softplus=True)
    close(y_t, y_full[:, t], 1e-5, f"step {t}")
  close(state, h_full, 1e-5, "state")


def test_xla_backward_memory_does_not_grow_with_the_full_state_history():
  """Doubling the state size grows the compiled gradient's temporaries by far less
  than one (batch, length, channels, state) tensor would; the reference's grow by more.
  """
  b, l, d = 1, 4096, 64

  def temp_bytes(impl, n):
    args = [jnp.zeros(s, jnp.float32) for s in
            [(b, l, d), (b, l, d), (d, n), (b, l, n), (b, l, n), (d,), (b, l, d), (d,)]]
    loss = lambda *a: jnp.sum(selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7],
                                             delta_softplus=True, impl=impl) ** 2)
    grad = jax.jit(jax.grad(loss, argnums=tuple(range(8))))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes

  history_growth = b * l * d * 16 * 4  # one more (b, l, d, 16) float32 tensor
  growth = {impl: temp_bytes(impl, 32) - temp_bytes(impl, 16) for impl in ("xla", "reference")}
  assert growth["xla"] < 0.25 * history_growth, growth
  assert growth["reference"] > history_growth, growth  # the check tells the two apart


@pytest.mark.parametrize("bad, message", [
    (dict(u=np.zeros((2, 5))), "`u` has shape (2, 5), needs (batch, length, channels)"),
    (dict(delta=np.zeros((2, 5, 4))), "`delta` has shape (2, 5, 4), needs (2, 5, 3)"),
    (dict(A=np.zeros((4, 2))), "`A` has shape (4, 2), needs (3, 2)"),
    (dict(B=np.zeros((2, 5, 3))), "`B` has shape (2, 5, 3), needs (2, 5, 2)"),
    (dict(C=np.zeros((2, 4, 2))), "`C` has shape (2, 4, 2), needs (2, 5, 2)"),
    (dict(D=np.zeros((2,))), "`D` has shape (2,), needs (3,)"),
    (dict(z=np.zeros((2, 5, 2))), "`z` has shape (2, 5, 2), needs (2, 5, 3)"),
    (dict(delta_bias=np.zeros((3, 1))), "`delta_bias` has shape (3, 1), needs (3,)"),
    (dict(u=np.zeros((2, 5, 3), np.int32)), "`u` has dtype int32, needs a floating"),
    (dict(impl="cuda"), "unknown impl='cuda'"),
    (dict(chunk_size=0), "chunk_size=0"),
])
def test_bad_arguments_raise_value_error_naming_them(bad, message):
  args = dict(u=np.zeros((2, 5, 3), np.float32), delta=np.zeros((2, 5, 3), np.float32),
              A=np.zeros((3, 2), np.float32), B=np.zeros((2, 5, 2), np.float32),
              C=np.zeros((2, 5, 2), np.float32))
  args.update({k: v for k, v in bad.items()})
  kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
  with pytest.raises(ValueError) as e:
    selective_scan(**kw)
  assert message in str(e.value)


def test_auto_runs_xla_on_cpu_and_pallas_is_an_alias():
  """`auto` is decided per lowering platform (tests/test_cuda_lowering.py checks CUDA);
  run here it is xla: bit-identical results. `pallas` still names the Triton kernel."""
  rng = np.random.default_rng(9)
  x = make_inputs(rng, 2, 19, 6, 4)
  if jax.default_backend() == "cpu":
    for got, want in zip(run("auto", x, True, grads=True), run("xla", x, True, grads=True)):
      for k in (got if isinstance(got, dict) else {"": got}):
        np.testing.assert_array_equal((got[k] if k else got), (want[k] if k else want))
  if "pallas_triton" in IMPLS:
    assert kernels.scan._resolve_impl("pallas") == "pallas_triton"
