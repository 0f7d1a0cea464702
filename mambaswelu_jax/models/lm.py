"""The MambaSWELU language model.

tokens -> embedding (+ learned positions) -> dropout -> n_layers pre-norm Mamba blocks
-> final norm -> the three dense SWELU layers d -> h -> h -> d (dense1 -> swelu1 ->
dropout -> dense2 -> swelu2 -> dropout -> dense3 -> swelu3, the original's head) ->
logits through the tied embedding. `model.dense_residual=True` (the study model's
default) wraps the dense stack in a residual, x + dense(x); False is the original's head.

Dropout (`model.dropout`) acts only when a `dropout_key` is passed: the train step
passes one; evaluation, scoring and generation call the model without, so they are
deterministic.

The residual stream, norms and activations are float32; matmuls run in
`compute_dtype` (bf16 in the study) with float32 parameters.
"""

import jax.numpy as jnp
from flax import nnx

from mambaswelu_jax.models.layers import (DenseStack, TiedEmbeddingLM, dropout, make_norm,
                                          site_key)
from mambaswelu_jax.models.mamba import MambaBlock


class MambaLM(TiedEmbeddingLM):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self._init_embeddings(cfg, rngs)
    self.blocks = nnx.List([MambaBlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = make_norm(cfg, rngs)
    self.dense = DenseStack(cfg, rngs=rngs)
    self.dense_residual = bool(cfg.dense_residual)
    self.rate = float(cfg.dropout)

  def _logits(self, x, dropout_key=None):
    x = self.final_norm(x)
    key = site_key(dropout_key, 1 + len(self.blocks))
    h = self.dense(x, dropout_key=key)
    return self._tied_logits(x + h if self.dense_residual else h)

  def __call__(self, tokens, *, dropout_key=None):
    """tokens int (batch, length) -> logits float32 (batch, length, vocab).

    dropout_key: a PRNG key in training (model.dropout applies), None otherwise."""
    length = tokens.shape[1]
    if self.positions is not None and length > self.cfg.max_len:
      raise ValueError(f"MambaLM: sequence length {length} exceeds model.max_len="
                       f"{self.cfg.max_len} of the learned position table.")
    x = dropout(self._embed(tokens, jnp.arange(length)[None]), self.rate,
                site_key(dropout_key, 0))
    return self._logits(self._blocks(x, dropout_key), dropout_key)

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

