"""The study's runs on disk and as processes: specs, workdirs, pid files, liveness.

Layout under a study root::

  ROOT/<run>/               the run's workdir (mambaswelu_jax.main --workdir)
  ROOT/logs/<run>.log       its console output (appended across restarts)
  ROOT/pids/<run>.json      the running process: pid, command, devices, start time
  ROOT/pids/<run>.exit      exit status of the last process that ended
  ROOT/pids/<run>.history   one JSON line per launch (start, restart, stop)

A run's process is a shell (`sh -c 'python -m mambaswelu_jax.main ...; echo $? > exit'`)
in its own session (setsid), so it outlives the launching terminal and its exit status
is recorded. A pid is trusted only while `/proc/<pid>/cmdline` still names the run's
workdir, so a recycled pid never reads as a live run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the study: a config file (and argument), overrides, a role."""
  name: str
  config: str                   # path relative to the repository root
  arg: str = ""                 # the config argument (configs/x.py:arg)
  overrides: tuple = ()         # ("--config.a.b=v", ...)
  role: str = ""                # general_long | general_short | specific_long
  label: str = ""               # what the run stands for, for the report

  def config_flag(self) -> str:
    return f"--config={self.config}" + (f":{self.arg}" if self.arg else "")


# The real study (study-plan.md): SlimPajama 100x and 20x tokens per parameter,
# Wikipedia 100x, each on a pair of GPUs.
STUDY = (
    RunSpec("slimpajama_llama", "configs/slimpajama_llama.py", role="general_long",
            label="SlimPajama, 100 tokens/parameter"),
    RunSpec("slimpajama_chinchilla", "configs/slimpajama_chinchilla.py", role="general_short",
            label="SlimPajama, 20 tokens/parameter"),
    RunSpec("wikipedia_llama", "configs/wikipedia_llama.py", role="specific_long",
            label="Wikipedia, 100 tokens/parameter"),
)
DEFAULT_DEVICES = "0,1:2,3:4,5"

# The toy study (configs/toy_study.py): the same three roles on the embedded corpus.
TOY = (
    RunSpec("toy_mixture_long", "configs/toy_study.py", "mixture_long", role="general_long",
            label="docstrings+code, 10 tokens/parameter (stands for SlimPajama LLaMA)"),
    RunSpec("toy_mixture_short", "configs/toy_study.py", "mixture_short", role="general_short",
            label="docstrings+code, 2 tokens/parameter (stands for SlimPajama Chinchilla)"),
    RunSpec("toy_single_long", "configs/toy_study.py", "single_long", role="specific_long",
            label="docstrings only, 10 tokens/parameter (stands for Wikipedia LLaMA)"),
)
SCALES = {"full": STUDY, "toy": TOY}


def select(specs, names: str | list | None):
  """The specs named in `names` (comma-separated or list), in study order."""
  if not names:
    return list(specs)
  wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)
            if n.strip()]
  known = {s.name: s for s in specs}
  unknown = [n for n in wanted if n not in known]
  if unknown:
    raise SystemExit(f"unknown run(s) {unknown}; this study has {list(known)}")
  return [s for s in specs if s.name in wanted]


def parse_devices(text: str, n: int) -> list[str | None]:
  """'0,1:2,3:4,5' -> ['0,1', '2,3', '4,5']; '' or 'none' -> no pinning (CPU)."""
  text = (text or "").strip()
  if text.lower() in ("", "none", "cpu"):
    return [None] * n
  groups = [g.strip() for g in text.split(":")]
  if len(groups) != n:
    raise SystemExit(f"--devices={text!r} gives {len(groups)} device group(s) for {n} run(s); "
                     f"use one group per run, separated by ':' (e.g. {DEFAULT_DEVICES})")
  for g in groups:
    if not all(p.strip().isdigit() for p in g.split(",")):
      raise SystemExit(f"--devices: {g!r} is not a comma-separated list of GPU indices")
  return groups


# ----------------------------------------------------------------------------
# Paths.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Paths:
  root: str
  name: str

  @property
  def workdir(self) -> str:
    return os.path.join(self.root, self.name)

  @property
  def log(self) -> str:
    return os.path.join(self.root, "logs", f"{self.name}.log")

  @property
  def pidfile(self) -> str:
    return os.path.join(self.root, "pids", f"{self.name}.json")

  @property
  def exitfile(self) -> str:
    return os.path.join(self.root, "pids", f"{self.name}.exit")

  @property
  def history(self) -> str:
    return os.path.join(self.root, "pids", f"{self.name}.history")


def paths(root: str, name: str) -> Paths:
  return Paths(os.path.abspath(os.path.expanduser(root)), name)


# ----------------------------------------------------------------------------
# Processes.
# ----------------------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
  except OSError:
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  # A zombie (exited, not yet reaped by its parent) is not a live run.
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


