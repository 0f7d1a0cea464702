"""lm-eval's own command line with this project's model registered as `mambaswelu`
(`mambaswelu_jax.lm_eval_adapter`):

  python -m mambaswelu_jax.cli.lm_eval --model mambaswelu \\
      --model_args workdir=runs/demo,step=final --tasks lambada_openai,hellaswag
"""

import sys


def main() -> None:
  from mambaswelu_jax import lm_eval_adapter  # pylint: disable=import-outside-toplevel,unused-import
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=import-outside-toplevel
  cli_evaluate()


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-lm-eval` console script)."""
  sys.exit(main())


if __name__ == "__main__":
  run()
