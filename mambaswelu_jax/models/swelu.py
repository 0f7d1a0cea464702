"""SWELU: λ·sign(z)·(1 − exp(−|z|^k)) with learnable k (kept positive) and λ.

Computed in float32 whatever the input dtype. The derivative in z is
λ·k·|z|^(k−1)·exp(−|z|^k), which diverges at z = 0 when k < 1 (the original study
saw k fall to 0.39). A custom JVP keeps every derivative finite: for k < 1 the slope
is evaluated at max(|z|, Z_FLOOR), i.e. capped at its value there, and log|z| is taken
at max(|z|, tiny) so that the k-derivative λ·sign(z)·exp(−p)·p·log|z| is 0 at z = 0.

`model.swelu_eps` > 0 is the original PyTorch project's form instead: the power is
taken of |z| + eps, λ·sign(z)·(1 − exp(−(|z|+eps)^k)), and every derivative is that
expression's own (what autograd gives there): the z-slope λ·k·(|z|+eps)^(k−1)·exp(−p),
finite for k < 1 because of the eps (about 3e4 at k = 0.39, eps = 1e-8), and exactly 0
at z = 0, where sign(z) is 0. `configs/original_124m.py` uses eps = 1e-8.

`model.swelu_k_param` says how k is stored: "softplus" (k = softplus(k_raw), kept
positive; the study) or "direct" (k itself, unconstrained, as the original stored it).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Below this |z| the z-slope for k < 1 is held at its value at Z_FLOOR: with k = 0.39
# that caps it near 1.8e3 instead of letting it reach inf at z = 0.
Z_FLOOR = 1e-6
_TINY = float(np.finfo(np.float32).tiny)

K_PARAMS = ("softplus", "direct")  # how k is stored: softplus(k_raw), or k itself


@jax.custom_jvp
def swelu(z, k, lam):
  """SWELU on float32 arrays; k > 0 and lam are scalars (or broadcastable)."""
  p = jnp.exp(k * jnp.log(jnp.maximum(jnp.abs(z), _TINY)))
  return lam * jnp.sign(z) * -jnp.expm1(-p)


@swelu.defjvp
def _swelu_jvp(primals, tangents):
  z, k, lam = primals
  dz, dk, dlam = tangents
  a = jnp.abs(z)
  log_a = jnp.log(jnp.maximum(a, _TINY))
  p = jnp.exp(k * log_a)
  s = jnp.sign(z)
  shape = -jnp.expm1(-p)
  y = lam * s * shape
  # exp(-p) times a power of |z| is taken in log space: for huge |z|, p = inf and the
  # product must be 0, not 0 * inf. For k >= 1, |z|^(k-1) is finite everywhere.
  log_a_slope = jnp.where(k < 1, jnp.log(jnp.maximum(a, Z_FLOOR)), log_a)
  dy_dz = lam * k * jnp.exp((k - 1) * log_a_slope - p)
  dy_dk = lam * s * jnp.exp(k * log_a - p) * log_a
  dy_dlam = s * shape
  return y, dy_dz * dz + dy_dk * dk + dy_dlam * dlam


@jax.custom_jvp
def swelu_eps(z, k, lam, eps):
  """The original's SWELU: λ·sign(z)·(1 − exp(−(|z| + eps)^k)), eps > 0."""
  p = jnp.exp(k * jnp.log(jnp.abs(z) + eps))
  return lam * jnp.sign(z) * -jnp.expm1(-p)


@swelu_eps.defjvp
def _swelu_eps_jvp(primals, tangents):
  z, k, lam, eps = primals
  dz, dk, dlam, _ = tangents
  s = jnp.sign(z)
  log_a = jnp.log(jnp.abs(z) + eps)
  p = jnp.exp(k * log_a)
  shape = -jnp.expm1(-p)
  y = lam * s * shape
  # d|z|/dz = sign(z) and sign(z)·sign(z) = 1 except at 0 (autograd's value there).
  dy_dz = lam * k * s * s * jnp.exp((k - 1) * log_a - p)
  dy_dk = lam * s * jnp.exp(k * log_a - p) * log_a
  dy_dlam = s * shape
  return y, dy_dz * dz + dy_dk * dk + dy_dlam * dlam


def inverse_softplus(x):
  return float(x + np.log(-np.expm1(-x)))


class SWELU(nnx.Module):
  """One activation site: its own k (as softplus(k_raw), so k > 0) and λ.

  Either scalar may be held fixed (`learn_k=False`, `learn_lambda=False`): it is then
  a plain nnx.Variable, not an nnx.Param, so the optimiser never sees it.
  """

  def __init__(self, k_init: float = 1.0, lambda_init: float = 1.0,
               learn_lambda: bool = True, learn_k: bool = True, eps: float = 0.0,
               k_param: str = "softplus"):
    if k_init <= 0:
      raise ValueError(f"SWELU: k_init={k_init} must be > 0.")
    if k_param not in K_PARAMS:
      raise ValueError(f"SWELU: k_param={k_param!r}: choose 'softplus' or 'direct'.")
    self.eps = float(eps)
    self.k_direct = k_param == "direct"
    # "direct" keeps the name k_raw (one tree for both); it then holds k itself.
    k_raw = jnp.asarray(k_init if self.k_direct else inverse_softplus(k_init), jnp.float32)
    self.k_raw = nnx.Param(k_raw) if learn_k else nnx.Variable(k_raw)
    lam = jnp.asarray(lambda_init, jnp.float32)
    self.lam = nnx.Param(lam) if learn_lambda else nnx.Variable(lam)

  @property
  def k(self):
    return self.k_raw[...] if self.k_direct else jax.nn.softplus(self.k_raw[...])

  def __call__(self, z):
    if self.eps > 0:
      return swelu_eps(z.astype(jnp.float32), self.k, self.lam[...],
                       jnp.float32(self.eps))
    return swelu(z.astype(jnp.float32), self.k, self.lam[...])


class SiLU(nnx.Module):
  """The ablation's activation site: same call signature, no parameters."""

  def __call__(self, z):
    return jax.nn.silu(z.astype(jnp.float32))


def make_activation(cfg) -> nnx.Module:
  if cfg.activation == "swelu":
    return SWELU(cfg.swelu_k_init, cfg.swelu_lambda_init, cfg.swelu_learn_lambda,
                 learn_k=cfg.swelu_learn_k, eps=cfg.swelu_eps,
                 k_param=cfg.swelu_k_param)
  if cfg.activation == "silu":
    return SiLU()
  raise ValueError(f"model.activation={cfg.activation!r}: choose 'swelu' or 'silu'.")
