"""Sampling text from a restored run: prompts in, text out, timed.

`Generator(run)` wraps `sampler.generate_tokens` (the model's recurrent `decode_step`
inside one compiled function; see mambaswelu_jax.sampler) for a run restored with
`restore.load_run`: it encodes prompts (each starts with EOS, as every document does in
training), batches prompts of different lengths, compiles once per (batch,
prompt-length bucket, max_new_tokens) and cuts each sample at EOS. Tokens per second
count new tokens over the wall time of the compiled call, compilation excluded. The
`generate` command, the generation-quality measures and the lm-eval adapter use it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mambaswelu_jax import restore
from mambaswelu_jax.sampler import generate_tokens


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
      fn = jax.jit(functools.partial(generate_tokens, graphdef=self.run.graphdef,
                                     max_new_tokens=max_new_tokens))
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
    if cfg.get("architecture", "mamba") != "mamba":
      longest = max(len(p) for p in prompts) + max_new_tokens
      if longest > int(cfg.max_len):
        raise ValueError(f"prompt + max_new_tokens = {longest} tokens, but the model's KV "
                         f"cache holds model.max_len = {cfg.max_len} positions")
    if cfg.get("learned_positions", False) and len({len(p) for p in prompts}) > 1:
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
    args = (self.run.params, self.run.rest, jnp.asarray(buf),
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
