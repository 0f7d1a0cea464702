"""Layers the language models share: initializers, dropout, the norm, the dense SWELU
stack and the tied-embedding base class.

Norms, embeddings and the residual stream are float32; matmuls run in the config's
`compute_dtype` with `param_dtype` parameters.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mambaswelu_jax.models.swelu import make_activation

# torch.nn.Linear / Conv1d default init: U(±1/sqrt(fan_in)).
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# Token and position embeddings.
embed_init = nnx.initializers.normal(0.02)
# The original's Linear init (model.init = "normal"): N(0, 0.02), biases zero.
normal_init = nnx.initializers.normal(0.02)
INITS = ("normal", "fan_in")


def linear_init(cfg, scale: float = 1.0):
  """The kernel initializer of a Linear under `model.init`: "normal" N(0, 0.02) (the
  original's; `scale` ignored), "fan_in" U(±1/sqrt(fan_in)) times `scale` (torch's
  default, with out_proj scaled by 1/sqrt(2·n_layers))."""
  scheme = cfg.init
  if scheme == "normal":
    return normal_init
  if scheme == "fan_in":
    return torch_default_init if scale == 1.0 else (
        lambda *a: scale * torch_default_init(*a))
  raise ValueError(f"model.init={scheme!r}: choose one of {list(INITS)}.")


def dropout(x, rate: float, key):
  """Inverted dropout of `x` at `rate` with `key`; the identity when key is None (every
  path but the train step) or rate is 0."""
  if key is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def site_key(key, index: int):
  """The dropout key of site `index` (None stays None)."""
  return None if key is None else jax.random.fold_in(key, index)


def make_norm(cfg, rngs: nnx.Rngs) -> nnx.Module:
  """`model.norm` over d_model, computed in float32."""
  if cfg.norm == "layernorm":
    return nnx.LayerNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.float32, rngs=rngs)
  if cfg.norm == "rmsnorm":
    return nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.float32, rngs=rngs)
  raise ValueError(f"model.norm={cfg.norm!r}: choose 'layernorm' or 'rmsnorm'.")


class DenseStack(nnx.Module):
  """Three dense layers d -> h -> h -> d, each followed by its own activation site;
  dropout (model.dropout, training only) after the first two activations."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dims = (cfg.d_model, cfg.dense_hidden, cfg.dense_hidden, cfg.d_model)
    self.layers = nnx.List([
        nnx.Linear(i, o, use_bias=True, kernel_init=linear_init(cfg),
                   dtype=jnp.dtype(cfg.compute_dtype),
                   param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        for i, o in zip(dims[:-1], dims[1:])])
    self.acts = nnx.List([make_activation(cfg) for _ in range(3)])
    self.rate = float(cfg.dropout)

  def __call__(self, x, dropout_key=None):
    for i, (layer, act) in enumerate(zip(self.layers, self.acts)):
      x = act(layer(x))
      if i < 2:
        x = dropout(x, self.rate, site_key(dropout_key, i))
    return x


def remat_blocks(blocks, x, keys=None):
  """x through `blocks` (identical structure), each block's activations recomputed in
  the backward pass: only the input of every block is kept.

  The blocks run as a `lax.scan` over their stacked variables with a checkpointed body.
  A scan, not one `jax.checkpoint` per unrolled block: XLA may schedule an unrolled
  block's recomputation early, back into the forward pass, where it saves nothing
  (on CPU it does: the compiled temporaries barely move); it cannot move it out of
  the backward loop. Same operations, so the same numbers as the plain loop."""
  graphdef, first = nnx.split(blocks[0])
  states = [first]
  for block in blocks[1:]:
    other, state = nnx.split(block)
    if other != graphdef:
      raise ValueError("model.remat stacks the blocks: they must share one structure")
    states.append(state)
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

  if keys is None:
    @functools.partial(jax.checkpoint, prevent_cse=False)  # the scan already keeps it apart
    def body(h, state):
      return nnx.merge(graphdef, state)(h), None

    return jax.lax.scan(body, x, stacked)[0]

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def body_with_key(h, xs):
    state, key = xs
    return nnx.merge(graphdef, state)(h, dropout_key=key), None

  return jax.lax.scan(body_with_key, x, (stacked, jnp.stack(keys)))[0]


class TiedEmbeddingLM(nnx.Module):
  """What every architecture shares: token (+ learned position) embeddings in float32,
  the blocks (with model.remat) and logits through the tied embedding in
  `compute_dtype`. A subclass calls `_init_embeddings` first and sets `self.blocks`."""

  def _init_embeddings(self, cfg, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = jnp.dtype(cfg.param_dtype)
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)
    self.remat = bool(cfg.remat)  # recompute block activations in the backward
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.float32,
                           param_dtype=pdt, embedding_init=embed_init, rngs=rngs)
    self.positions = (nnx.Embed(cfg.max_len, cfg.d_model, dtype=jnp.float32,
                                param_dtype=pdt, embedding_init=embed_init, rngs=rngs)
                      if cfg.learned_positions else None)

  def _blocks(self, x, dropout_key=None):
    """The residual stream through every block. With model.remat each block keeps only
    its input for the backward pass and recomputes the rest there (the same numbers,
    about one more forward of the blocks, far less activation memory). Block i drops
    out with site_key(dropout_key, 1 + i) (training only)."""
    keys = (None if dropout_key is None else
            [site_key(dropout_key, 1 + i) for i in range(len(self.blocks))])
    if self.remat:
      return remat_blocks(list(self.blocks), x, keys)
    for i, block in enumerate(self.blocks):
      x = block(x) if keys is None else block(x, dropout_key=keys[i])
    return x

  def _embed(self, tokens, positions):
    x = self.embed(tokens)
    if self.positions is not None:
      x = x + self.positions(positions)
    return x

  def _tied_logits(self, x):
    return tied_logits(x, self.embed.embedding[...], self.compute_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tied_logits(x, embedding, compute_dtype):
  """float32 logits of `x` (..., d) against the (vocab, d) embedding, the product in
  `compute_dtype`. The backward's two products are in `compute_dtype` too: autodiff
  would multiply the float32 logit cotangent by the bf16 operands as float32 products,
  which an H200 profile of the study's train step found taking 32% of the step."""
  return jnp.einsum("...d,vd->...v", x.astype(compute_dtype),
                    embedding.astype(compute_dtype), preferred_element_type=jnp.float32)


def _tied_logits_fwd(x, embedding, compute_dtype):
  return tied_logits(x, embedding, compute_dtype), (x, embedding)


def _tied_logits_bwd(compute_dtype, res, ct):
  x, embedding = res
  ct = ct.astype(compute_dtype)
  dx = jnp.einsum("...v,vd->...d", ct, embedding.astype(compute_dtype),
                  preferred_element_type=jnp.float32)
  de = jnp.einsum("...v,...d->vd", ct, x.astype(compute_dtype),
                  preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), de.astype(embedding.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)
