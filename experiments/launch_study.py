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

On a SLURM cluster (docs/cluster.md), `--cluster=slurm` submits one batch job per run
instead (nothing runs on the login node):

  python experiments/launch_study.py --cluster=slurm --root=ROOT [--scale=full|toy]
      [--runs=...] [--nodes=N] [--tasks_per_node=T] [--gpus_per_node=G] [--time=H:MM:SS]
      [--partition=P] [--sbatch_arg=ARG ...] [--max_requeues=K] [--wait] [--dry_run]
      [-- trainer flags]

Each job's script is ROOT/slurm/<run>.sbatch (resubmit by hand with `sbatch` on it), its
id ROOT/slurm/<run>.json, every process's output ROOT/logs/<run>.log. A run whose job
is pending or running is refused; a finished run is left alone; any other is
submitted and resumes from its newest checkpoint. Preemption, `scontrol requeue` and
the time limit (USR1 before it) checkpoint the current step and requeue the job until
the run is finished. `--stop` makes the jobs checkpoint and end; `--wait` blocks until
the submitted jobs end (exit status 1 when one failed).

Exit status: 0 every selected run started, restarted or already finished (or the
dry run printed); 1 a run was refused (already running); 2 bad command line (unknown
run name, malformed --run_flag or --devices), nothing started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from study_lib import runs as runs_lib
from study_lib import slurm as slurm_lib
from mambaswelu_jax.checkpointing import data_streams


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


def plan_slurm(root: str, specs, processes: int = 0) -> list[tuple]:
  """(spec, paths, action, detail) for each run on SLURM: submit | refuse | skip."""
  out = []
  for spec in specs:
    p = runs_lib.paths(root, spec.name)
    job = slurm_lib.job_state(p)
    if slurm_lib.active(job):
      out.append((spec, p, "refuse", f"job {job['job_id']} is {job['state'].lower()}"
                  + (f" ({job['reason']})" if job["reason"] not in ("", "None") else "")
                  + f"; see {p.log}"))
    elif runs_lib.finished(p.workdir):
      out.append((spec, p, "skip", "finished (final params saved)"))
    elif processes and data_streams.mismatch(p.workdir, processes):
      out.append((spec, p, "refuse", data_streams.mismatch(p.workdir, processes)))
    elif os.path.exists(os.path.join(p.workdir, "config.json")):
      ckpt = runs_lib.saved_steps(p.workdir, "checkpoints")
      out.append((spec, p, "submit", "resumes from "
                  + (f"checkpoint {ckpt[-1]}" if ckpt else "step 0 (no checkpoint yet)")))
    else:
      out.append((spec, p, "submit", "new run"))
  return out


def launch_slurm(root: str, specs, res: slurm_lib.Resources, *, dry_run: bool = False,
                 extra: tuple = (), run_flags: dict | None = None, wait: bool = False,
                 python: str | None = None, env: dict | None = None, out=print,
                 poll: float = 5.0) -> int:
  """Submits one batch job per run; returns the exit status (1 refused, or with `wait`
  a job that failed)."""
  status, submitted = 0, []
  if not dry_run:
    why = slurm_lib.available()
    if why:
      out(f"launch_study.py: --cluster=slurm: {why}")
      return 1
  for spec, p, action, detail in plan_slurm(root, specs, res.processes):
    if action == "refuse":
      out(f"{spec.name}: refused: {detail}")
      status = 1
      continue
    if action == "skip":
      out(f"{spec.name}: {detail}; not submitted")
      continue
    flags = tuple(extra) + tuple((run_flags or {}).get(spec.name, ()))
    script = slurm_lib.render(spec, p, res, python=python or sys.executable, extra=flags,
                              env=env)
    if dry_run:
      out(f"{spec.name}: would submit ({detail}) {slurm_lib.script_path(p)}:\n{script}")
      continue
    try:
      job_id = slurm_lib.submit(spec, p, script)
    except RuntimeError as e:
      out(f"{spec.name}: {e}")
      status = 1
      continue
    submitted.append(p)
    out(f"{spec.name}: submitted job {job_id} ({detail}); {res.processes} process(es) on "
        f"{res.nodes} node(s); script {slurm_lib.script_path(p)}, log {p.log}")
  if wait and submitted:
    status = max(status, wait_jobs(submitted, out=out, poll=poll))
  return status


