"""A run's workdir: the names of what it holds (`LAYOUT`, the one table of them; the
docs print `layout_table()`), one atomic write, one step lister, the trainer's lock.

Standard library only: the study tools that read workdirs import this without JAX.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Callable, Iterator

CONFIG = "config.json"
CONFIG_HISTORY = "config_history"
TOKENIZER = "tokenizer.model"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
FINAL = "final"
UNRESTORABLE = "unrestorable_checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
TRAIN_LOG = "train.log"
DATA_ORDER = "data_order.jsonl"
EVAL = "eval"
LOCK = "trainer.lock"
# Every entry of a workdir, what writes it and when.
LAYOUT = (
    (CONFIG, "the resolved config (JSON; derived num_steps filled in), written once the "
             "first step has run"),
    (CONFIG_HISTORY + "/", "earlier configs of the run, when a change was accepted on resume"),
    (TOKENIZER, "the run's SentencePiece tokenizer"),
    (CHECKPOINTS + "/<step>/", "the newest checkpoint.max_to_keep full states (Orbax): "
                               "state/ (params, optimizer state, step), data/ (the grain "
                               "iterator of each process), meta/ (checksums, fault counters)"),
    (SNAPSHOTS + "/<step>/params/", "params only, every checkpoint.snapshot_every_steps, "
                                    "kept forever"),
    (FINAL + "/<step>/params/", "the params at the end of training"),
    (UNRESTORABLE + "/step_<N>.<UTC>/", "checkpoints that did not restore, moved aside "
                                        "(not steps: nothing reads them)"),
    (METRICS, "one JSON object per written step (append-only)"),
    (TENSORBOARD + "/", "TensorBoard events (scalars, hyperparameters, the sample text)"),
    (TRAIN_LOG, "the progress log: step, loss, lr, tokens/s, MFU, ETA, validation"),
    (DATA_ORDER, "a hash of every step's batch (the data-order record)"),
    (EVAL + "/<step>.json", "the eval command's results"),
    (LOCK, "the trainer that holds the workdir (host, pid, heartbeat), while it runs"),
)


def layout_table() -> str:
  """`LAYOUT` as the docs show it: a Markdown table (docs/training.md; a test keeps the
  page equal to it)."""
  return "\n".join(["| entry | what it holds |", "|---|---|"]
                   + [f"| `DIR/{name}` | {what} |" for name, what in LAYOUT])


# Where params live, in the order `latest` looks (params-only kinds first: cheaper).
PARAMS_KINDS = (FINAL, SNAPSHOTS, CHECKPOINTS)


def steps(workdir: str, kind: str = CHECKPOINTS) -> list[int]:
  """The saved steps of DIR/<kind> (directories named by a step number), ascending."""
  directory = os.path.join(workdir, kind)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes a whole file or nothing: a temporary file, synced, renamed over `path`."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb" if isinstance(data, bytes) else "w",
            **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def ends_with_newline(path: str) -> bool:
  """False for a file whose last line was cut by a crash (appenders add a newline first)."""
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def json_records(path: str) -> Iterator[dict]:
  """The JSON objects of a JSON-lines file, one per line; a line cut short by a crash
  (or anything that is not an object) is skipped."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict):
        yield record


# Errors of a full or failing disk: an appender keeps what it could not write and tries
# again at its next write, instead of taking the run down.
DISK_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EFBIG)