def read_pidfile(p: Paths) -> dict | None:
  try:
    with open(p.pidfile, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def running_pid(p: Paths) -> int | None:
  """The pid of the run's live process, or None.

  The pid file's pid counts only while its command line still names the workdir;
  failing that, any process whose command line trains this workdir (a run started
  by hand, or a pid file lost) is found by a scan of /proc.
  """
  info = read_pidfile(p)
  flag = f"--workdir={p.workdir}"
  if info and isinstance(info.get("pid"), int):
    cmd = _cmdline(info["pid"])
    for _ in range(40):  # empty while the process is still inside exec(): wait for it
      if cmd or not _alive(info["pid"]):
        break
      time.sleep(0.05)
      cmd = _cmdline(info["pid"])
    if cmd is not None and flag in cmd and _alive(info["pid"]):
      return info["pid"]
  return find_process(flag)


def find_process(flag: str) -> int | None:
  """A live process (not this one) whose command line contains `flag` as a whole word."""
  me = os.getpid()
  try:
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
  except OSError:
    return None
  for pid in sorted(pids):
    if pid == me:
      continue
    cmd = _cmdline(pid)
    if cmd and "mambaswelu_jax.main" in cmd and any(
        w == flag or w.rstrip("';") == flag for w in cmd.split()) and _alive(pid):
      return pid
  return None


def last_exit(p: Paths) -> int | None:
  try:
    with open(p.exitfile, encoding="utf-8") as f:
      return int(f.read().strip())
  except (OSError, ValueError):
    return None


def append_history(p: Paths, event: dict) -> None:
  os.makedirs(os.path.dirname(p.history), exist_ok=True)
  with open(p.history, "a", encoding="utf-8") as f:
    f.write(json.dumps({"time": time.time(), **event}) + "\n")


def read_history(p: Paths) -> list[dict]:
  out = []
  try:
    with open(p.history, encoding="utf-8") as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except ValueError:
          pass
  except OSError:
    pass
  return out


def train_command(spec: RunSpec, p: Paths, python: str | None = None,
                  extra: tuple = ()) -> list[str]:
  return [python or sys.executable, "-m", "mambaswelu_jax.main", spec.config_flag(),
          f"--workdir={p.workdir}", *spec.overrides, *extra]


def shell_line(cmd: list[str], p: Paths) -> str:
  """The detached shell's script: run, then record the exit status."""
  return f"{shlex.join(cmd)}; echo $? > {shlex.quote(p.exitfile)}"


def start(spec: RunSpec, p: Paths, devices: str | None, *, env_extra: dict | None = None,
          python: str | None = None, extra: tuple = ()) -> int:
  """Starts the run detached (own session, stdin closed, output appended to its log).

  Returns the pid. The caller checks that it is not already running.
  """
  os.makedirs(os.path.dirname(p.log), exist_ok=True)
  os.makedirs(os.path.dirname(p.pidfile), exist_ok=True)
  cmd = train_command(spec, p, python, extra)
  env = dict(os.environ)
  if devices is not None:
    env["CUDA_VISIBLE_DEVICES"] = devices
  env.update(env_extra or {})
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  try:
    os.remove(p.exitfile)
  except OSError:
    pass
  with open(p.log, "ab") as log:
    log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} launch: "
              f"{('CUDA_VISIBLE_DEVICES=' + devices + ' ') if devices else ''}"
              f"{shlex.join(cmd)}\n".encode())
    log.flush()
    proc = subprocess.Popen(["/bin/sh", "-c", shell_line(cmd, p)], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, close_fds=True)
  info = {"pid": proc.pid, "command": cmd, "devices": devices, "started": time.time(),
          "host": os.uname().nodename, "log": p.log}
  tmp = p.pidfile + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  os.replace(tmp, p.pidfile)
  return proc.pid


def stop(p: Paths, timeout: float = 120.0) -> bool:
  """SIGTERM to the run's process group (the trainer saves a checkpoint and exits 143)."""
  pid = running_pid(p)
  if pid is None:
    return False
  try:
    os.killpg(os.getpgid(pid), signal.SIGTERM)
  except (ProcessLookupError, PermissionError):
    os.kill(pid, signal.SIGTERM)
  end = time.time() + timeout
  while time.time() < end and _alive(pid):
    time.sleep(0.5)
  return not _alive(pid)


# ----------------------------------------------------------------------------
# A run's state on disk.
# ----------------------------------------------------------------------------


def load_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def saved_steps(workdir: str, kind: str) -> list[int]:
  d = os.path.join(workdir, kind)
  try:
    return sorted(int(s) for s in os.listdir(d)
                  if s.isdigit() and os.path.isdir(os.path.join(d, s)))
  except OSError:
    return []


def num_steps(workdir: str) -> int | None:
  cfg = load_json(os.path.join(workdir, "config.json"))
  try:
    return int(cfg["train"]["num_steps"]) or None
  except (TypeError, KeyError, ValueError):
    return None


def finished(workdir: str) -> bool:
  """The run saved its final params at its last step."""
  total = num_steps(workdir)
  final = saved_steps(workdir, "final")
  return bool(final) and (total is None or final[-1] >= total)
