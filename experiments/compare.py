r"""Compare the study's runs into one self-contained report (Markdown + PNG figures).

  python experiments/compare.py --root=runs --out=report [--scale=full|toy] [--runs=a,b,c]

Reads only the workdirs (config.json, metrics.jsonl, eval/<step>.json, generations.json,
train.log, checkpoint directories): no JAX, no GPU, and it can run while training goes
on. Writes OUT/README.md and OUT/*.png. Missing pieces (an unevaluated run, no
generations, no benchmarks) leave their section in place with what to run to fill it.

To fill every section first:
  python -m mambaswelu_jax.cli.eval --workdir=runs/<run> --step=final
  python experiments/run_study.py --stage=evaluate,generate --root=runs --scale=full
(the latter also cross-evaluates the Wikipedia run on the SlimPajama validation split for
H1/H3, evaluates both long runs at common snapshot steps, and samples the shared prompts).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from study_lib import collect
from study_lib import report
from study_lib import runs as runs_lib


def specs_for(root: str, scale: str | None):
  """The run specs of `scale`, or of whichever study has workdirs under root."""
  if scale:
    return runs_lib.SCALES[scale]
  for name in ("full", "toy"):
    if any(os.path.exists(os.path.join(root, s.name, "config.json"))
           for s in runs_lib.SCALES[name]):
      return runs_lib.SCALES[name]
  return None


def compare(root: str, out: str, *, scale: str | None = None, names=None, title: str = "",
            notes=None, benchmark_note: str = "", command: str = "") -> str:
  root = os.path.abspath(root)
  specs = specs_for(root, scale)
  runs = collect.load_study(root, specs, names)
  if not runs:  # no study runs: any workdirs under root
    runs = collect.load_study(root, None, names)
  title = title or ("MambaSWELU toy study" if specs is runs_lib.TOY else
                    "MambaSWELU comparative study")
  return report.build_report(runs, out, title=title, notes=notes, benchmark_note=benchmark_note,
                             command=command)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=__doc__.split("\n\n", 1)[1])
  ap.add_argument("--root", default="runs")
  ap.add_argument("--out", default="report")
  ap.add_argument("--scale", default=None, choices=sorted(runs_lib.SCALES),
                  help="which study's run names to look for (default: whichever is present)")
  ap.add_argument("--runs", default="", help="comma-separated subset of runs")
  ap.add_argument("--title", default="")
  args = ap.parse_args(argv)
  names = [n for n in args.runs.split(",") if n] or None
  path = compare(args.root, args.out, scale=args.scale, names=names, title=args.title,
                 command="python experiments/compare.py " + shlex.join(
                     sys.argv[1:] if argv is None else argv))
  print(f"report: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