class AppendFile:
  """A file only ever appended to (metrics.jsonl, data_order.jsonl, train.log) that
  survives a full disk or an I/O error.

  `append` writes whole bytes with O_APPEND. What a write could not store (all of it,
  or the tail of a short write) is kept and written first at the next `append` or
  `flush`, so the file ends up byte for byte as if nothing had failed; past
  `max_pending` bytes the oldest pending lines are dropped (counted in `dropped`) and
  the next line starts on a fresh line. `on_error(message)` is called once when
  writing starts to fail and once when it works again. Never raises OSError.
  """

  _os_write = staticmethod(os.write)  # (tests inject a full disk here)

  def __init__(self, path: str, *, max_pending: int = 8 << 20,
               on_error: Callable[[str], None] | None = None):
    self.path, self.max_pending, self.on_error = path, max_pending, on_error
    self.pending = bytearray()
    self.dropped = 0          # lines dropped because they could not be written
    self.errors = 0           # failed writes
    self.failing = False
    self._fd = None
    try:
      self._open()
      if os.path.getsize(path) > 0 and not ends_with_newline(path):
        self.pending += b"\n"  # a line cut by a crash
    except OSError as e:
      self._failed(e)

  def _open(self) -> None:
    if self._fd is None:
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

  def _failed(self, error: OSError) -> None:
    self.errors += 1
    if not self.failing:
      self.failing = True
      if self.on_error:
        self.on_error(f"cannot write {self.path} ({error.strerror or error}); keeping what it "
                      f"could not write in memory and trying again at each write")

  def append(self, data: str | bytes) -> bool:
    """Appends `data` (pending bytes first); True when everything is on disk."""
    self.pending += data.encode("utf-8") if isinstance(data, str) else data
    return self.flush()

  def flush(self) -> bool:
    while self.pending:
      try:
        self._open()
        n = self._os_write(self._fd, bytes(self.pending))
      except OSError as e:
        self._failed(e)
        self._trim()
        return False
      del self.pending[:n]
      if n == 0:
        self._failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        self._trim()
        return False
    if self.failing:
      self.failing = False
      if self.on_error:
        self.on_error(f"writing {self.path} again ({self.dropped} line(s) dropped meanwhile)")
    return True

  def _trim(self) -> None:
    """Drops the oldest pending lines past max_pending."""
    if len(self.pending) <= self.max_pending:
      return
    cut = self.pending.find(b"\n", len(self.pending) - self.max_pending)
    cut = len(self.pending) if cut < 0 else cut + 1
    self.dropped += self.pending[:cut].count(b"\n")
    del self.pending[:cut]
    self.pending[:0] = b"\n"  # whatever part of a dropped line is on disk ends here

  def close(self) -> bool:
    ok = self.flush()
    if self._fd is not None:
      try:
        os.close(self._fd)
      except OSError:
        ok = False
      self._fd = None
    return ok


# ----------------------------------------------------------------------------
# One workdir, one trainer: DIR/trainer.lock.
# ----------------------------------------------------------------------------

# The holder touches the lock (its heartbeat) every LOCK_HEARTBEAT_S seconds; a lock of
# another host whose heartbeat is older than LOCK_STALE_S is stale (its trainer is gone).
LOCK_HEARTBEAT_S = 15.0
LOCK_STALE_S = 120.0


class WorkdirLocked(Exception):
  """Another trainer holds the workdir (the message names it and how to take over)."""


def _host() -> str:
  import socket  # pylint: disable=import-outside-toplevel
  return socket.gethostname()


def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (tells a reused pid apart); None when unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  now = _process_start(pid)
  return start is None or now is None or now == start


def read_lock(workdir: str) -> dict | None:
  """The lock's record, with "beat": the newest of its heartbeat field and the file's
  modification time (the holder touches the file to beat)."""
  path = os.path.join(workdir, LOCK)
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    record["beat"] = max(float(record.get("heartbeat", 0)), os.stat(path).st_mtime)
    return record
  except (OSError, ValueError, TypeError, AttributeError):
    return None


def lock_is_stale(holder: dict, now: float | None = None, stale_s: float = LOCK_STALE_S
                  ) -> str | None:
  """Why the lock `holder` describes is stale (its trainer is gone), or None while it
  may still be running: on this host, its pid is gone (or is another process now); on
  another host, its heartbeat is older than `stale_s` seconds."""
  import time  # pylint: disable=import-outside-toplevel
  now = time.time() if now is None else now
  age = now - float(holder.get("beat", holder.get("heartbeat", 0)))
  if holder.get("host") == _host():
    if not _pid_alive(int(holder.get("pid", 0)), holder.get("pid_start")):
      return f"process {holder.get('pid')} on this host is gone"
    return None
  if age > stale_s:
    return f"its heartbeat is {age:.0f} s old (more than {stale_s:.0f} s)"
  return None


