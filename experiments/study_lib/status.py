"""What the monitor knows about a run: liveness, progress, loss, health.

`run_status(root, name)` reads only files (metrics.jsonl, config.json, checkpoint
directories, pid files) and /proc, so it works on any machine that sees the study
root, with or without GPUs, while the runs write.

Health verdicts (`RunStatus.state`):
  running     the process lives and its metrics moved recently
  stalled     the process lives but nothing was written for `stall_seconds`
  diverging   the loss is non-finite, or its recent mean sits `divergence_nats` above
              the best recent mean seen so far (a spike that does not come back down)
  dead        no live process, the run not finished (crashed, killed, or stopped)
  pending     a SLURM job waiting in the queue (the note gives SLURM's reason)
  failed      its SLURM job failed (the note gives the exit code and requeue count)
  done        final params saved at the last step
  not started never launched: no workdir, or one without metrics or config.json, and
              no pid file (`reason` says which)
`problem` is True for dead, failed, diverging and stalled (the monitor exits 1); a run not
started is no problem but not healthy either (the monitor exits 3 when no run is a
problem and one has not started).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

from mambaswelu_jax.metrics import read_jsonl
from study_lib import runs as runs_lib
from study_lib import slurm as slurm_lib

# metrics.jsonl writes +-inf as +-1e308 and NaN as null.
_BIG = 1e300


def finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and abs(x) < _BIG


def read_metrics(workdir: str) -> list[dict]:
  """The run's metrics.jsonl records as its current history (mambaswelu_jax.metrics,
  which imports no JAX); [] before the run wrote any."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return read_jsonl(path)


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
  """Exponential moving average, skipping non-finite values (they keep the last mean)."""
  out, m = [], None
  for v in values:
    if finite(v):
      m = v if m is None else (1 - alpha) * m + alpha * v
    out.append(m if m is not None else float("nan"))
  return out


def divergence(losses: list[Any], window: int = 5, nats: float = 1.0) -> str | None:
  """Why a train-loss series looks divergent, or None.

  Non-finite last value; or the mean of the last `window` values more than `nats`
  above the lowest mean of any earlier window (a rise that has not come back).
  """
  if not losses:
    return None
  last = losses[-1]
  if not finite(last):
    return f"last train loss is {last!r} (non-finite)"
  vals = [v for v in losses if finite(v)]
  if len(vals) < 2 * window:
    return None
  means = [sum(vals[i:i + window]) / window for i in range(len(vals) - window + 1)]
  recent, best = means[-1], min(means[:-window] or means[:1])
  if recent > best + nats:
    return (f"train loss rose: mean of last {window} records {recent:.3f} vs best "
            f"{best:.3f} (> +{nats:g} nats)")
  return None


@dataclasses.dataclass
class RunStatus:
  name: str
  state: str = "not started"
  pid: int | None = None
  exit_code: int | None = None
  step: int | None = None
  total: int | None = None
  loss: float | None = None
  loss_smoothed: float | None = None
  tokens_per_second: float | None = None
  eta_seconds: float | None = None
  checkpoint_step: int | None = None
  checkpoint_age: float | None = None
  validation_perplexity: float | None = None
  validation_step: int | None = None
  skipped: dict = dataclasses.field(default_factory=dict)
  nonfinite: int = 0
  reason: str = ""
  metrics_age: float | None = None
  devices: str | None = None
  restarts: int = 0
  scheduler: dict | None = None   # the SLURM job (slurm.job_state) when the run is a job

  @property
  def percent(self) -> float | None:
    if self.step is None or not self.total:
      return None
    return 100.0 * self.step / self.total

  @property
  def problem(self) -> bool:
    return self.state in ("dead", "diverging", "stalled", "failed")


