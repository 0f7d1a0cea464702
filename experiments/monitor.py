r"""One table for the study's runs, and an exit status a cron job or CI can act on.

  python experiments/monitor.py --root=runs [--watch=10] [--json]

Per run: state (running / stalled / diverging / dead / done / not started), step of
total and percent, train loss (last and smoothed), tokens/s, ETA, the newest full
checkpoint and its age, the last validation perplexity, non-finite loss records and
skipped-data / skipped-update counters. Then per GPU utilisation and memory when
`nvidia-smi` exists (a CPU machine gets the load average instead).

Runs are those of the study (`--scale`) plus any other workdir under ROOT (or those
named in `--runs`). A run is "not started" while its workdir does not exist, or holds
no metrics or config.json and no launch of it is recorded (ROOT/pids); the notes under
the table say which.

Exit status (the first that applies):
  1  a run needs attention: dead, diverging or stalled (the table says why)
  3  no run needs attention, but some have not started (`--runs` limits the check to
     the runs you launched)
  0  every run is running or done ("all runs healthy")
  2  bad command line (argparse)
With --watch, the table redraws every N seconds until Ctrl-C; the exit status is
that of the last table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

from study_lib import runs as runs_lib
from study_lib import status as status_lib


EXIT_HEALTHY, EXIT_PROBLEM, EXIT_NOT_STARTED = 0, 1, 3


def exit_status(statuses) -> int:
  """1 when a run needs attention, else 3 when one has not started, else 0."""
  if any(s.problem for s in statuses):
    return EXIT_PROBLEM
  if any(s.state == "not started" for s in statuses):
    return EXIT_NOT_STARTED
  return EXIT_HEALTHY


def verdict(statuses) -> str:
  """The table's last line(s): what needs attention, what has not started, or all well."""
  bad = [s.name for s in statuses if s.problem]
  idle = [s.name for s in statuses if s.state == "not started"]
  lines = []
  if bad:
    lines.append(f"{len(bad)} run(s) need attention: {', '.join(bad)}")
  if idle:
    lines.append(f"{len(idle)} of {len(statuses)} run(s) not started: {', '.join(idle)}")
  return "\n".join(lines) or "all runs healthy"


def run_names(root: str, scale: str, names: str = "") -> list[str]:
  if names:
    return [n.strip() for n in names.split(",") if n.strip()]
  out = [s.name for s in runs_lib.SCALES[scale]]
  root = os.path.abspath(root)
  try:
    for d in sorted(os.listdir(root)):
      if d not in out and os.path.exists(os.path.join(root, d, "config.json")):
        out.append(d)
  except OSError:
    pass
  if scale == "full" and not any(os.path.isdir(os.path.join(root, n)) for n in out):
    toy = [s.name for s in runs_lib.TOY]
    if any(os.path.isdir(os.path.join(root, n)) for n in toy):
      out = toy + [n for n in out if n not in toy and n not in
                   [s.name for s in runs_lib.STUDY]]
  return out


