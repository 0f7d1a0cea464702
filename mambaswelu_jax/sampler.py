"""The sampler: recurrent decoding inside one compiled function (JAX only).

`generate_tokens` runs the model's `decode_step` (constant work per new token: the
SSM and conv states, or the Transformer's KV cache, are the whole past): the prompt
is fed through the same step under a per-row mask (prompts of different lengths share
a batch), then `max_new_tokens` sample-and-step iterations run in a `lax.scan`.
Temperature, top-k and top-p are traced values, so changing them does not recompile.

Sampling: temperature 0 is greedy (argmax). Otherwise logits / temperature, then
top-k (k > 0 keeps the k largest; ties at the k-th value are kept too), then top-p
(the smallest set of tokens, largest first, whose probability reaches p), then a
categorical draw. Rows stop at EOS (the document separator): later tokens are EOS.

`reforward_tokens` is the baseline the original project used: the full forward over
the whole sequence for every new token (quadratic work), for experiments/bench_decode.py
and the test that both give the same tokens. `sample_text` is the trainer's end-of-run
sample. The `generate` command and the `Generator` build on these.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx




def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """logits (b, V) with everything outside top-k and then top-p set to -inf.

  top_k <= 0 and top_p >= 1 disable the respective filter (both traced scalars).
  """
  neg = jnp.finfo(logits.dtype).min
  vocab = logits.shape[-1]

  def apply(x):
    desc = -jnp.sort(-x, axis=-1)
    k = jnp.clip(top_k, 1, vocab) - 1
    kth = desc[:, k][:, None]
    x = jnp.where((top_k > 0) & (x < kth), neg, x)
    desc = jnp.where((top_k > 0) & (desc < kth), neg, desc)
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs     # mass of the strictly larger tokens
    keep = before < top_p                           # the first token is always kept
    n_keep = jnp.sum(keep, axis=-1)
    cutoff = jnp.take_along_axis(desc, (n_keep - 1)[:, None], axis=-1)
    return jnp.where((top_p < 1.0) & (x < cutoff), neg, x)

  return jax.lax.cond((top_k > 0) | (top_p < 1.0), apply, lambda x: x, logits)


def sample_token(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
                 top_p: jax.Array) -> jax.Array:
  """One token per row: argmax when temperature <= 0, else a filtered categorical draw."""
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  drawn = jax.random.categorical(key, filter_logits(scaled, top_k, top_p), axis=-1)
  return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


def _masked_update(active: jax.Array, new: Any, old: Any) -> Any:
  """Per row: `new` where active (b,), else `old`; scalar leaves advance if any row does."""
  def pick(n, o):
    if n.ndim == 0:
      return jnp.where(jnp.any(active), n, o)
    return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


def generate_tokens(params, rest, prompts, lengths, key, temperature, top_k, top_p, eos_id, *,
                    graphdef, max_new_tokens: int):
  """prompts int32 (b, Lp) right-padded, lengths (b,) >= 1 -> new tokens int32 (b, N).

  Tokens after a row's first EOS are set to EOS.
  """
  batch = prompts.shape[0]
  model = nnx.merge(graphdef, params, rest)
  cache = model.init_cache(batch)
  vocab = model.cfg.vocab_size

  def prefill(carry, xs):
    cache, last = carry
    t, token = xs
    logits, new_cache = nnx.merge(graphdef, params, rest).decode_step(token, cache)
    active = t < lengths
    return (_masked_update(active, new_cache, cache),
            jnp.where(active[:, None], logits, last)), None

  last = jnp.zeros((batch, vocab), jnp.float32)
  (cache, logits), _ = jax.lax.scan(
      prefill, (cache, last), (jnp.arange(prompts.shape[1]), prompts.T))

  def decode(carry, _):
    cache, logits, key, done = carry
    key, sub = jax.random.split(key)
    token = sample_token(logits, sub, temperature, top_k, top_p)
    token = jnp.where(done, eos_id, token)
    done = done | (token == eos_id)
    logits, cache = nnx.merge(graphdef, params, rest).decode_step(token, cache)
    return (cache, logits, key, done), token

  done = jnp.zeros((batch,), bool)
  _, tokens = jax.lax.scan(decode, (cache, logits, key, done), None, length=max_new_tokens)
  return tokens.T


def reforward_tokens(params, rest, buffer, length, key, temperature, top_k, top_p, *, graphdef,
                     max_new_tokens: int):
  """The baseline: the full forward over the whole (padded) sequence for every new token.

  buffer int32 (b, T) holds the prompt in [:length]; T >= length + max_new_tokens.
  """
  def body(i, carry):
    buf, key = carry
    pos = length + i
    logits = nnx.merge(graphdef, params, rest)(buf)
    last = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)
    key, sub = jax.random.split(key)
    token = sample_token(last, sub, temperature, top_k, top_p)
    return jax.lax.dynamic_update_index_in_dim(buf, token[:, None], pos, axis=1), key

  buf, _ = jax.lax.fori_loop(0, max_new_tokens, body, (buffer, key))
  return jax.lax.dynamic_slice_in_dim(buf, length, max_new_tokens, axis=1)


def sample_text(graphdef: Any, params: Any, rest: Any, tokenizer: Any, prompt: str,
                num_tokens: int, temperature: float, max_positions: int = 0,
                seed: int = 0) -> str:
  """A continuation of `prompt` (after an EOS, as documents are packed). A KV cache
  holds `max_positions` tokens (0: no limit): a longer prompt keeps its end and the
  sample is cut to fit."""
  ids = [tokenizer.eos_id] + list(tokenizer.encode(prompt))
  if max_positions:
    ids = ids[-max(1, max_positions // 2):]
    num_tokens = min(num_tokens, max_positions - len(ids))
  fn = jax.jit(functools.partial(generate_tokens, graphdef=graphdef, max_new_tokens=num_tokens))
  tokens = fn(jax.device_get(params), jax.device_get(rest), jnp.asarray([ids], jnp.int32),
              jnp.asarray([len(ids)], jnp.int32), jax.random.key(seed),
              jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0), jnp.int32(-1))
  return tokenizer.decode([int(t) for t in np.asarray(tokens)[0]])
