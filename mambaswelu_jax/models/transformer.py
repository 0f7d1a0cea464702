"""The Transformer baseline: the same framework, interface and training loop as MambaLM.

tokens -> embedding (+ learned positions, or rotary inside attention) -> n_layers
pre-norm blocks x + attn(norm(x)); x + mlp(norm(x)) -> final norm -> logits through
the tied embedding. Causal multi-head attention; MLP GELU (d -> h -> d) or SwiGLU
(d -> 2h -> d, silu(a) * b). `model.architecture = "transformer"` selects it
(models.build_model), so train, eval, generate and the lm-eval adapter use it as they
use the Mamba model:

  model(tokens) -> logits                    (batch, length) -> (batch, length, vocab)
  init_cache(batch) -> cache                 a KV cache of model.max_len positions
  decode_step(tokens, cache) -> (logits, cache)   one token per row

The decode cache keeps one position per row, so rows of different prompt lengths
decode together. Residual stream, norms, softmax and activations are float32; matmuls
run in `compute_dtype`.

`match_mamba_size(mamba_cfg)` sizes a Transformer config to the Mamba model's
parameter count (within 5%).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mambaswelu_jax.models.layers import TiedEmbeddingLM, make_norm

ROPE_BASE = 10000.0


def mlp_hidden_of(cfg) -> int:
  if cfg.mlp_hidden:
    return int(cfg.mlp_hidden)
  if cfg.mlp == "swiglu":
    return int(8 * cfg.d_model / 3 + 7) // 8 * 8
  return 4 * cfg.d_model


def rotary(x, positions):
  """Rotary embedding of x (..., length, heads, hd) at positions broadcastable to
  (..., length): pairs (x[i], x[i + hd/2]) rotated by position * base^(-2i/hd)."""
  hd = x.shape[-1]
  freq = ROPE_BASE ** (-jnp.arange(0, hd // 2, dtype=jnp.float32) * 2 / hd)
  angle = positions.astype(jnp.float32)[..., None, None] * freq  # (..., L, 1, hd/2)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Attention(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d = cfg.d_model
    self.n_heads, self.head_dim = cfg.n_heads, d // cfg.n_heads
    self.rope = not cfg.learned_positions
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)
    init = nnx.initializers.normal(0.02)
    out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layers))
    kw = dict(use_bias=False, dtype=self.compute_dtype,
              param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, kernel_init=init, **kw)
    self.out = nnx.Linear(d, d, kernel_init=out_init, **kw)

  def _qkv(self, x, positions):
    b, l, _ = x.shape
    q, k, v = jnp.split(self.qkv(x).astype(jnp.float32), 3, axis=-1)
    shape = (b, l, self.n_heads, self.head_dim)
    q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
    if self.rope:
      q, k = rotary(q, positions), rotary(k, positions)
    return q, k, v

  def _attend(self, q, k, v, mask):
    """q (b, lq, h, hd), k/v (b, lk, h, hd), mask (b or 1, lq, lk) -> (b, lq, d)."""
    cdt = self.compute_dtype
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(cdt), k.astype(cdt),
                   preferred_element_type=jnp.float32) / math.sqrt(self.head_dim)
    s = jnp.where(mask[:, None], s, -1e30)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(cdt), v.astype(cdt),
                   preferred_element_type=jnp.float32)
    return self.out(o.reshape(o.shape[0], o.shape[1], -1))

  def __call__(self, x):
    length = x.shape[1]
    q, k, v = self._qkv(x, jnp.arange(length)[None])
    mask = jnp.tril(jnp.ones((length, length), bool))[None]
    return self._attend(q, k, v, mask)

  def step(self, x, position, cache):
    """x (b, d) at per-row `position` (b,); cache {'k','v'} (b, max_len, h, hd)."""
    q, k, v = self._qkv(x[:, None], position[:, None])
    rows = jnp.arange(x.shape[0])
    k_all = cache["k"].at[rows, position].set(k[:, 0])
    v_all = cache["v"].at[rows, position].set(v[:, 0])
    mask = (jnp.arange(k_all.shape[1])[None] <= position[:, None])[:, None]
    return self._attend(q, k_all, v_all, mask)[:, 0], {"k": k_all, "v": v_all}


class MLP(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d, h = cfg.d_model, mlp_hidden_of(cfg)
    self.swiglu = cfg.mlp == "swiglu"
    kw = dict(use_bias=False, dtype=jnp.dtype(cfg.compute_dtype),
              param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.up = nnx.Linear(d, 2 * h if self.swiglu else h,
                         kernel_init=nnx.initializers.normal(0.02), **kw)
    self.down = nnx.Linear(h, d, kernel_init=nnx.initializers.normal(
        0.02 / math.sqrt(2 * cfg.n_layers)), **kw)

  def __call__(self, x):
    u = self.up(x).astype(jnp.float32)
    if self.swiglu:
      a, b = jnp.split(u, 2, axis=-1)
      u = jax.nn.silu(a) * b
    else:
      u = jax.nn.gelu(u)
    return self.down(u)


class TransformerBlock(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.norm1 = make_norm(cfg, rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm2 = make_norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))

  def step(self, x, position, cache):
    y, cache = self.attn.step(self.norm1(x), position, cache)
    x = x + y
    return x + self.mlp(self.norm2(x)), cache


class TransformerLM(TiedEmbeddingLM):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self._init_embeddings(cfg, rngs)
    self.blocks = nnx.List([TransformerBlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = make_norm(cfg, rngs)

  def _logits(self, x):
    return self._tied_logits(self.final_norm(x))

  def __call__(self, tokens):
    """tokens int (batch, length) -> logits float32 (batch, length, vocab)."""
    length = tokens.shape[1]
    if length > self.cfg.max_len:
      raise ValueError(f"TransformerLM: sequence length {length} exceeds model.max_len="
                       f"{self.cfg.max_len}.")
    x = self._embed(tokens, jnp.arange(length)[None])
    return self._logits(self._blocks(x))

  def init_cache(self, batch_size: int):
    shape = (batch_size, self.cfg.max_len, self.cfg.n_heads,
             self.cfg.d_model // self.cfg.n_heads)
    return {"position": jnp.zeros((batch_size,), jnp.int32),
            "layers": [{"k": jnp.zeros(shape, jnp.float32), "v": jnp.zeros(shape, jnp.float32)}
                       for _ in self.blocks]}

  def decode_step(self, tokens, cache):
    """tokens int (batch,) -> (logits float32 (batch, vocab), new cache).

    The cache holds model.max_len positions; past it the last slot is overwritten
    (decode at most max_len tokens per row, prompt included)."""
    position = jnp.minimum(cache["position"], self.cfg.max_len - 1)
    x = self._embed(tokens, position)
    layers = []
    for block, layer_cache in zip(self.blocks, cache["layers"]):
      x, layer_cache = block.step(x, position, layer_cache)
      layers.append(layer_cache)
    return self._logits(x), {"position": cache["position"] + 1, "layers": layers}


# ----------------------------------------------------------------------------
# Sizing against the Mamba model.
# ----------------------------------------------------------------------------


def transformer_param_count(cfg) -> int:
  """Parameters from the formulas (tests check it against the built model)."""
  d, v, h = cfg.d_model, cfg.vocab_size, mlp_hidden_of(cfg)
  norm = 2 * d if cfg.norm == "layernorm" else d
  mlp = d * (2 * h if cfg.mlp == "swiglu" else h) + h * d
  block = 2 * norm + 4 * d * d + mlp
  pos = cfg.max_len * d if cfg.learned_positions else 0
  return v * d + pos + cfg.n_layers * block + norm
