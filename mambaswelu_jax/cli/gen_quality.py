r"""The measurable part of generation quality, for comparing runs on the same prompts.

  python -m mambaswelu_jax.cli.gen_quality --workdir=DIR1,DIR2,DIR3 \
      --prompt="The future of artificial intelligence is" --prompt="def main(" \
      --num_samples=16 --max_new_tokens=128 --temperature=0.8 --top_p=0.95 \
      --output_json=quality.json

Each run samples `num_samples` continuations of every prompt (same seed and settings
for every run). Over a run's samples (whitespace-separated words, so runs with
different tokenizers compare):

  distinct_n       distinct n-grams / all n-grams, pooled over the samples (n = 1, 2, 3):
                   low = the samples repeat each other or themselves.
  repetition_n     per sample, the share of its n-grams (n = 4) already seen earlier in
                   the same sample, averaged: high = loops ("the the the", a line
                   repeated).
  mean_words       sample length (samples end at EOS or max_new_tokens).

and each sample is scored by *every* run's model: `perplexity[generator][scorer]`
(per token of the scorer's tokenizer) and `bits_per_byte[generator][scorer]`
(tokenizer independent), the continuation conditioned on EOS + prompt.

What these measure: diversity (distinct-n), degeneration (repetition), and how
plausible one model finds another's text (cross perplexity: a sample that every
other run also finds likely is fluent by their shared standard). What they do not
measure: factual accuracy, coherence across sentences, creativity or usefulness.
A low self-perplexity (the diagonal) is not quality: greedy loops score very well
under the model that made them, which is why repetition is reported beside it.
Those judgements need people (or a much stronger judge model) reading the samples
that `python -m mambaswelu_jax.cli.generate` prints side by side.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Sequence

import numpy as np

from mambaswelu_jax import perplexity


def _ngrams(words: Sequence[str], n: int) -> list[tuple]:
  return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
  """Distinct n-grams over all n-grams, pooled over `texts` (words split on whitespace)."""
  grams = [g for t in texts for g in _ngrams(t.split(), n)]
  return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_n(text: str, n: int = 4) -> float:
  """Share of the text's n-grams that already occurred earlier in the same text."""
  grams = _ngrams(text.split(), n)
  if not grams:
    return float("nan")
  seen, repeats = set(), 0
  for g in grams:
    repeats += g in seen
    seen.add(g)
  return repeats / len(grams)


def text_measures(texts: Sequence[str]) -> dict:
  """Diversity and repetition of a set of samples."""
  reps = [repetition_n(t, 4) for t in texts]
  reps = [r for r in reps if not math.isnan(r)]
  return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
          "distinct_3": distinct_n(texts, 3),
          "repetition_4": float(np.mean(reps)) if reps else float("nan"),
          "mean_words": float(np.mean([len(t.split()) for t in texts])) if texts else 0.0,
          "num_samples": len(texts)}


def cross_scores(scorer_run, prompts: Sequence[str], samples: Sequence[str],
                 batch_size: int = 16) -> dict:
  """Perplexity and bits per byte of `samples` (continuations of `prompts`, one each)
  under `scorer_run`'s model and tokenizer."""
  from mambaswelu_jax import scoring  # pylint: disable=import-outside-toplevel
  tok = scorer_run.tokenizer
  requests, n_tokens, n_bytes = [], 0, 0
  for prompt, sample in zip(prompts, samples):
    if not sample:
      continue
    ctx = [tok.eos_id] + list(tok.encode(prompt))
    whole = [tok.eos_id] + list(tok.encode(prompt + sample))
    cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else list(tok.encode(sample))
    requests.append((ctx, cont))
    n_tokens += len(cont)
    n_bytes += len(sample.encode("utf-8"))
  if not requests:
    return {"perplexity": float("nan"), "bits_per_byte": float("nan"), "tokens": 0, "bytes": 0}
  # Samples are scored whole (up to the model's own limit, not the training length).
  longest = max(len(c) + len(k) for c, k in requests)
  max_length = longest if not scorer_run.config.model.learned_positions else 0
  scores = scoring.score_sequences(scorer_run, requests, batch_size=batch_size,
                                   max_length=max_length)
  figures = perplexity.figures(-sum(s for s, _ in scores), n_tokens, n_bytes)
  return {k: figures[k] for k in ("perplexity", "bits_per_byte", "tokens", "bytes")}