class WorkdirLock:
  """Held by the trainer for its lifetime: DIR/trainer.lock, a JSON file with the
  holder's host, pid and start time, whose modification time a daemon thread
  refreshes every LOCK_HEARTBEAT_S seconds (the heartbeat). A second trainer is refused (WorkdirLocked)
  unless the lock is stale (`lock_is_stale`) or `take_over` is set. The heartbeat
  thread notices when another trainer took the lock over (`lost`)."""

  def __init__(self, workdir: str, *, take_over: bool = False, stale_s: float = LOCK_STALE_S,
               heartbeat_s: float | None = None, command: str = ""):
    import time  # pylint: disable=import-outside-toplevel
    import uuid  # pylint: disable=import-outside-toplevel
    self.workdir, self.path = workdir, os.path.join(workdir, LOCK)
    self.take_over, self.stale_s = take_over, stale_s
    self.heartbeat_s = LOCK_HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    now = time.time()
    self.record = {"host": _host(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                   "started": now, "heartbeat": now, "token": uuid.uuid4().hex,
                   "command": command}
    self.lost: dict | None = None   # the record of a trainer that took the lock over
    self.replaced: tuple | None = None  # (holder, why) of a stale lock this one replaced
    self._stop = None
    self._thread = None

  def describe(self, holder: dict) -> str:
    import time  # pylint: disable=import-outside-toplevel
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("started", 0))))
    age = time.time() - float(holder.get("beat", holder.get("heartbeat", 0)))
    return (f"pid {holder.get('pid')} on host {holder.get('host')} (started {started}, "
            f"heartbeat {age:.0f} s ago)")

  def check(self) -> None:
    """Refuses (WorkdirLocked) when a live trainer holds the workdir; writes nothing
    (the first check of a run, before its config is compared)."""
    holder = read_lock(self.workdir)
    if holder is not None and not self.take_over and lock_is_stale(
        holder, stale_s=self.stale_s) is None:
      raise WorkdirLocked(self._refusal(holder))

  def _refusal(self, holder: dict) -> str:
    return (f"--workdir={self.workdir} is in use by another trainer: {self.describe(holder)} "
            f"(lock {self.path}). Wait for it or stop it; if it is gone (e.g. a job killed "
            f"on another host), rerun with --take_over_lock (a lock of this host whose "
            f"process is gone, or of another host silent for {self.stale_s:.0f} s, is "
            f"taken over automatically).")

  def acquire(self) -> None:
    """Takes the lock, creating the workdir if needed; WorkdirLocked when another live
    trainer holds it. A new workdir made here and refused is not left behind."""
    os.makedirs(self.workdir, exist_ok=True)
    data = json.dumps(self.record, sort_keys=True) + "\n"
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        holder = read_lock(self.workdir)
        if holder is None:  # being written, or garbage: look again, then replace it
          import time  # pylint: disable=import-outside-toplevel
          time.sleep(0.2)
          holder = read_lock(self.workdir) or {"host": "?", "pid": 0, "heartbeat": 0}
        why = "--take_over_lock was given" if self.take_over else lock_is_stale(holder, stale_s=self.stale_s)
        if why is None:
          raise WorkdirLocked(self._refusal(holder))
        self._write(data)
        if (read_lock(self.workdir) or {}).get("token") != self.record["token"]:
          continue  # another trainer replaced it at the same moment: look again
        self.replaced = (holder, why)
        break
      else:
        try:
          os.write(fd, data.encode())
          os.fsync(fd)
        finally:
          os.close(fd)
        break
    else:
      holder = read_lock(self.workdir) or {}
      raise WorkdirLocked(f"--workdir={self.workdir} is being taken by another trainer "
                          f"({self.describe(holder)}); try again.")
    self._start_heartbeat()

  def _write(self, data: str) -> None:
    atomic_write(self.path, data)

  def _start_heartbeat(self) -> None:
    import threading  # pylint: disable=import-outside-toplevel
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    # The beat touches the file (its mtime) and never rewrites it: a trainer taking the
    # lock over replaces the file, and a beat racing with that cannot undo it.
    while not self._stop.wait(self.heartbeat_s):
      holder = read_lock(self.workdir)
      if holder is not None and holder.get("token") != self.record["token"]:
        self.lost = holder
        return
      try:
        os.utime(self.path)
      except OSError:
        pass  # gone or unreachable for a moment: the next beat tries again

  def release(self) -> None:
    if self._stop is not None:
      self._stop.set()
      self._thread.join(timeout=5)
      self._stop = None
    holder = read_lock(self.workdir)
    if holder is not None and holder.get("token") == self.record["token"]:
      try:
        os.remove(self.path)
      except OSError:
        pass
