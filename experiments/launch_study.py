r"""Launch the study's runs, each detached and pinned to its devices.

  python experiments/launch_study.py --root=runs [--devices=0,1:2,3:4,5] [--dry_run]
      [--run_flag=RUN[,RUN...]:FLAG ...] [-- FLAG ...]
  python experiments/launch_study.py --root=runs --runs=wikipedia_llama --devices=4,5
  python experiments/launch_study.py --root=runs --stop [--runs=...]

For every run (all three by default, or those named in --runs):
  running already      refused (exit status 1): one process per workdir
  finished             left alone
  dead (crashed, killed, stopped)  restarted: the trainer resumes from the newest
                       checkpoint that restores, the data iterator with it
  never started        started

Each run is `python -m mambaswelu_jax.main --config=... --workdir=ROOT/<run>` in its own
session (setsid: it survives the terminal and a hang-up), `CUDA_VISIBLE_DEVICES` set to
its device group, output appended to ROOT/logs/<run>.log, its pid in ROOT/pids/<run>.json
and its exit status in ROOT/pids/<run>.exit when it ends. `--devices=none` pins nothing
(a CPU machine).

Trainer flags: those after `--` go to every run, e.g.
`-- --config.data.tokenizer_path=/data/study_tokenizer.model`; `--run_flag=RUN:FLAG`
(repeatable; `RUN` may be a comma-separated list) gives FLAG to the named run(s) only,
e.g. `--run_flag=wikipedia_llama:--config.data.data_dir=/data/tfds`. A run's own flags
come after the common ones, so they win where both set the same option. Per-run flags
for a run not selected by `--runs` are ignored. Pass the same flags again when
relaunching: a restart runs the command built now.

`--stop` sends SIGTERM to the runs' process groups; the trainer saves a checkpoint and
exits (status 143), and a later launch resumes it.

Exit status: 0 every selected run started, restarted or already finished (or the
dry run printed); 1 a run was refused (already running); 2 bad command line (unknown
run name, malformed --run_flag or --devices), nothing started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from study_lib import runs as runs_lib


def plan(root: str, specs, devices: list) -> list[tuple]:
  """(spec, paths, devices, action, detail) for each run: start | restart | refuse | skip."""
  out = []
  for spec, dev in zip(specs, devices):
    p = runs_lib.paths(root, spec.name)
    pid = runs_lib.running_pid(p)
    if pid is not None:
      out.append((spec, p, dev, "refuse", f"already running (pid {pid}); see {p.log}"))
    elif runs_lib.finished(p.workdir):
      out.append((spec, p, dev, "skip", "finished (final params saved)"))
    elif runs_lib.saved_steps(p.workdir, "checkpoints") or os.path.exists(
        os.path.join(p.workdir, "config.json")):
      ckpt = runs_lib.saved_steps(p.workdir, "checkpoints")
      code = runs_lib.last_exit(p)
      out.append((spec, p, dev, "restart",
                  f"dead{'' if code is None else f' (exit status {code})'}; resuming from "
                  + (f"checkpoint {ckpt[-1]}" if ckpt else "step 0 (no checkpoint yet)")))
    else:
      out.append((spec, p, dev, "start", "new run"))
  return out


def parse_run_flags(values, known) -> dict[str, tuple]:
  """['RUN[,RUN...]:FLAG', ...] -> {run: (FLAG, ...)}, in the order given.

  Raises ValueError (one line, naming the known runs) for an unknown run or a value
  that is not RUN:--flag.
  """
  out: dict[str, tuple] = {}
  for value in values or ():
    names, sep, flag = value.partition(":")
    runs = [n.strip() for n in names.split(",") if n.strip()]
    if not sep or not runs or not flag.startswith("--"):
      raise ValueError(f"--run_flag={value!r}: expected RUN[,RUN...]:--FLAG, e.g. "
                       f"{known[-1]}:--config.data.data_dir=/data/tfds")
    unknown = [n for n in runs if n not in known]
    if unknown:
      raise ValueError(f"--run_flag={value!r}: unknown run(s) {', '.join(unknown)}; "
                       f"this study has {', '.join(known)}")
    for n in runs:
      out[n] = out.get(n, ()) + (flag,)
  return out


def launch(root: str, specs, devices: list, *, dry_run: bool = False, extra: tuple = (),
           run_flags: dict | None = None, env_extra: dict | None = None,
           python: str | None = None, out=print) -> int:
  """Carries out the plan; returns the exit status (1 when a run was refused).

  Every run gets the flags in `extra`, then its own from `run_flags` ({run: flags}).
  """
  status = 0
  for spec, p, dev, action, detail in plan(root, specs, devices):
    flags = tuple(extra) + tuple((run_flags or {}).get(spec.name, ()))
    cmd = runs_lib.train_command(spec, p, python, flags)
    env = (f"CUDA_VISIBLE_DEVICES={dev} " if dev else "") + "".join(
        f"{k}={shlex.quote(v)} " for k, v in (env_extra or {}).items())
    shown = f"{env}setsid nohup {shlex.join(cmd)} >> {p.log} 2>&1 &"
    if action == "refuse":
      out(f"{spec.name}: refused: {detail}")
      status = 1
      continue
    if action == "skip":
      out(f"{spec.name}: {detail}; not started")
      continue
    if dry_run:
      out(f"{spec.name}: would {action} ({detail}):\n  {shown}")
      continue
    pid = runs_lib.start(spec, p, dev, env_extra=env_extra, python=python, extra=flags)
    runs_lib.append_history(p, {"event": action, "pid": pid, "devices": dev, "command": cmd})
    out(f"{spec.name}: {action}ed ({detail}), pid {pid}, devices {dev or 'unpinned'}, "
        f"log {p.log}")
  return status


def stop_runs(root: str, specs, out=print) -> int:
  for spec in specs:
    p = runs_lib.paths(root, spec.name)
    pid = runs_lib.running_pid(p)
    if pid is None:
      out(f"{spec.name}: not running")
      continue
    out(f"{spec.name}: SIGTERM to pid {pid} (saves a checkpoint, then exits)")
    ok = runs_lib.stop(p)
    runs_lib.append_history(p, {"event": "stop", "pid": pid, "stopped": ok})
    out(f"{spec.name}: {'stopped' if ok else 'still running after 120 s'}")
  return 0


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=__doc__.split("\n\n", 1)[1])
  ap.add_argument("--root", default="runs", help="study root: ROOT/<run> are the workdirs")
  ap.add_argument("--scale", default="full", choices=sorted(runs_lib.SCALES),
                  help="full: the three real runs; toy: configs/toy_study.py")
  ap.add_argument("--runs", default="", help="comma-separated run names (default: all)")
  ap.add_argument("--devices", default=None,
                  help=f"device groups, one per run, ':'-separated (default "
                       f"{runs_lib.DEFAULT_DEVICES} for the full study, none for the toy); "
                       f"'none' pins nothing")
  ap.add_argument("--dry_run", action="store_true", help="print what would run, start nothing")
  ap.add_argument("--run_flag", action="append", default=[], metavar="RUN[,RUN...]:FLAG",
                  help="a trainer flag for the named run(s) only, after the common flags "
                       "(repeatable), e.g. wikipedia_llama:--config.data.data_dir=/data/tfds")
  ap.add_argument("--stop", action="store_true", help="SIGTERM the runs (checkpoint, exit)")
  args = ap.parse_args(argv)
  study = runs_lib.SCALES[args.scale]
  try:
    run_flags = parse_run_flags(args.run_flag, [s.name for s in study])
    specs = runs_lib.select(study, args.runs)
  except ValueError as e:
    return _usage_error(str(e))
  except SystemExit as e:  # runs_lib's one-line refusals
    if not isinstance(e.code, str):
      raise
    return _usage_error(f"--runs={args.runs}: {e.code}")
  if args.stop:
    return stop_runs(args.root, specs)
  devices_arg = args.devices
  if devices_arg is None:
    if args.scale == "full" and not args.runs:
      devices_arg = runs_lib.DEFAULT_DEVICES
    elif args.scale == "full":
      full = runs_lib.DEFAULT_DEVICES.split(":")
      idx = [s.name for s in runs_lib.STUDY]
      devices_arg = ":".join(full[idx.index(s.name)] for s in specs)
    else:
      devices_arg = "none"
  try:
    devices = runs_lib.parse_devices(devices_arg, len(specs))
  except SystemExit as e:
    if not isinstance(e.code, str):
      raise
    return _usage_error(e.code)
  return launch(args.root, specs, devices, dry_run=args.dry_run, extra=tuple(extra),
                run_flags=run_flags)


def _usage_error(message: str) -> int:
  """One line on stderr, exit status 2 (as argparse does), nothing started."""
  print(f"launch_study.py: error: {message}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
