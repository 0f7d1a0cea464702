r"""Sample from one or more runs with the model's recurrent cache.

  python -m mambaswelu_jax.generate --workdir=DIR[,DIR2,...] \
      --prompt="The future of artificial intelligence is" \
      [--max_new_tokens=200 --temperature=0.8 --top_k=0 --top_p=1.0 --seed=0 --num_samples=1]

Decoding runs the model's `decode_step` (constant work per new token: the SSM and
conv states are the whole past) inside one compiled function: the prompt is fed
through the same step under a per-row mask (prompts of different lengths share a
batch), then `max_new_tokens` sample-and-step iterations run in a `lax.scan`. It is
compiled once per (batch, prompt-length bucket, max_new_tokens); temperature, top-k
and top-p are traced values, so changing them does not recompile.

Sampling: temperature 0 is greedy (argmax). Otherwise logits / temperature, then
top-k (k > 0 keeps the k largest; ties at the k-th value are kept too), then top-p
(the smallest set of tokens, largest first, whose probability reaches p), then a
categorical draw. `--seed` fixes the draws: the same seed, prompt and settings give
the same text. Rows stop at EOS (the document separator): later tokens are dropped.

Every prompt starts with EOS, as every document does in training. With several
workdirs the samples are printed side by side, one column per run. Tokens/s
(new tokens over the wall time of the compiled call, compilation excluded) is
printed with each run.

The sampler itself (and the quadratic re-forward baseline) is `mambaswelu_jax.sampler`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import textwrap
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mambaswelu_jax.sampler import generate_tokens


# ----------------------------------------------------------------------------
# Host side: prompts in, text out.
# ----------------------------------------------------------------------------


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
  """Compiled recurrent sampling for one restored run (`eval.load_run`)."""

  def __init__(self, run):
    self.run = run
    self.tokenizer = run.tokenizer
    self._compiled: dict = {}

  def _fn(self, batch: int, prompt_len: int, max_new_tokens: int, args):
    """The compiled sampler for these shapes (shared by runs of one model config)."""
    from mambaswelu_jax import eval as eval_lib  # pylint: disable=import-outside-toplevel

    def build():
      fn = jax.jit(functools.partial(generate_tokens, graphdef=self.run.graphdef,
                                     max_new_tokens=max_new_tokens))
      t0 = time.perf_counter()
      return fn.lower(*args).compile(), time.perf_counter() - t0

    key = (batch, prompt_len, max_new_tokens)
    if key not in self._compiled:
      self._compiled[key] = eval_lib._cached(  # pylint: disable=protected-access
          "generate", self.run, build, *key)
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


def side_by_side(columns: Sequence[tuple[str, str]], width: int = 0) -> str:
  """[(title, text)] -> one column per entry, wrapped to the terminal width."""
  width = width or shutil.get_terminal_size((160, 24)).columns
  n = len(columns)
  col = max(20, (width - 3 * (n - 1)) // n)

  def wrap(text):
    lines = []
    for line in text.split("\n"):
      lines += textwrap.wrap(line.replace("\t", "    "), col, drop_whitespace=False,
                             replace_whitespace=False) or [""]
    return lines

  blocks = [[title[:col], "-" * min(col, max(len(title), 1))] + wrap(text)
            for title, text in columns]
  height = max(len(b) for b in blocks)
  rows = []
  for i in range(height):
    cells = [(b[i] if i < len(b) else "").ljust(col) for b in blocks]
    rows.append(" | ".join(cells).rstrip())
  return "\n".join(rows)


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_list("workdir", None, "One or more run directories (comma-separated).")
  flags.DEFINE_string("step", "latest", "latest | final | a step number (each workdir).")
  flags.DEFINE_multi_string("prompt", [""], "Prompt text (repeat the flag for several).")
  flags.DEFINE_integer("max_new_tokens", 200, "New tokens per sample.")
  flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
  flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus: keep the smallest set reaching this mass (1 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed: same seed, same text.")
  flags.DEFINE_integer("num_samples", 1, "Samples per prompt (one batch).")
  flags.DEFINE_bool("stop_at_eos", True, "End a sample at the end-of-document token.")
  flags.DEFINE_integer("width", 0, "Output width for side-by-side columns (0: terminal).")
  flags.DEFINE_string("output_json", "", "Also write the samples and timings here.")
  flags.mark_flag_as_required("workdir")
  return flags.FLAGS


def main(argv):
  from absl import app, logging  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax import eval as eval_lib  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  f = FLAGS
  settings = dict(max_new_tokens=f.max_new_tokens, num_samples=f.num_samples,
                  temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed,
                  stop_at_eos=f.stop_at_eos)
  results: dict[str, dict[str, Generation]] = {}
  try:
    for wd in f.workdir:
      run = eval_lib.load_run(wd, f.step)
      gen = Generator(run)
      results[f"{run.name}@{run.step}"] = {p: gen.generate(p, **settings) for p in f.prompt}
  except eval_lib.EvalError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for p in f.prompt:
    print(f"prompt: {p!r}   ({f.num_samples} sample(s), {f.max_new_tokens} new tokens, "
          f"temperature {f.temperature}, top_k {f.top_k}, top_p {f.top_p}, seed {f.seed})\n")
    for i in range(f.num_samples):
      cols = [(f"{name}  [{g[p].tokens_per_second:,.0f} tokens/s]"
               if i == 0 else f"{name}  sample {i + 1}", p + g[p].texts[i])
              for name, g in results.items()]
      print(side_by_side(cols, f.width) + "\n")
  if f.output_json:
    out = {"settings": settings, "prompts": f.prompt,
           "runs": {name: {p: dataclasses.asdict(g) | {"tokens_per_second": g.tokens_per_second}
                           for p, g in gens.items()} for name, gens in results.items()}}
    with open(f.output_json, "w", encoding="utf-8") as fh:
      json.dump(out, fh, indent=2)
    print(f"samples written to {os.path.abspath(f.output_json)}")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  FLAGS = _define_flags()
  from absl import app as _app  # pylint: disable=ungrouped-imports
  _app.run(main)
