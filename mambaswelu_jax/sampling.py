"""Sampling: recurrent decoding inside one compiled function, and the `Generator` that
runs it for a restored run.

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
sample.

`Generator(run)` is what the `generate` command, the generation-quality measures and
the lm-eval adapter use for a run restored with `restore.load_run`: it encodes prompts
(each starts with EOS, as every document does in training), batches prompts of
different lengths, compiles once per (batch, prompt-length bucket, max_new_tokens) and
cuts each sample at EOS. Tokens per second count new tokens over the wall time of the
compiled call, compilation excluded. Prompt plus new tokens may not exceed the model's
positions (`models.registry.max_positions`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax.models.registry import max_positions




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


def generate_tokens(params, handle, prompts, lengths, key, temperature, top_k, top_p, eos_id,
                    *, max_new_tokens: int):
  """prompts int32 (b, Lp) right-padded, lengths (b,) >= 1 -> new tokens int32 (b, N).

  Tokens after a row's first EOS are set to EOS.
  """
  batch = prompts.shape[0]
  model = handle.bind(params)
  cache = model.init_cache(batch)
  vocab = model.cfg.vocab_size

  def prefill(carry, xs):
    cache, last = carry
    t, token = xs
    logits, new_cache = handle.bind(params).decode_step(token, cache)
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
    logits, cache = handle.bind(params).decode_step(token, cache)
    return (cache, logits, key, done), token

  done = jnp.zeros((batch,), bool)
  _, tokens = jax.lax.scan(decode, (cache, logits, key, done), None, length=max_new_tokens)
  return tokens.T


def reforward_tokens(params, handle, buffer, length, key, temperature, top_k, top_p, *,
                     max_new_tokens: int):
  """The baseline: the full forward over the whole (padded) sequence for every new token.

  buffer int32 (b, T) holds the prompt in [:length]; T >= length + max_new_tokens.
  """
  def body(i, carry):
    buf, key = carry
    pos = length + i
    logits = handle.bind(params)(buf)
    last = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)
    key, sub = jax.random.split(key)
    token = sample_token(last, sub, temperature, top_k, top_p)
    return jax.lax.dynamic_update_index_in_dim(buf, token[:, None], pos, axis=1), key

  buf, _ = jax.lax.fori_loop(0, max_new_tokens, body, (buffer, key))
  return jax.lax.dynamic_slice_in_dim(buf, length, max_new_tokens, axis=1)


def sample_text(handle: Any, params: Any, tokenizer: Any, prompt: str,
                num_tokens: int, temperature: float, max_positions: int = 0,
                seed: int = 0) -> str:
  """A continuation of `prompt` (after an EOS, as documents are packed). A KV cache
  holds `max_positions` tokens (0: no limit): a longer prompt keeps its end and the
  sample is cut to fit."""
  ids = [tokenizer.eos_id] + list(tokenizer.encode(prompt))
  if max_positions:
    ids = ids[-max(1, max_positions // 2):]
    num_tokens = min(num_tokens, max_positions - len(ids))
  fn = jax.jit(functools.partial(generate_tokens, max_new_tokens=num_tokens))
  tokens = fn(jax.device_get(params), jax.device_get(handle), jnp.asarray([ids], jnp.int32),
              jnp.asarray([len(ids)], jnp.int32), jax.random.key(seed),
              jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0), jnp.int32(-1))
  return tokenizer.decode([int(t) for t in np.asarray(tokens)[0]])


def _bucket(n: int, minimum: int = 8) -> int:
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@dataclasses.dataclass
class Generation:
  prompt: str
  texts: list[str]               # one per sample
  tokens: list[list[int]]        # new tokens per sample, up to (excluding) EOS
  seconds: float                 # the compiled call (prefill + decode)
  compile_seconds: float
  new_tokens: int                # tokens computed: rows x max_new_tokens

  @property
  def tokens_per_second(self) -> float:
    return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


class Generator:
  """Compiled recurrent sampling for one restored run (`restore.load_run`)."""

  def __init__(self, run):
    self.run = run
    self.tokenizer = run.tokenizer
    self._compiled: dict = {}

  def _fn(self, batch: int, prompt_len: int, max_new_tokens: int, args):
    """The compiled sampler for these shapes (shared by runs of one model config)."""
    def build():
      fn = jax.jit(functools.partial(generate_tokens, max_new_tokens=max_new_tokens))
      t0 = time.perf_counter()
      return fn.lower(*args).compile(), time.perf_counter() - t0

    key = (batch, prompt_len, max_new_tokens)
    if key not in self._compiled:
      self._compiled[key] = restore.cached("generate", self.run, build, *key)
    return self._compiled[key]

  def encode_prompt(self, prompt: str) -> list[int]:
    return [self.tokenizer.eos_id] + list(self.tokenizer.encode(prompt))

  def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0, stop_at_eos: bool = True):
    """(new ids per prompt (EOS and after removed when stop_at_eos), seconds, compile seconds)."""
    n = len(prompts)
    if n == 0 or max_new_tokens <= 0:
      return [[] for _ in prompts], 0.0, 0.0
    cfg = self.run.config.model
    limit = max_positions(cfg)
    longest = max(len(p) for p in prompts) + max_new_tokens
    if limit is not None and longest > limit:
      raise ValueError(f"prompt + max_new_tokens = {longest} tokens, but the model reads "
                       f"model.max_len = {limit} positions at most")
    if cfg.learned_positions and len({len(p) for p in prompts}) > 1:
      # A learned position table needs one position per step for the whole batch.
      outs, secs, comp = [], 0.0, 0.0
      for p in prompts:
        o, s, c = self.generate_ids([p], max_new_tokens, temperature=temperature, top_k=top_k,
                                    top_p=top_p, seed=seed, stop_at_eos=stop_at_eos)
        outs += o
        secs += s
        comp += c
      return outs, secs, comp
    width = _bucket(max(len(p) for p in prompts))
    buf = np.zeros((n, width), np.int32)
    for i, p in enumerate(prompts):
      if not p:
        raise ValueError("empty prompt: start it with the EOS id")
      buf[i, :len(p)] = p
    eos = self.tokenizer.eos_id
    args = (self.run.params, self.run.handle, jnp.asarray(buf),
            jnp.asarray([len(p) for p in prompts], jnp.int32), jax.random.key(seed),
            jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
            jnp.int32(eos if stop_at_eos else -1))
    fn, compile_s = self._fn(n, width, max_new_tokens, args)
    t0 = time.perf_counter()
    tokens = np.asarray(jax.device_get(fn(*args)))
    seconds = time.perf_counter() - t0
    out = []
    for row in tokens.tolist():
      if stop_at_eos and eos in row:
        row = row[:row.index(eos)]
      out.append(row)
    return out, seconds, compile_s

  def generate(self, prompt: str, max_new_tokens: int = 200, *, num_samples: int = 1,
               temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop_at_eos: bool = True) -> Generation:
    ids = self.encode_prompt(prompt)
    out, seconds, compile_s = self.generate_ids(
        [ids] * num_samples, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, stop_at_eos=stop_at_eos)
    return Generation(prompt, [self.tokenizer.decode(o) for o in out], out, seconds, compile_s,
                      num_samples * max_new_tokens)
