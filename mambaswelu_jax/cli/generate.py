r"""Sample from one or more runs with the model's recurrent cache.

  python -m mambaswelu_jax.cli.generate --workdir=DIR[,DIR2,...] \
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

The sampler itself (and the quadratic re-forward baseline) is `mambaswelu_jax.sampling`;
`mambaswelu_jax.sampling.Generator` is the library this command (and the
generation-quality measures and the lm-eval adapter) samples with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import textwrap
from typing import Sequence

from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax.sampling import Generation, Generator


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


def define_sampling_flags(*, prompt: Sequence[str], max_new_tokens: int, num_samples: int,
                          top_p: float, output_json: str) -> None:
  """The flags this command and `python -m mambaswelu_jax.cli.gen_quality` share: the runs,
  the prompts and the sampling settings (each command its own defaults)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_list("workdir", None, "One or more run directories (comma-separated).")
  flags.DEFINE_string("step", "latest", "latest | final | a step number (each workdir).")
  flags.DEFINE_multi_string("prompt", list(prompt), "Prompt text (repeat the flag for several).")
  flags.DEFINE_integer("max_new_tokens", max_new_tokens, "New tokens per sample.")
  flags.DEFINE_float("temperature", 0.8, "Sampling temperature (0 = greedy).")
  flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
  flags.DEFINE_float("top_p", top_p, "Nucleus: keep the smallest set reaching this mass "
                     "(1 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed: same seed, same text.")
  flags.DEFINE_integer("num_samples", num_samples, "Samples per prompt (and run).")
  flags.DEFINE_string("output_json", "", output_json)
  flags.mark_flag_as_required("workdir")


def define_flags() -> None:
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  define_sampling_flags(prompt=[""], max_new_tokens=200, num_samples=1, top_p=1.0,
                        output_json="Also write the samples and timings here.")
  flags.DEFINE_bool("stop_at_eos", True, "End a sample at the end-of-document token.")
  flags.DEFINE_integer("width", 0, "Output width for side-by-side columns (0: terminal).")


def main(argv):
  from absl import app, flags, logging  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  f = flags.FLAGS
  settings = dict(max_new_tokens=f.max_new_tokens, num_samples=f.num_samples,
                  temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed,
                  stop_at_eos=f.stop_at_eos)
  results: dict[str, dict[str, Generation]] = {}
  try:
    for wd in f.workdir:
      run = restore.load_run(wd, f.step)
      gen = Generator(run)
      results[f"{run.name}@{run.step}"] = {p: gen.generate(p, **settings) for p in f.prompt}
  except restore.RunError as e:
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


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-generate` console script)."""
  from mambaswelu_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_with_flags(main, define_flags)


if __name__ == "__main__":
  run()
