"""Where a run's numbers go: CLU writers (TensorBoard + logging), DIR/metrics.jsonl
and a readable DIR/train.log (the meter and peak FLOP/s are `training.throughput`).

`metrics.jsonl` holds one JSON object per written step, `{"step": N, name: value}`,
with the same names as the TensorBoard scalars, so tools read it without TensorFlow.
CLU (and through it TensorFlow) is imported only when a writer is created.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import sys
import time
from typing import Any, Mapping

from mambaswelu_jax import workdir as layout

log = logging.getLogger("mambaswelu_jax.metrics")

def _jsonable(value: Any) -> Any:
  try:
    value = float(value) if not isinstance(value, (int, str, bool)) else value
  except (TypeError, ValueError):
    return str(value)
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
  return value


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The step records of a metrics.jsonl file, as the run's current history (no
  TensorFlow needed).

  The file is only ever appended to. A resumed run first appends a marker
  `{"resumed_from_step": N}`; the records after it replace those past step N that an
  earlier attempt wrote after its last checkpoint (still in the file, not returned).
  A line cut short by a crash is skipped.
  """
  out: list[dict[str, Any]] = []
  for record in layout.json_records(path):
    if "step" in record:
      out.append(record)
    elif "resumed_from_step" in record:
      n = int(record["resumed_from_step"])
      out = [r for r in out if r["step"] <= n]
  return out


class MetricsWriter:
  """Writes scalars to CLU (TensorBoard + logging) and to metrics.jsonl.

  Only the process that `is_main` writes files; every process logs. metrics.jsonl
  is only appended to: a run resumed at `resume_step` appends a marker that tells
  `read_jsonl` to read the records past that step from here on.

  A full disk or an I/O error never stops the run: metrics.jsonl keeps the records it
  could not write and writes them when it can (`workdir.AppendFile`); a TensorBoard
  write or flush that fails drops those events, closes the event file and opens a new
  one at the next write after `tensorboard_retry_s` seconds. One warning says when
  writing starts failing and one when it works again; `write_errors` counts them.
  """

  def __init__(self, workdir: str, *, is_main: bool = True, resume_step: int = 0,
               tensorboard: bool = True, tensorboard_retry_s: float = 60.0):
    self.is_main = is_main
    self.path = os.path.join(workdir, layout.METRICS)
    self.write_errors = 0
    self._tb = None
    self._tb_dir = os.path.join(workdir, layout.TENSORBOARD) if (tensorboard and is_main) else None
    self._tb_retry_s, self._tb_failed_at = tensorboard_retry_s, None
    self._log_writer = None
    if is_main:
      existing = os.path.exists(self.path) and os.path.getsize(self.path) > 0
      self._jsonl = layout.AppendFile(self.path, on_error=self._warn)
      if existing:
        self._jsonl.append(json.dumps({"resumed_from_step": int(resume_step)}) + "\n")
    else:
      self._jsonl = None
    # CLU (and TensorFlow under it: seconds to import) is loaded at the first write, not
    # here: a run stopped before its first log line does not wait for it.
    self._clu_wanted = tensorboard
    self._hparams = None

  def _warn(self, message: str) -> None:
    log.warning("metrics: %s", message)

  def _open_tensorboard(self) -> None:
    if self._clu_wanted and self._log_writer is None:
      from clu import metric_writers  # pylint: disable=import-outside-toplevel
      self._log_writer = metric_writers.LoggingWriter()
    if self._tb_dir is None or self._tb is not None:
      return
    if self._tb_failed_at is not None and time.monotonic() - self._tb_failed_at < self._tb_retry_s:
      return
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
    try:
      self._tb = metric_writers.SummaryWriter(self._tb_dir)
    except Exception as e:  # pylint: disable=broad-except
      self._tensorboard_failed(e)
      return
    if self._tb_failed_at is not None:
      self._tb_failed_at = None
      self._warn(f"writing TensorBoard events to {self._tb_dir} again")
    if self._hparams is not None:
      hparams, self._hparams = self._hparams, None
      self._tensorboard("write_hparams", hparams)

  def _tensorboard_failed(self, error: Exception) -> None:
    self.write_errors += 1
    if self._tb_failed_at is None:
      self._warn(f"cannot write TensorBoard events to {self._tb_dir} "
                 f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                 f"dropping them and trying a new event file every "
                 f"{self._tb_retry_s:.0f} s")
    self._tb_failed_at = time.monotonic()
    tb, self._tb = self._tb, None
    if tb is not None:
      try:
        tb.close()
      except Exception:  # pylint: disable=broad-except
        pass

  def _tensorboard(self, method: str, *args) -> None:
    self._open_tensorboard()
    if self._tb is None:
      return
    try:
      getattr(self._tb, method)(*args)
    except Exception as e:  # pylint: disable=broad-except
      self._tensorboard_failed(e)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {k: _jsonable(v) for k, v in scalars.items()}
    numbers = {k: (v if v is not None else float("nan"))
               for k, v in scalars.items() if not isinstance(v, str)}
    self._open_tensorboard()
    if self._log_writer is not None:
      self._log_writer.write_scalars(step, numbers)
    self._tensorboard("write_scalars", step, numbers)
    self._tensorboard("flush")
    if self._jsonl is not None:
      self._jsonl.append(json.dumps({"step": int(step), **scalars}) + "\n")

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Written with the first scalars (when TensorBoard's writer opens)."""
    if self._tb_dir is not None:
      self._hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                       for k, v in hparams.items()}

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    self._open_tensorboard()
    if self._log_writer is not None:
      self._log_writer.write_texts(step, dict(texts))
    self._tensorboard("write_texts", step, dict(texts))

  def flush(self) -> None:
    if self._tb is not None:
      self._tensorboard("flush")
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tensorboard("close")
      self._tb = None
    self._tb_dir = None
    if self._jsonl is not None:
      if not self._jsonl.close():
        log.warning("metrics: %d byte(s) of %s could not be written before the end (full "
                    "disk?); the checkpoints are not affected", len(self._jsonl.pending),
                    self.path)
      self._jsonl = None


