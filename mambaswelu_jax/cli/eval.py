r"""Evaluate a run's checkpoints: loss, perplexity and bits per byte per split and text type.

  python -m mambaswelu_jax.cli.eval --workdir=DIR [--step=latest|final|N|all]
      [--splits=validation,test] [--max_tokens=N] [--benchmarks=lambada_openai,...]

Reads only the workdir: its recorded config, its tokenizer and the Orbax parameters of
each step asked for (`mambaswelu_jax.checkpointing.restore`), restored onto the devices of *this*
process, so a workdir copied to another machine or evaluated on another device count
works the same. `--step=all` evaluates every saved step (the params-only snapshots,
the full checkpoints still kept and the final params): the loss-versus-tokens curve.

The figures (`mambaswelu_jax.evaluation`): loss, perplexity and bits per byte over each
split, overall and per text type, with the token and byte counts beside each; with
`--benchmarks`, lm-eval's tasks through `mambaswelu_jax.lm_eval_adapter`. Results go
to `DIR/eval/<step>.json` (merged with what an earlier call wrote, so benchmarks and
perplexities can be computed separately) and a table is printed. Exit status: 0; 2 a
bad argument, workdir, step or benchmark data (one line); 3 the table was printed but
a result file could not be written (read-only or full workdir: use --output_dir).
"""

from __future__ import annotations

import sys

from mambaswelu_jax import evaluation
from mambaswelu_jax.checkpointing import restore

# Exit status when the figures were computed and printed but their result file could not
# be written (a read-only or full workdir): rerun with --output_dir.
RESULTS_NOT_WRITTEN_EXIT_CODE = 3


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("workdir", None, "The run's directory.")
  flags.DEFINE_string("step", "latest", "latest | final | all | a step number.")
  flags.DEFINE_list("splits", ["validation", "test"], "Splits to evaluate ('' for none).")
  flags.DEFINE_integer("max_tokens", 0, "Targets per split (0: the whole split).")
  flags.DEFINE_integer("batch_per_device", 0, "Eval rows per device (0: config.eval).")
  flags.DEFINE_list("benchmarks", [], "lm-eval tasks, e.g. lambada_openai,hellaswag,piqa,"
                    "winogrande (needs pip install '.[eval]' and the datasets).")
  flags.DEFINE_integer("benchmark_limit", 0, "Documents per benchmark task (0: all).")
  flags.DEFINE_integer("benchmark_batch_size", 16, "Rows per scoring batch for benchmarks.")
  flags.DEFINE_string("benchmark_tasks_dir", "", "A folder of extra lm-eval task YAMLs "
                      "(lm-eval's include_path), e.g. local copies of the datasets.")
  flags.DEFINE_string("output_dir", "", "Where <step>.json goes (default DIR/eval).")
  flags.DEFINE_bool("skip_done", False, "Reuse stored results of steps already evaluated "
                    "with these splits, max_tokens and benchmarks (for --step=all).")
  flags.mark_flag_as_required("workdir")


def main(argv):
  from absl import app, flags, logging  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only managers
  f = flags.FLAGS
  from mambaswelu_jax.data.sources import DataError  # pylint: disable=import-outside-toplevel
  try:
    results = evaluation.evaluate_run(
        f.workdir, f.step, splits=[s for s in f.splits if s], max_tokens=f.max_tokens,
        batch_per_device=f.batch_per_device, benchmarks=f.benchmarks,
        benchmark_limit=f.benchmark_limit, benchmark_batch_size=f.benchmark_batch_size,
        benchmark_tasks_dir=f.benchmark_tasks_dir, output_dir=f.output_dir,
        skip_done=f.skip_done)
  except (restore.RunError, DataError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(evaluation.format_report(results, f.output_dir), flush=True)
  failed = evaluation.unwritten(results)
  if failed:
    print(f"error: the results above could not be saved ({'; '.join(failed)}); rerun with "
          f"--output_dir=<a writable folder> to keep them", file=sys.stderr)
    sys.exit(RESULTS_NOT_WRITTEN_EXIT_CODE)


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-eval` console script)."""
  from mambaswelu_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_with_flags(main, define_flags)


if __name__ == "__main__":
  run()
