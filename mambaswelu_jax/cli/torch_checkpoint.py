"""The command line of `checkpointing.torch_format`: import an original PyTorch checkpoint
into a new workdir, or export a workdir's params (see that module and
docs/torch-checkpoints.md).

  python -m mambaswelu_jax.cli.torch_checkpoint import --checkpoint=model_step_N.pt \
      --config=configs/original_124m.py --workdir=DIR
  python -m mambaswelu_jax.cli.torch_checkpoint export --workdir=DIR --out=model.pt
"""

import argparse
import os
import sys

from mambaswelu_jax.checkpointing import torch_format


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mambaswelu_jax.cli.torch_checkpoint",
                                   description=torch_format.__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="an original .pt/.safetensors -> a new workdir")
  imp.add_argument("--checkpoint", required=True)
  imp.add_argument("--config", required=True, help="configs/X.py[:arg]")
  imp.add_argument("--workdir", required=True)
  imp.add_argument("--tokenizer", default="", help="a SentencePiece model to copy in")
  imp.add_argument("--step", type=int, default=None)
  imp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, e.g. model.swelu_learn_lambda=True")
  exp = sub.add_parser("export", help="a workdir's params -> .pt and/or .safetensors")
  exp.add_argument("--workdir", required=True)
  exp.add_argument("--out", default="")
  exp.add_argument("--safetensors", default="")
  exp.add_argument("--step", default="latest")
  args = parser.parse_args(argv)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only managers
  try:
    if args.command == "import":
      config = torch_format.load_config_file(args.config, args.set)
      step = torch_format.import_checkpoint(args.checkpoint, config, args.workdir, args.tokenizer,
                               args.step)
      print(f"imported {args.checkpoint} into {args.workdir} (final params of step {step})")
    else:
      step = torch_format.export_checkpoint(args.workdir, args.out, args.safetensors, args.step)
      print(f"exported step {step} of {args.workdir} to "
            f"{' and '.join(p for p in (args.out, args.safetensors) if p)}")
  except torch_format.CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return torch_format.USAGE_EXIT_CODE
  return 0


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-torch-checkpoint` console script)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())


if __name__ == "__main__":
  run()