def run_status(root: str, name: str, *, now: float | None = None, stall_seconds: float = 1800,
               window: int = 5, divergence_nats: float = 1.0) -> RunStatus:
  now = time.time() if now is None else now
  p = runs_lib.paths(root, name)
  st = RunStatus(name)
  wd = p.workdir
  info = runs_lib.read_pidfile(p)
  st.devices = (info or {}).get("devices")
  st.restarts = max(0, sum(1 for e in runs_lib.read_history(p)
                           if e.get("event") in ("start", "restart")) - 1)
  st.pid = runs_lib.running_pid(p)
  st.exit_code = runs_lib.last_exit(p)
  st.total = runs_lib.num_steps(wd)

  records = read_metrics(wd)
  losses = [r.get("train_loss") for r in records if "train_loss" in r]
  st.nonfinite = sum(1 for v in losses if not finite(v))
  if records:
    st.step = int(records[-1].get("step", 0))
    try:
      st.metrics_age = now - os.path.getmtime(os.path.join(wd, "metrics.jsonl"))
    except OSError:
      pass
  if losses:
    st.loss = losses[-1] if finite(losses[-1]) else float("nan")
    sm = ema(losses)
    st.loss_smoothed = sm[-1]
  train_recs = [r for r in records if "tokens_per_second" in r]
  if train_recs:
    tps = train_recs[-1].get("tokens_per_second")
    st.tokens_per_second = tps if finite(tps) else None
    step_time = train_recs[-1].get("step_time")
    if st.total and st.step is not None and finite(step_time):
      st.eta_seconds = max(0, st.total - st.step) * step_time
  vals = [r for r in records if finite(r.get("validation_perplexity"))]
  if vals:
    st.validation_perplexity = vals[-1]["validation_perplexity"]
    st.validation_step = int(vals[-1]["step"])
  for r in records:  # the latest value of every skipped-* counter
    for k, v in r.items():
      if "skipped" in k and isinstance(v, (int, float)):
        st.skipped[k] = v
  ckpts = runs_lib.saved_steps(wd, "checkpoints")
  if ckpts:
    st.checkpoint_step = ckpts[-1]
    try:
      st.checkpoint_age = now - os.path.getmtime(os.path.join(wd, "checkpoints", str(ckpts[-1])))
    except OSError:
      pass

  # --- The verdict.
  why = divergence(losses, window, divergence_nats)
  if runs_lib.finished(wd):
    st.state = "done"
  elif why:
    st.state, st.reason = "diverging", why
  elif st.pid is not None:
    started = (info or {}).get("started") or now
    last_write = now - st.metrics_age if st.metrics_age is not None else started
    quiet = now - max(started, last_write)
    if quiet > stall_seconds:
      st.state, st.reason = "stalled", f"no metrics for {_fmt_age(quiet)}"
    else:
      st.state = "running"
      if not records:  # still compiling, or reading its first batches
        st.reason = f"launched {_fmt_age(now - started)} ago, no metrics yet"
  elif info is not None or records or os.path.exists(os.path.join(wd, "config.json")):
    st.state = "dead"
    st.reason = (f"exit status {st.exit_code}" if st.exit_code is not None
                 else "process gone (no exit status recorded)")
    if st.exit_code == 143:
      st.reason += " (stopped by SIGTERM after a checkpoint; relaunch to resume)"
  else:
    st.reason = (f"workdir {wd} holds no metrics or config.json yet" if os.path.isdir(wd)
                 else f"no workdir {wd}")
  if os.path.exists(slurm_lib.job_path(p)):
    _scheduler_verdict(st, slurm_lib.job_state(p), now, stall_seconds)
  return st


_JOB_FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED")


def _scheduler_verdict(st: RunStatus, job: dict, now: float, stall_seconds: float) -> None:
  """A run submitted to SLURM: pending (with SLURM's reason), running (on which nodes),
  requeued (how often), failed (exit code): the scheduler's word over the pid's."""
  st.scheduler = job
  st.restarts = job["restarts"]
  state = job["state"].split("+")[0]
  requeued = f"; requeued {job['restarts']}x" if job["restarts"] else ""
  if st.state in ("done", "diverging"):
    return
  if state == "PENDING":
    st.state = "pending"
    st.reason = f"job {job['job_id']} pending ({job['reason']}){requeued}"
  elif state in ("RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "REQUEUED"):
    quiet = st.metrics_age
    if state == "RUNNING" and quiet is not None and quiet > stall_seconds:
      st.state = "stalled"
      st.reason = f"job {job['job_id']} on {job['nodes']}: no metrics for {_fmt_age(quiet)}"
    else:
      st.state = "running"
      st.reason = f"job {job['job_id']} {state.lower()} on {job['nodes']}{requeued}"
  elif state in _JOB_FAILED or (job["exit"] not in (None, 0) and job["exit"] != 143):
    st.state = "failed"
    st.reason = (f"job {job['job_id']} {state.lower()}, exit code {job['exit_code'] or '?'}"
                 + (f", trainer exit status {job['exit']}" if job["exit"] is not None else "")
                 + requeued + "; see the log, then launch again to resume")
  else:  # COMPLETED, or forgotten by SLURM, and the run not finished: stopped on request
    st.state = "dead"
    st.reason = (f"job {job['job_id']} ended ({state.lower()}), trainer exit status "
                 f"{job['exit']}{requeued}; launch again to resume")


def _fmt_age(seconds: float | None) -> str:
  if seconds is None or not math.isfinite(seconds):
    return "-"
  seconds = int(seconds)
  if seconds < 120:
    return f"{seconds}s"
  if seconds < 7200:
    return f"{seconds // 60}m"
  if seconds < 172800:
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
  return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"


fmt_age = _fmt_age