def gpu_table() -> list[dict] | None:
  """nvidia-smi's view of the GPUs, or None when there is no nvidia-smi."""
  exe = shutil.which("nvidia-smi")
  if not exe:
    return None
  try:
    out = subprocess.run([exe, "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=15, check=True).stdout
  except (OSError, subprocess.SubprocessError) as e:
    return [{"error": f"nvidia-smi failed: {e}"}]
  rows = []
  for line in out.strip().splitlines():
    parts = [x.strip() for x in line.split(",")]
    if len(parts) == 5:
      rows.append({"index": parts[0], "name": parts[1], "util": parts[2],
                   "mem_used": parts[3], "mem_total": parts[4]})
  return rows


def _f(x, fmt, dash="-"):
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return dash
  return format(x, fmt)


def _eta(seconds):
  if seconds is None:
    return "-"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def format_table(statuses, gpus, root: str) -> str:
  head = ["run", "state", "step/total", "%", "loss", "smooth", "tok/s", "ETA", "ckpt (age)",
          "val ppl @step", "nonfinite", "skipped"]
  rows = []
  for s in statuses:
    skipped = ", ".join(f"{k.replace('skipped_', '')} {v:g}" for k, v in sorted(s.skipped.items()))
    state = s.state + (f" (pid {s.pid})" if s.pid else "")
    rows.append([s.name, state,
                 f"{_f(s.step, 'd')}/{_f(s.total, 'd')}", _f(s.percent, ".1f"),
                 _f(s.loss, ".4f"), _f(s.loss_smoothed, ".4f"), _f(s.tokens_per_second, ",.0f"),
                 _eta(s.eta_seconds) if s.state in ("running", "stalled") else "-",
                 (f"{s.checkpoint_step} ({status_lib.fmt_age(s.checkpoint_age)})"
                  if s.checkpoint_step is not None else "-"),
                 (f"{s.validation_perplexity:.2f} @{s.validation_step}"
                  if s.validation_perplexity is not None else "-"),
                 str(s.nonfinite), skipped or "-"])
  widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(head)]
  missing = "" if os.path.isdir(root) else " (no such directory)"
  lines = [f"study {os.path.abspath(root)}{missing}  {time.strftime('%Y-%m-%d %H:%M:%S')}",
           "  ".join(h.ljust(w) for h, w in zip(head, widths)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  notes = [f"  {s.name}: {s.state}: {s.reason}" for s in statuses if s.reason]
  restarts = [f"  {s.name}: restarted {s.restarts}x" for s in statuses if s.restarts]
  if notes or restarts:
    lines += [""] + notes + restarts
  lines.append("")
  if gpus is None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines.append("GPUs: nvidia-smi not found (CPU machine)"
                 + (f"; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
                    f"{os.cpu_count()} CPUs" if load else ""))
  else:
    lines.append("GPU  name                      util%  memory used / total (MiB)")
    for g in gpus:
      if "error" in g:
        lines.append(f"  {g['error']}")
      else:
        lines.append(f"{g['index']:<4} {g['name'][:25]:<25} {g['util']:>5}  "
                     f"{g['mem_used']} / {g['mem_total']}")
  lines.append(verdict(statuses))
  return "\n".join(lines)


def snapshot(args) -> tuple[str, int, list]:
  names = run_names(args.root, args.scale, args.runs)
  statuses = [status_lib.run_status(args.root, n, stall_seconds=args.stall_minutes * 60,
                                    window=args.window, divergence_nats=args.divergence_nats)
              for n in names]
  gpus = gpu_table()
  code = exit_status(statuses)
  if args.json:
    doc = {"root": os.path.abspath(args.root), "time": time.time(), "exit_status": code,
           "summary": verdict(statuses), "gpus": gpus,
           "runs": [{**s.__dict__, "percent": s.percent, "problem": s.problem}
                    for s in statuses]}
    return json.dumps(doc, indent=1, default=str), code, statuses
  return format_table(statuses, gpus, args.root), code, statuses


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=__doc__.split("\n\n", 1)[1])
  ap.add_argument("--root", default="runs")
  ap.add_argument("--scale", default="full", choices=sorted(runs_lib.SCALES))
  ap.add_argument("--runs", default="", help="comma-separated run names (default: the study's "
                  "plus any workdir under ROOT)")
  ap.add_argument("--watch", type=float, default=0, help="redraw every N seconds")
  ap.add_argument("--json", action="store_true", help="machine-readable output")
  ap.add_argument("--stall_minutes", type=float, default=30,
                  help="a live run that wrote no metrics for this long is 'stalled'")
  ap.add_argument("--divergence_nats", type=float, default=1.0,
                  help="rise of the recent mean train loss over its best that means divergence")
  ap.add_argument("--window", type=int, default=5, help="records per mean in the divergence test")
  args = ap.parse_args(argv)
  if not args.watch:
    text, code, _ = snapshot(args)
    print(text)
    return code
  code = 0
  try:
    while True:
      text, code, _ = snapshot(args)
      sys.stdout.write("\033[2J\033[H" + text + f"\n(every {args.watch:g} s; Ctrl-C to quit)\n")
      sys.stdout.flush()
      time.sleep(args.watch)
  except KeyboardInterrupt:
    pass
  return code


if __name__ == "__main__":
  sys.exit(main())
