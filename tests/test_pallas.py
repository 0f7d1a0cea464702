"""The Pallas kernels in interpret mode: several channel blocks, and invariant 2 (grid
programs are independent: running them in the opposite order changes no bit). Both
fused kernels: Triton (kernels/pallas_scan.py) and Mosaic GPU
(kernels/pallas_mosaic_scan.py, in the GPU interpreter)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.pallas_mosaic_scan import HAS_INTERPRETER, mosaic_selective_scan
from kernels.pallas_scan import pallas_selective_scan
from tests.test_kernels import NAMES, close, make_inputs, run


def value_and_grads(inputs, kernel=pallas_selective_scan, **kw):
  names = [k for k in NAMES if inputs[k] is not None]

  def loss(*xs):
    args = dict(zip(names, xs))
    y, h = kernel(
        args.pop("u"), args.pop("delta"), args.pop("A"), args.pop("B"), args.pop("C"),
        **args, delta_softplus=True, chunk_size=8, **kw)
    w = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y * w) + jnp.sum(jnp.sin(h)), (y, h)

  (_, (y, h)), g = jax.value_and_grad(loss, argnums=tuple(range(len(names))),
                                      has_aux=True)(*[jnp.asarray(inputs[k]) for k in names])
  return y, h, dict(zip(names, g))


@pytest.mark.parametrize("kernel, channels, kw", [
    (pallas_selective_scan, 13, dict(block_d=4)),   # 13 channels, 5 states
    (pallas_selective_scan, 13, dict(block_d=8)),
    pytest.param(mosaic_selective_scan, 70, dict(interpret=True),  # 64 + a tail of 6
                 marks=pytest.mark.skipif(not HAS_INTERPRETER, reason="no GPU interpreter")),
], ids=["triton-block4", "triton-block8", "mosaic-block64"])
def test_several_channel_blocks_with_a_masked_tail_match_the_reference(kernel, channels, kw):
  x = make_inputs(np.random.default_rng(11), 2, 21, channels, 5)
  y, h, g = value_and_grads(x, kernel, **kw)
  with jax.enable_x64(True):
    x64 = {k: v.astype(np.float64) for k, v in x.items()}
    names = list(x64)

    def loss(*xs):
      a = dict(zip(names, xs))
      from kernels import selective_scan
      y, h = selective_scan(a.pop("u"), a.pop("delta"), a.pop("A"), a.pop("B"),
                            a.pop("C"), **a, delta_softplus=True, impl="reference",
                            return_last_state=True)
      w = jnp.cos(jnp.arange(y.size, dtype=jnp.float64)).reshape(y.shape)
      return jnp.sum(y * w) + jnp.sum(jnp.sin(h)), (y, h)

    (_, (y_ref, h_ref)), g_ref = jax.value_and_grad(
        loss, argnums=tuple(range(len(names))), has_aux=True)(
            *[jnp.asarray(x64[k]) for k in names])
  close(y, y_ref, 1e-4, "y")
  close(h, h_ref, 1e-4, "last state")
  for i, name in enumerate(names):
    close(g[name], g_ref[i], 1e-4, f"d/d{name}")


@pytest.mark.parametrize("kernel, shape, kw", [
    (pallas_selective_scan, (3, 19, 12, 4), dict(block_d=4)),   # 3 x 3 programs
    pytest.param(mosaic_selective_scan, (2, 11, 128, 4), dict(interpret=True),  # 2 x 2
                 marks=pytest.mark.skipif(not HAS_INTERPRETER, reason="no GPU interpreter")),
], ids=["triton", "mosaic"])
def test_result_does_not_depend_on_the_order_programs_run_in(kernel, shape, kw):
  x = make_inputs(np.random.default_rng(12), *shape)
  forward = value_and_grads(x, kernel, **kw)
  backward = value_and_grads(x, kernel, **kw, reverse_programs=True)
  np.testing.assert_array_equal(forward[0], backward[0])
  np.testing.assert_array_equal(forward[1], backward[1])
  for name in forward[2]:
    np.testing.assert_array_equal(forward[2][name], backward[2][name], err_msg=name)


def test_float64_inputs_compute_in_float64():
  with jax.enable_x64(True):
    x = make_inputs(np.random.default_rng(13), 1, 9, 6, 3, dtype=np.float64)
    y, h, _ = run("pallas", x, True)
    y_ref, h_ref, _ = run("reference", x, True)
    assert y.dtype == jnp.float64 and h.dtype == jnp.float64
    close(y, y_ref, 1e-12, "y")


def test_mosaic_refuses_float64():
  with jax.enable_x64(True):
    x = make_inputs(np.random.default_rng(14), 1, 4, 3, 2, dtype=np.float64)
    with pytest.raises(ValueError, match="float32"):
      mosaic_selective_scan(*(jnp.asarray(x[k]) for k in NAMES), True)


@pytest.mark.skipif(not HAS_INTERPRETER, reason="no Mosaic GPU interpreter")
def test_mosaic_by_platform_under_jit_equals_the_forced_interpreter():
  """interpret=None off CUDA runs the GPU interpreter in a host callback; under jit too."""
  x = make_inputs(np.random.default_rng(15), 1, 9, 6, 3)
  names = [k for k in NAMES if x[k] is not None]
  args = [jnp.asarray(x[k]) for k in names]

  def loss(interpret):
    def f(*xs):
      y, h = mosaic_selective_scan(*xs, True, 4, interpret=interpret)
      return jnp.sum(y * y) + jnp.sum(h)
    return jax.value_and_grad(f, argnums=tuple(range(len(names))))

  v, g = jax.jit(loss(None))(*args)
  v_ref, g_ref = loss(True)(*args)
  close(v, v_ref, 1e-6, "loss")
  for name, a, b in zip(names, g, g_ref):
    close(a, b, 1e-6, f"d/d{name}")


def test_mosaic_softplus_is_accurate_under_jit_in_float32():
  # XLA folds (1 + e) - 1 back to e, so a log1p built on it loses everything under jit
  # (1.0 relative error at x = -16.6 before the series form).
  from kernels.pallas_mosaic_scan import _softplus
  x = np.concatenate([np.linspace(-80, 80, 20001), [-16.6, -1e-6, 0.0, 1e-6, 30.0]])
  x32 = x.astype(np.float32)
  sp, sig = jax.jit(_softplus)(jnp.asarray(x32))
  x64 = x32.astype(np.float64)
  want_sp = np.logaddexp(0.0, x64)
  want_sig = 1.0 / (1.0 + np.exp(-x64))
  assert np.max(np.abs(np.asarray(sp, np.float64) - want_sp) / want_sp) < 1e-6
  assert np.max(np.abs(np.asarray(sig, np.float64) - want_sig) / want_sig) < 1e-6