def compare_runs(runs: Sequence, prompts: Sequence[str], *, num_samples: int = 8,
                 max_new_tokens: int = 128, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 0.95, seed: int = 0) -> dict:
  """Samples from every run, their text measures, and the cross-scoring matrices."""
  from mambaswelu_jax.sampling import Generator  # pylint: disable=import-outside-toplevel
  names = [f"{r.name}@{r.step}" for r in runs]
  if len(set(names)) != len(names):
    names = [f"{i}:{n}" for i, n in enumerate(names)]
  samples: dict[str, list[tuple[str, str]]] = {}
  for name, run in zip(names, runs):
    g = Generator(run)
    pairs = []
    for p in prompts:
      out = g.generate(p, max_new_tokens, num_samples=num_samples, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed)
      pairs += [(p, t) for t in out.texts]
    samples[name] = pairs
  result = {"settings": {"num_samples": num_samples, "max_new_tokens": max_new_tokens,
                         "temperature": temperature, "top_k": top_k, "top_p": top_p,
                         "seed": seed, "prompts": list(prompts)},
            "runs": {}, "perplexity": {}, "bits_per_byte": {}}
  for name in names:
    texts = [t for _, t in samples[name]]
    result["runs"][name] = {"measures": text_measures(texts), "samples": samples[name]}
    result["perplexity"][name], result["bits_per_byte"][name] = {}, {}
    for scorer_name, scorer in zip(names, runs):
      s = cross_scores(scorer, [p for p, _ in samples[name]], texts)
      result["perplexity"][name][scorer_name] = s["perplexity"]
      result["bits_per_byte"][name][scorer_name] = s["bits_per_byte"]
  return result


def format_report(result: dict) -> str:
  names = list(result["runs"])
  w = max(12, *(len(n) for n in names)) + 2
  lines = [f"{'run':<{w}}{'distinct-1':>11}{'distinct-2':>11}{'distinct-3':>11}"
           f"{'repetition-4':>13}{'words':>8}"]
  for n in names:
    m = result["runs"][n]["measures"]
    lines.append(f"{n:<{w}}{m['distinct_1']:>11.3f}{m['distinct_2']:>11.3f}"
                 f"{m['distinct_3']:>11.3f}{m['repetition_4']:>13.3f}{m['mean_words']:>8.1f}")
  for key, title in (("perplexity", "perplexity of the samples (rows: generator, columns: "
                      "scorer)"), ("bits_per_byte", "bits per byte (rows: generator, columns: "
                                   "scorer)")):
    lines += ["", title, " " * w + "".join(f"{n:>{w}}" for n in names)]
    for g in names:
      lines.append(f"{g:<{w}}" + "".join(f"{result[key][g][s]:>{w}.3f}" for s in names))
  return "\n".join(lines)


def define_flags() -> None:
  """The command's flags: generate's runs, prompts and sampling settings, with defaults
  for comparing runs (defined when it runs, so importing this module defines none)."""
  from mambaswelu_jax.cli.generate import define_sampling_flags  # pylint: disable=import-outside-toplevel
  define_sampling_flags(prompt=["The future of artificial intelligence is"],
                        max_new_tokens=128, num_samples=8, top_p=0.95,
                        output_json="Write measures, matrices and samples here.")


def main(argv):
  from absl import app, flags, logging  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.checkpointing import restore  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  f = flags.FLAGS
  try:
    runs = [restore.load_run(wd, f.step) for wd in f.workdir]
  except restore.RunError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  result = compare_runs(runs, f.prompt, num_samples=f.num_samples,
                        max_new_tokens=f.max_new_tokens, temperature=f.temperature,
                        top_k=f.top_k, top_p=f.top_p, seed=f.seed)
  print(format_report(result))
  if f.output_json:
    with open(f.output_json, "w", encoding="utf-8") as fh:
      json.dump(result, fh, indent=2)
    print(f"\nwritten to {os.path.abspath(f.output_json)}")


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-gen-quality` console script)."""
  from mambaswelu_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_with_flags(main, define_flags)


if __name__ == "__main__":
  run()
