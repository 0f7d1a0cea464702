"""The study's runs as SLURM batch jobs: generated sbatch scripts, submission, job state.

Layout under a study root (beside runs.py's)::

  ROOT/slurm/<run>.sbatch   the job script (readable; `sbatch ROOT/slurm/<run>.sbatch`
                            resubmits it by hand)
  ROOT/slurm/<run>.json     the job: id, submission time, script, command
  ROOT/logs/<run>.log       every process's output, appended across requeues
  ROOT/pids/<run>.exit      the trainer's exit status when the job ended for good
  ROOT/pids/<run>.history   one JSON line per submission, requeue and end

The script runs the trainer on every task with `srun` (`main --distributed`: JAX finds
the other processes from SLURM's environment) and keeps the run alive across
preemption and time limits:

  SLURM's warning before the time limit (`--signal=B:USR1@SECONDS`), a preemption or
  `scontrol requeue` (SIGTERM to the job): every trainer process gets SIGTERM, saves a
  checkpoint of the current step (a synchronised decision across processes) and exits
  143; the script then requeues the job (`scontrol requeue`), which resumes from that
  checkpoint, until the run is finished.
  A process that dies (a node lost, SIGKILL): `srun --kill-on-bad-exit` ends the other
  processes instead of leaving them blocked in a collective; the job is requeued (at
  most `max_requeues` times for crashes) and resumes from the newest checkpoint that
  restores.
  A refusal (exit status 2: bad config or data; 3: write error; 4: divergence) is not
  retried; neither is `launch_study.py --stop` (USR2 to the script: checkpoint, end).

Plain sbatch scripts, not submitit: the job must stay resubmittable and readable by
someone who knows only SLURM, the trainer is a command line (not a pickled Python
callable; the project has no pickle), and the signal/requeue logic is the dozen shell
lines below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import time

from study_lib import runs as runs_lib

# Trainer exit statuses that mean "refused or broken, do not retry" (mambaswelu_jax.main).
NO_RETRY = (2, 3, 4)


@dataclasses.dataclass(frozen=True)
class Resources:
  nodes: int = 1
  tasks_per_node: int = 1        # one trainer process per task (per GPU, or per node)
  gpus_per_node: int = 0
  cpus_per_task: int = 0
  time: str = ""                 # H:MM:SS or D-HH:MM:SS ("" = the partition's default)
  partition: str = ""
  signal_seconds: int = 120      # USR1 this long before the time limit: checkpoint, requeue
  max_requeues: int = 3          # requeues after a crash (signals always requeue)
  sbatch_args: tuple = ()        # more "#SBATCH" lines, e.g. ("--account=abc",)

  @property
  def processes(self) -> int:
    return self.nodes * self.tasks_per_node


def script_path(p: runs_lib.Paths) -> str:
  return os.path.join(p.root, "slurm", f"{p.name}.sbatch")


def job_path(p: runs_lib.Paths) -> str:
  return os.path.join(p.root, "slurm", f"{p.name}.json")


def available() -> str | None:
  """None when sbatch/squeue/scontrol are on PATH, else why not."""
  missing = [c for c in ("sbatch", "squeue", "scontrol", "scancel") if not shutil.which(c)]
  return f"{', '.join(missing)} not found: is this a SLURM login node?" if missing else None


def render(spec: runs_lib.RunSpec, p: runs_lib.Paths, res: Resources, *,
           python: str, extra: tuple = (), env: dict | None = None) -> str:
  """The batch script of one run (bash)."""
  cmd = runs_lib.train_command(spec, p, python, tuple(extra) + ("--distributed",))
  q = shlex.quote
  lines = [
      "#!/bin/bash",
      f"# Run {spec.name} of the mambaswelu_jax study ({spec.label or spec.config_flag()}).",
      "# Written by experiments/launch_study.py --cluster=slurm; resubmit with",
      f"#   sbatch {script_path(p)}",
      f"#SBATCH --job-name={spec.name}",
      f"#SBATCH --output={p.log}",
      "#SBATCH --open-mode=append",
      f"#SBATCH --nodes={res.nodes}",
      f"#SBATCH --ntasks-per-node={res.tasks_per_node}",
  ]
  if res.gpus_per_node:
    lines.append(f"#SBATCH --gpus-per-node={res.gpus_per_node}")
  if res.cpus_per_task:
    lines.append(f"#SBATCH --cpus-per-task={res.cpus_per_task}")
  if res.time:
    lines.append(f"#SBATCH --time={res.time}")
  if res.partition:
    lines.append(f"#SBATCH --partition={res.partition}")
  lines += ["#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{int(res.signal_seconds)}"]
  lines += [f"#SBATCH {a}" for a in res.sbatch_args]
  history, exitfile = q(p.history), q(p.exitfile)
  lines += [
      "",
      "set -u",
      f"cd {q(runs_lib.REPO)}",
      f"export PYTHONPATH={q(runs_lib.REPO)}${{PYTHONPATH:+:$PYTHONPATH}}",
      *(f"export {k}={q(str(v))}" for k, v in sorted((env or {}).items())),
      f"MAX_REQUEUES={int(res.max_requeues)}",
      "RESTART=${SLURM_RESTART_COUNT:-0}",
      f"mkdir -p {q(os.path.dirname(p.history))}",
      "note() {  # one JSON line in the run's history, one line in its log",
      "  echo \"==== $(date '+%F %T') job $SLURM_JOB_ID restart $RESTART: $2\"",
      f"  printf '{{\"time\": %s, \"event\": \"%s\", \"job_id\": \"%s\", \"restart\": %s, "
      f"\"detail\": \"%s\"}}\\n' \"$(date +%s)\" \"$1\" \"$SLURM_JOB_ID\" \"$RESTART\" \"$2\" "
      f">> {history}",
      "}",
      "note start \"${SLURM_JOB_NUM_NODES:-1} node(s) ${SLURM_JOB_NODELIST:-?}, "
      "${SLURM_NTASKS:-1} process(es)\"",
      "job_state() { scontrol show job -o \"$SLURM_JOB_ID\" 2>/dev/null | tr ' ' '\\n' "
      "| sed -n 's/^JobState=//p'; }",
      "STOP=0",
      "to_trainer() {  # SIGTERM to every trainer process (not this script): they save, exit 143",
      "  note signal \"$1: SIGTERM to the trainer processes (checkpoint of the current step)\"",
      "  scancel --signal=TERM \"$SLURM_JOB_ID\" 2>/dev/null",
      "}",
      "trap 'to_trainer \"time limit near (USR1)\"' USR1",
      "trap 'STOP=1; to_trainer \"stop requested (USR2)\"' USR2",
      "trap 'to_trainer \"SIGTERM (preempted, requeued or cancelled)\"' TERM",
      f"srun --kill-on-bad-exit=1 {shlex.join(cmd)} &",
      "PID=$!",
      "while :; do wait \"$PID\"; RC=$?; kill -0 \"$PID\" 2>/dev/null || break; done",
      "wait \"$PID\" 2>/dev/null; R2=$?; [ \"$R2\" != 127 ] && RC=$R2",
      "if [ \"$RC\" = 0 ]; then",
      "  note end \"trainer exit status 0: finished\"",
      "elif [ \"$STOP\" = 1 ]; then",
      "  note end \"trainer exit status $RC: stopped on request; launch again to resume\"",
      f"elif [ \"$RC\" = {NO_RETRY[0]} ] || [ \"$RC\" = {NO_RETRY[1]} ] "
      f"|| [ \"$RC\" = {NO_RETRY[2]} ]; then",
      "  note end \"trainer exit status $RC: refused or failed; not requeued (see the log)\"",
      "elif [ \"$(job_state)\" = CANCELLED ]; then",
      "  note end \"trainer exit status $RC: job cancelled; not requeued\"",
      "elif [ \"$RC\" = 143 ] || [ \"$RC\" = 130 ] || [ \"$RESTART\" -lt \"$MAX_REQUEUES\" ]; then",
      "  note requeue \"trainer exit status $RC: requeued; resumes from the newest checkpoint\"",
      "  trap - TERM USR1 USR2",
      "  scontrol requeue \"$SLURM_JOB_ID\" 2>/dev/null",
      "  exit \"$RC\"",
      "else",
      "  note end \"trainer exit status $RC: failed after $RESTART requeue(s); not requeued\"",
      "fi",
      f"echo \"$RC\" > {exitfile}",
      "exit \"$RC\"",
  ]
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Jobs.
# ----------------------------------------------------------------------------


def read_job(p: runs_lib.Paths) -> dict | None:
  return runs_lib.load_json(job_path(p))


def submit(spec, p: runs_lib.Paths, script: str) -> str:
  """Writes the script, submits it; returns the job id (raises RuntimeError on failure)."""
  os.makedirs(os.path.dirname(script_path(p)), exist_ok=True)
  os.makedirs(os.path.dirname(p.log), exist_ok=True)
  with open(script_path(p), "w", encoding="utf-8") as f:
    f.write(script)
  os.chmod(script_path(p), 0o755)
  try:
    os.remove(p.exitfile)
  except OSError:
    pass
  r = subprocess.run(["sbatch", "--parsable", script_path(p)], capture_output=True, text=True,
                     check=False)
  if r.returncode != 0:
    raise RuntimeError(f"sbatch failed: {(r.stderr or r.stdout).strip()}")
  job_id = r.stdout.strip().split(";")[0]
  info = {"job_id": job_id, "submitted": time.time(), "script": script_path(p),
          "workdir": p.workdir, "log": p.log}
  tmp = job_path(p) + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  os.replace(tmp, job_path(p))
  runs_lib.append_history(p, {"event": "submit", "job_id": job_id, "script": script_path(p)})
  return job_id


def job_fields(job_id: str) -> dict | None:
  """`scontrol show job` as a dict (JobState, Reason, NodeList, Restarts, ExitCode, ...),
  or None once SLURM has forgotten the job (MinJobAge after it ended)."""
  try:
    r = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True,
                       text=True, timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  if r.returncode != 0 or "JobId=" not in r.stdout:
    return None
  out = {}
  for word in r.stdout.split():
    k, sep, v = word.partition("=")
    if sep and k not in out:
      out[k] = v
  return out


ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")


def job_state(p: runs_lib.Paths) -> dict | None:
  """The run's newest job as SLURM reports it: {job_id, state, reason, nodes, restarts,
  exit_code}, or None when no job was submitted. state "UNKNOWN" once SLURM forgot it."""
  info = read_job(p)
  if not info:
    return None
  f = job_fields(info["job_id"]) or {}
  restarts = f.get("Restarts")
  requeues = sum(1 for e in runs_lib.read_history(p)
                 if e.get("event") == "requeue" and str(e.get("job_id")) == str(info["job_id"]))
  return {"job_id": info["job_id"], "state": f.get("JobState", "UNKNOWN"),
          "reason": f.get("Reason", ""), "nodes": f.get("NodeList", ""),
          "restarts": int(restarts) if restarts and restarts.isdigit() else requeues,
          "exit_code": f.get("ExitCode", ""), "exit": runs_lib.last_exit(p)}


def active(state: dict | None) -> bool:
  return bool(state) and state["state"].split("+")[0] in ACTIVE


def stop(p: runs_lib.Paths) -> bool:
  """USR2 to the job's script: the trainer saves the current step and the job ends
  without requeueing. False when the run has no live job."""
  st = job_state(p)
  if not active(st):
    return False
  if st["state"].startswith("PENDING"):
    subprocess.run(["scancel", st["job_id"]], check=False)
    return True
  r = subprocess.run(["scancel", "--batch", "--signal=USR2", st["job_id"]], check=False,
                     capture_output=True, text=True)
  return r.returncode == 0