def wait_jobs(paths: list, *, out=print, poll: float = 5.0, timeout: float | None = None) -> int:
  """Blocks until every run's job has left the queue for good (requeues included);
  1 when a run's trainer did not end with exit status 0."""
  deadline = None if timeout is None else time.time() + timeout
  while True:
    states = {p.name: slurm_lib.job_state(p) for p in paths}
    if not any(slurm_lib.active(s) for s in states.values()):
      break
    if deadline is not None and time.time() > deadline:
      out("launch_study.py: --wait: timed out")
      return 1
    time.sleep(poll)
  status = 0
  for p in paths:
    code, st = runs_lib.last_exit(p), states[p.name] or {}
    ok = code == 0
    out(f"{p.name}: job {st.get('job_id', '?')} ended: {st.get('state', '?').lower()}, "
        f"trainer exit status {'?' if code is None else code}"
        + (f", requeued {st['restarts']}x" if st.get("restarts") else ""))
    status = status if ok else 1
  return status


def stop_slurm(root: str, specs, out=print) -> int:
  for spec in specs:
    p = runs_lib.paths(root, spec.name)
    st = slurm_lib.job_state(p)
    if not slurm_lib.active(st):
      out(f"{spec.name}: no pending or running job")
      continue
    ok = slurm_lib.stop(p)
    runs_lib.append_history(p, {"event": "stop", "job_id": st["job_id"], "sent": ok})
    out(f"{spec.name}: job {st['job_id']}: "
        + ("USR2 sent: the trainer saves a checkpoint and the job ends (not requeued)"
           if ok and not st["state"].startswith("PENDING") else
           "cancelled while pending" if ok else "scancel failed"))
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
  ap.add_argument("--cluster", default="local", choices=("local", "slurm"),
                  help="local: processes on this host; slurm: one batch job per run")
  sl = ap.add_argument_group("--cluster=slurm")
  sl.add_argument("--nodes", type=int, default=1, help="nodes per run")
  sl.add_argument("--tasks_per_node", type=int, default=1,
                  help="trainer processes per node (1 per node driving all its GPUs, or 1 "
                       "per GPU)")
  sl.add_argument("--gpus_per_node", type=int, default=0, help="GPUs per node (0: none asked)")
  sl.add_argument("--cpus_per_task", type=int, default=0, help="CPUs per process (0: default)")
  sl.add_argument("--time", default="", help="time limit per job, H:MM:SS (requeued at it)")
  sl.add_argument("--partition", default="", help="SLURM partition")
  sl.add_argument("--sbatch_arg", action="append", default=[], metavar="ARG",
                  help="one more #SBATCH line, e.g. --sbatch_arg=--account=abc (repeatable)")
  sl.add_argument("--signal_seconds", type=int, default=120,
                  help="USR1 this long before the time limit: checkpoint, requeue")
  sl.add_argument("--max_requeues", type=int, default=3,
                  help="requeues after a crash (a preemption or time limit always requeues)")
  sl.add_argument("--wait", action="store_true",
                  help="block until the submitted jobs end; exit status 1 if one failed")
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
  if args.cluster == "slurm":
    if args.stop:
      return stop_slurm(args.root, specs)
    if min(args.nodes, args.tasks_per_node) < 1 or args.gpus_per_node < 0:
      return _usage_error("--nodes and --tasks_per_node must be at least 1")
    res = slurm_lib.Resources(nodes=args.nodes, tasks_per_node=args.tasks_per_node,
                              gpus_per_node=args.gpus_per_node,
                              cpus_per_task=args.cpus_per_task, time=args.time,
                              partition=args.partition, signal_seconds=args.signal_seconds,
                              max_requeues=args.max_requeues,
                              sbatch_args=tuple(args.sbatch_arg))
    return launch_slurm(args.root, specs, res, dry_run=args.dry_run, extra=tuple(extra),
                        run_flags=run_flags, wait=args.wait)
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
