"""The Mamba mixers: the real selective SSM and the original project's as-run block.

Both are channels-last, (batch, length, d_model) -> (batch, length, d_model), and both
have a one-token `step` over a cache for recurrent decoding.

selective   in_proj -> (x, z); causal depthwise conv on x; activation; x_proj -> (dt, B,
            C); dt_proj; selective scan with A = -exp(A_log), D skip, softplus(dt + bias),
            gate silu(z); out_proj. Initialised as in the Mamba paper.
gated_conv  in_proj -> (x, z); causal depthwise conv on x; activation; × sigmoid(z);
            out_proj. Its x_proj (d_inner -> d_state) and dt_proj (d_inner -> d_inner,
            with bias) exist but are unused: the original fell back to this block when
            mamba-ssm was missing, and its parameter count includes them.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

import kernels
from mambaswelu_jax.models.layers import dropout, linear_init, make_norm
from mambaswelu_jax.models.swelu import make_activation


def dt_rank_of(cfg) -> int:
  return cfg.dt_rank or math.ceil(cfg.d_model / 16)


def _dtype(name):
  return jnp.dtype(name)


class CausalConv(nnx.Module):
  """Depthwise causal 1-D convolution over the length axis, with bias."""

  def __init__(self, channels: int, width: int, *, param_dtype, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(width)
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (width, channels),
                                               param_dtype, -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (channels,), param_dtype,
                                             -bound, bound))
    self.width = width

  # Computed in float32: it is elementwise work, and the activation after it is too.
  def __call__(self, x):
    """x (b, l, c) -> (b, l, c): y_t = Σ_j kernel[j] · x_{t-(width-1)+j} + bias."""
    length = x.shape[1]
    padded = jnp.pad(x.astype(jnp.float32), ((0, 0), (self.width - 1, 0), (0, 0)))
    y = sum(padded[:, j:j + length] * self.kernel[j] for j in range(self.width))
    return y + self.bias[...]

  def step(self, window, x):
    """window (b, width-1, c) holds the previous inputs; x (b, c). -> (y, new window)."""
    full = jnp.concatenate([window, x[:, None].astype(jnp.float32)], axis=1)
    y = sum(full[:, j] * self.kernel[j] for j in range(self.width)) + self.bias[...]
    return y, full[:, 1:]


class MambaMixer(nnx.Module):
  """Mamba-1 mixer; `cfg.mixer` picks the selective SSM or the as-run gated conv."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d, di, n = cfg.d_model, cfg.expand * cfg.d_model, cfg.d_state
    r = dt_rank_of(cfg)
    pdt, cdt = _dtype(cfg.param_dtype), _dtype(cfg.compute_dtype)
    self.selective = cfg.mixer == "selective"
    self.d_inner, self.d_state = di, n
    self.scan_impl, self.scan_chunk = cfg.scan_impl, cfg.scan_chunk
    linear = lambda i, o, **kw: nnx.Linear(i, o, dtype=cdt, param_dtype=pdt, rngs=rngs,
                                           **kw)
    # model.init: "normal" N(0, 0.02) for every Linear (the original's), "fan_in"
    # torch's default U(±1/sqrt(fan_in)) with out_proj scaled by 1/sqrt(2·n_layers).
    # The conv keeps torch's default either way (the original did not redraw it);
    # the dt bias, A_log and D keep the Mamba paper's (a bias rule must not erase them).
    fan_in = cfg.init == "fan_in"
    self.in_proj = linear(d, 2 * di, use_bias=False, kernel_init=linear_init(cfg))
    self.conv = CausalConv(di, cfg.d_conv, param_dtype=pdt, rngs=rngs)
    self.conv_act = make_activation(cfg)
    self.out_proj = linear(di, d, use_bias=False, kernel_init=linear_init(
        cfg, 1.0 / math.sqrt(2 * cfg.n_layers)))
    if self.selective:
      self.x_proj = linear(di, r + 2 * n, use_bias=False, kernel_init=linear_init(cfg))
      self.dt_proj = linear(r, di, use_bias=True,
                            kernel_init=(_symmetric_uniform(r ** -0.5) if fan_in
                                         else linear_init(cfg)),
                            bias_init=_dt_bias_init(cfg.dt_min, cfg.dt_max))
      # S4D-real: A = -(1, 2, ..., N) for every channel.
      self.A_log = nnx.Param(jnp.log(jnp.tile(jnp.arange(1, n + 1, dtype=pdt), (di, 1))))
      self.D = nnx.Param(jnp.ones((di,), pdt))
    else:
      self.x_proj = linear(di, n, use_bias=False, kernel_init=linear_init(cfg))
      self.dt_proj = linear(di, di, use_bias=True, kernel_init=linear_init(cfg))

  def _ssm_inputs(self, x):
    """x_proj -> (dt before bias, B, C)."""
    r = self.dt_proj.kernel.shape[0]
    dbc = self.x_proj(x)
    dt = self.dt_proj.kernel[...].astype(dbc.dtype)
    dt = dbc[..., :r] @ dt
    return dt, dbc[..., r:r + self.d_state], dbc[..., r + self.d_state:]

  def __call__(self, hidden):
    xz = self.in_proj(hidden)
    x, z = xz[..., :self.d_inner], xz[..., self.d_inner:]
    x = self.conv_act(self.conv(x))
    if not self.selective:
      y = x * jax.nn.sigmoid(z.astype(jnp.float32))
      return self.out_proj(y)
    dt, B, C = self._ssm_inputs(x)
    y = kernels.selective_scan(
        x, dt, -jnp.exp(self.A_log[...]), B, C, D=self.D[...], z=z,
        delta_bias=self.dt_proj.bias[...], delta_softplus=True, impl=self.scan_impl,
        chunk_size=self.scan_chunk)
    return self.out_proj(y)

  def init_cache(self, batch_size: int):
    cache = {"conv": jnp.zeros((batch_size, self.conv.width - 1, self.d_inner),
                               jnp.float32)}
    if self.selective:
      cache["ssm"] = jnp.zeros((batch_size, self.d_inner, self.d_state), jnp.float32)
    return cache

  def step(self, hidden, cache):
    """hidden (b, d_model), one token -> (output (b, d_model), new cache)."""
    xz = self.in_proj(hidden)
    x, z = xz[..., :self.d_inner], xz[..., self.d_inner:]
    x, window = self.conv.step(cache["conv"], x)
    x = self.conv_act(x)
    if not self.selective:
      return self.out_proj(x * jax.nn.sigmoid(z.astype(jnp.float32))), {"conv": window}
    dt, B, C = self._ssm_inputs(x)
    y, state = kernels.selective_state_update(
        cache["ssm"], x, dt, -jnp.exp(self.A_log[...]), B, C, D=self.D[...], z=z,
        delta_bias=self.dt_proj.bias[...], delta_softplus=True)
    return self.out_proj(y), {"conv": window, "ssm": state}


def _symmetric_uniform(bound):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def _dt_bias_init(dt_min, dt_max):
  """Bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] (Mamba paper)."""

  def init(key, shape, dtype=jnp.float32):
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, 1e-4)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

  return init


class MambaBlock(nnx.Module):
  """Pre-norm residual block: x + dropout(act(mixer(norm(x)))) (dropout in training
  only, model.dropout)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.norm = make_norm(cfg, rngs)
    self.mixer = MambaMixer(cfg, rngs=rngs)
    self.out_act = make_activation(cfg)
    self.rate = float(cfg.dropout)

  def __call__(self, x, dropout_key=None):
    return x + dropout(self.out_act(self.mixer(self.norm(x))), self.rate, dropout_key)

  def step(self, x, cache):
    y, cache = self.mixer.step(self.norm(x), cache)
    return x + self.out_act(y), cache

