"""SWELU: value, finite-difference gradients in float64, finiteness everywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mambaswelu_jax.models.swelu import SWELU, Z_FLOOR, swelu


def swelu_np(z, k, lam):
  return lam * np.sign(z) * -np.expm1(-np.abs(z) ** k)


def grads(z, k, lam):
  return jax.grad(lambda z, k, l: jnp.sum(swelu(z, k, l)), argnums=(0, 1, 2))(z, k, lam)


@pytest.mark.parametrize("k", [0.39, 1.0, 1.7, 3.0])
def test_value_matches_formula(k):
  z = np.random.default_rng(0).normal(size=1000) * 3
  with jax.enable_x64(True):
    np.testing.assert_allclose(swelu(jnp.asarray(z), k, 1.3), swelu_np(z, k, 1.3),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [0.39, 0.8, 1.0, 1.7, 3.0])
@pytest.mark.parametrize("lam", [1.0, -0.6, 2.5])
def test_gradients_match_central_differences_in_float64(k, lam):
  rng = np.random.default_rng(1)
  zs = np.concatenate([rng.normal(size=20) * 2, [-3.0, -1e-2, 1e-2, 0.5, 7.0]])
  eps = 1e-6
  with jax.enable_x64(True):
    for z in zs:
      gz, gk, gl = (float(g) for g in grads(jnp.float64(z), jnp.float64(k), jnp.float64(lam)))
      fd = lambda f: (f(eps) - f(-eps)) / (2 * eps)
      np.testing.assert_allclose(gz, fd(lambda e: swelu_np(z + e, k, lam)), rtol=1e-6, atol=1e-8)
      np.testing.assert_allclose(gk, fd(lambda e: swelu_np(z, k + e, lam)), rtol=1e-6, atol=1e-8)
      np.testing.assert_allclose(gl, fd(lambda e: swelu_np(z, k, lam + e)), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k", [0.39, 1.0, 1.7])
def test_gradients_at_zero(k):
  """f(0) = 0 for every k and λ, so d/dk = d/dλ = 0 there; d/dz is λ·k·0^(k-1):
  0 for k > 1, λ for k = 1 (matches a central difference), and for k < 1 it diverges
  and is held at its finite value at Z_FLOOR."""
  with jax.enable_x64(True):
    gz, gk, gl = (float(g) for g in grads(jnp.float64(0.0), jnp.float64(k), jnp.float64(1.5)))
    assert gk == 0.0 and gl == 0.0
    if k >= 1:
      eps = 1e-12  # the difference quotient tends to 0 like eps^(k-1)
      fd = (swelu_np(eps, k, 1.5) - swelu_np(-eps, k, 1.5)) / (2 * eps)
      np.testing.assert_allclose(gz, fd, rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_allclose(gz, 1.5 * k * Z_FLOOR ** (k - 1), rtol=1e-9)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("k", [0.05, 0.39, 1.0, 4.0])
def test_finite_for_every_finite_input(dtype, k):
  info = jnp.finfo(dtype)
  z = jnp.asarray([0.0, -0.0, float(info.tiny), -float(info.tiny), 1e-30, -1e-8, 1e-3,
                   1.0, -5.0, 1e4, float(info.max), -float(info.max)], dtype)
  y = swelu(z.astype(jnp.float32), jnp.float32(k), jnp.float32(0.7))
  gz, gk, gl = grads(z.astype(jnp.float32), jnp.float32(k), jnp.float32(0.7))
  for a in (y, gz, gk, gl):
    assert bool(jnp.all(jnp.isfinite(a))), a


def test_module_keeps_k_positive_and_counts_scalars():
  act = SWELU(k_init=0.39, lambda_init=1.2)
  assert abs(float(act.k) - 0.39) < 1e-6
  act.k_raw[...] = jnp.float32(-50.0)  # an optimizer can push the raw value anywhere
  assert float(act.k) > 0
  assert len(jax.tree.leaves(nnx.state(act, nnx.Param))) == 2
  fixed = SWELU(learn_lambda=False)
  assert len(jax.tree.leaves(nnx.state(fixed, nnx.Param))) == 1
  out = fixed(jnp.asarray([0.5, -2.0], jnp.bfloat16))
  assert out.dtype == jnp.float32


def test_fixed_k_is_a_variable_not_a_param():
  act = SWELU(k_init=0.7, learn_k=False)
  params = nnx.state(act, nnx.Param)
  assert len(jax.tree.leaves(params)) == 1  # λ only
  assert abs(float(act.k) - 0.7) < 1e-6
  # The gradient with respect to the params reaches λ and nothing else; k stays put.
  graphdef, params, rest = nnx.split(act, nnx.Param, ...)
  g = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(jnp.linspace(-2, 2, 9))))(params)
  assert len(jax.tree.leaves(g)) == 1
  assert len(jax.tree.leaves(rest)) == 1  # k_raw


def test_model_switch_swelu_learn_k():
  from configs import default
  from mambaswelu_jax.models import param_count
  cfg = default.model_config()
  cfg.update(vocab_size=97, d_model=24, n_layers=2, d_state=5, dense_hidden=40,
             compute_dtype="float32")
  learned = param_count(cfg)
  cfg.swelu_learn_k = False
  sites = 2 * cfg.n_layers + 3
  assert param_count(cfg) == learned - sites