class _AppendLogHandler(logging.Handler):
  """DIR/train.log through `workdir.AppendFile`: a line it cannot write is kept and
  written later (or dropped past a limit), never a "Logging error" traceback."""

  def __init__(self, path: str):
    super().__init__()
    self.file = layout.AppendFile(path, on_error=self._say)

  @staticmethod
  def _say(message: str) -> None:
    # Not through logging: this handler is one of its targets.
    print(f"warning: train.log: {message}", file=sys.stderr, flush=True)

  def emit(self, record):
    try:
      self.file.append(self.format(record) + "\n")
    except Exception:  # pylint: disable=broad-except  (formatting errors: drop the line)
      pass

  def close(self):
    self.file.close()
    super().close()


def add_train_log(workdir: str, is_main: bool = True) -> logging.Handler | None:
  """Collects the `mambaswelu_jax` loggers' records (INFO and up) for DIR/train.log.

  They are held in memory until `start_train_log` opens the file (appending) and
  writes them; a run that never starts (it fails before its first step) writes none.
  """
  if not is_main:
    return None
  handler = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1,
                                           target=None, flushOnClose=True)
  handler.setLevel(logging.INFO)
  logger = logging.getLogger("mambaswelu_jax")
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  return handler


def start_train_log(handler: logging.Handler | None, workdir: str) -> None:
  """Opens DIR/train.log (append), writes the held records; later ones go straight there."""
  if handler is None or handler.target is not None:
    return
  target = _AppendLogHandler(os.path.join(workdir, layout.TRAIN_LOG))
  target.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s",
                                        datefmt="%Y-%m-%d %H:%M:%S"))
  handler.setTarget(target)
  handler.capacity = 1
  handler.flush()


def remove_train_log(handler: logging.Handler | None) -> None:
  if handler is not None:
    logging.getLogger("mambaswelu_jax").removeHandler(handler)
    if handler.target is None:
      handler.buffer.clear()  # never started: nothing to write
    handler.close()
    if handler.target is not None:
      handler.target.close()
