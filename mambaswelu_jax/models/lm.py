"""The MambaSWELU language model.

tokens -> embedding (+ learned positions) -> n_layers pre-norm Mamba blocks -> final
norm -> x + dense(x), the three dense SWELU layers d -> h -> h -> d as a residual
branch -> logits through the tied embedding.

The residual stream, norms and activations are float32; matmuls run in
`compute_dtype` (bf16 in the study) with float32 parameters.
"""

import jax.numpy as jnp
from flax import nnx

from mambaswelu_jax.models.mamba import MambaBlock, _torch_default, make_norm
from mambaswelu_jax.models.swelu import make_activation

_embed_init = nnx.initializers.normal(0.02)


@nnx.remat
def _remat_block(block, x):
  """block(x) whose activations the backward pass recomputes instead of keeping."""
  return block(x)


class DenseStack(nnx.Module):
  """Three dense layers d -> h -> h -> d, each followed by its own activation site."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dims = (cfg.d_model, cfg.dense_hidden, cfg.dense_hidden, cfg.d_model)
    self.layers = nnx.List([
        nnx.Linear(i, o, use_bias=True, kernel_init=_torch_default,
                   dtype=jnp.dtype(cfg.compute_dtype),
                   param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        for i, o in zip(dims[:-1], dims[1:])])
    self.acts = nnx.List([make_activation(cfg) for _ in range(3)])

  def __call__(self, x):
    for layer, act in zip(self.layers, self.acts):
      x = act(layer(x))
    return x


class TiedEmbeddingLM(nnx.Module):
  """What every architecture shares: token (+ learned position) embeddings in float32
  and logits through the tied embedding in `compute_dtype`."""

  def _init_embeddings(self, cfg, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = jnp.dtype(cfg.param_dtype)
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)
    self.remat = bool(cfg.get("remat", False))  # recompute block activations in the backward
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.float32,
                           param_dtype=pdt, embedding_init=_embed_init, rngs=rngs)
    self.positions = (nnx.Embed(cfg.max_len, cfg.d_model, dtype=jnp.float32,
                                param_dtype=pdt, embedding_init=_embed_init, rngs=rngs)
                      if cfg.learned_positions else None)

  def _blocks(self, x):
    """The residual stream through every block. With model.remat each block keeps only
    its input for the backward pass and recomputes the rest there (the same numbers,
    about one more forward of the blocks, far less activation memory)."""
    for block in self.blocks:
      x = _remat_block(block, x) if self.remat else block(x)
    return x

  def _embed(self, tokens, positions):
    x = self.embed(tokens)
    if self.positions is not None:
      x = x + self.positions(positions)
    return x

  def _tied_logits(self, x):
    e = self.embed.embedding[...].astype(self.compute_dtype)
    return jnp.einsum("...d,vd->...v", x.astype(self.compute_dtype), e,
                      preferred_element_type=jnp.float32)


class MambaLM(TiedEmbeddingLM):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self._init_embeddings(cfg, rngs)
    self.blocks = nnx.List([MambaBlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = make_norm(cfg, rngs)
    self.dense = DenseStack(cfg, rngs=rngs)

  def _logits(self, x):
    x = self.final_norm(x)
    return self._tied_logits(x + self.dense(x))

  def __call__(self, tokens):
    """tokens int (batch, length) -> logits float32 (batch, length, vocab)."""
    length = tokens.shape[1]
    if self.positions is not None and length > self.cfg.max_len:
      raise ValueError(f"MambaLM: sequence length {length} exceeds model.max_len="
                       f"{self.cfg.max_len} of the learned position table.")
    x = self._embed(tokens, jnp.arange(length)[None])
    return self._logits(self._blocks(x))

  # Recurrent decoding: constant work per token.

  def init_cache(self, batch_size: int):
    return {"position": jnp.zeros((), jnp.int32),
            "layers": [block.mixer.init_cache(batch_size) for block in self.blocks]}

  def decode_step(self, tokens, cache):
    """tokens int (batch,) -> (logits float32 (batch, vocab), new cache)."""
    position = cache["position"]
    if self.positions is not None:
      # Past the table the last learned position is reused (the table has no more).
      position = jnp.minimum(position, self.cfg.max_len - 1)
    x = self._embed(tokens, position)
    layers = []
    for block, layer_cache in zip(self.blocks, cache["layers"]):
      x, layer_cache = block.step(x, layer_cache)
      layers.append(layer_cache)
    return self._logits(x), {"position": cache["position"] + 1, "layers": layers}

