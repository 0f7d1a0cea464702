"""The token loss and the evaluation sums, shared by the trainer and the evaluator."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mambaswelu_jax.mesh import DATA_AXIS


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def eval_sums(params: Any, handle: Any, batch: dict, *, num_types: int = 1,
              axis_name: str | None = DATA_AXIS) -> jax.Array:
  """(num_types, 3) float32 weighted sums of [nll, tokens, target bytes] per text type
  (batch["text_type"], needed when num_types > 1), summed over the mesh."""
  logits = handle.bind(params)(batch["inputs"])
  nll = token_nll(logits, batch["targets"])
  w = batch["weights"].astype(jnp.float32)
  nbytes = batch["target_bytes"].astype(jnp.float32)
  if num_types == 1:  # plain sums (the trainer's validation loss)
    sums = jnp.stack([jnp.sum(nll * w), jnp.sum(w), jnp.sum(nbytes * w)])[None]
  else:
    cols = jnp.stack([nll * w, w, nbytes * w], -1)
    sums = jax.ops.segment_sum(cols.reshape(-1, 3), batch["text_type"].reshape(-1),
                               num_segments=num_types)
  return jax.lax.psum(sums, axis_name) if axis_name is not None else sums
