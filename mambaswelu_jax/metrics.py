"""Where a run's numbers go: CLU writers (TensorBoard + logging), DIR/metrics.jsonl
and a readable DIR/train.log; plus device peak FLOP/s for MFU.

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
import re
import time
from typing import Any, Mapping

from mambaswelu_jax import workdir as layout

# Dense bf16 peak TFLOP/s per device, by a substring of `jax.Device.device_kind`
# (lower case). First match wins, so the more specific names come first.
_PEAK_TFLOPS = (
    ("h200", 989.0),
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("gh200", 989.0),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("l4", 121.0),
    ("a10g", 125.0),
    ("v100", 125.0),
    ("t4", 65.0),
    ("tpu v6", 918.0),
    ("tpu v5p", 459.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5", 459.0),
    ("tpu v4", 275.0),
    ("tpu v3", 123.0),
)


def _cpu_peak_tflops(num_local_devices: int) -> float:
  """A rough host estimate: cores x clock x 32 fp32 FLOP/cycle (two AVX2 FMA units)."""
  cores = os.cpu_count() or 1
  ghz = 2.5
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", f.read())]
    if mhz:
      ghz = max(mhz) / 1000.0
  except OSError:
    pass
  return cores * ghz * 32.0 / 1000.0 / max(1, num_local_devices)


def peak_tflops(device: Any, num_local_devices: int = 1, override: float = 0.0) -> tuple[float, str]:
  """(peak TFLOP/s of one device, where the number came from)."""
  if override and override > 0:
    return float(override), "train.peak_tflops_per_device"
  kind = str(getattr(device, "device_kind", "")).lower()
  for name, value in _PEAK_TFLOPS:
    if name in kind:
      return value, f"device kind '{kind}'"
  if getattr(device, "platform", "") == "cpu":
    return _cpu_peak_tflops(num_local_devices), "CPU estimate (cores x clock x 32 FLOP/cycle)"
  return float("nan"), f"unknown device kind '{kind}'; set train.peak_tflops_per_device"


class ThroughputMeter:
  """Tokens/s, step time, TFLOP/s per device and MFU over the steps since the last
  log line, not counting evaluation and checkpoint time (`pause`)."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, num_devices: int,
               peak_tflops: float):
    self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
    self.num_devices, self.peak = num_devices, peak_tflops
    self.restart()

  def restart(self) -> None:
    self.start, self.steps, self.paused = time.perf_counter(), 0, 0.0

  def count_step(self) -> None:
    self.steps += 1

  def pause(self, seconds: float) -> None:
    self.paused += seconds

  def scalars(self, step: int) -> dict:
    elapsed = time.perf_counter() - self.start - self.paused
    if self.steps > 0 and elapsed > 0:
      step_time = elapsed / self.steps
      tps = self.tokens_per_step / step_time
    else:
      step_time, tps = float("nan"), float("nan")
    tflops = tps * self.flops_per_token / self.num_devices / 1e12
    return {"tokens_per_second": tps, "step_time": step_time, "tflops_per_device": tflops,
            "mfu": tflops / self.peak if self.peak and self.peak > 0 else float("nan"),
            "tokens_seen": float(step * self.tokens_per_step)}


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
  """

  def __init__(self, workdir: str, *, is_main: bool = True, resume_step: int = 0,
               tensorboard: bool = True):
    self.is_main = is_main
    self.path = os.path.join(workdir, layout.METRICS)
    self._clu = None
    if is_main:
      existing = os.path.exists(self.path) and os.path.getsize(self.path) > 0
      torn = existing and not layout.ends_with_newline(self.path)  # a line cut by a crash
      self._jsonl = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
      if torn:
        self._jsonl.write("\n")
      if existing:
        self._jsonl.write(json.dumps({"resumed_from_step": int(resume_step)}) + "\n")
        self._jsonl.flush()
    else:
      self._jsonl = None
    if tensorboard:
      from clu import metric_writers  # pylint: disable=import-outside-toplevel
      self._clu = metric_writers.create_default_writer(
          os.path.join(workdir, layout.TENSORBOARD), just_logging=not is_main, asynchronous=True)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {k: _jsonable(v) for k, v in scalars.items()}
    if self._clu is not None:
      self._clu.write_scalars(step, {k: (v if v is not None else float("nan"))
                                     for k, v in scalars.items() if not isinstance(v, str)})
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
      self._jsonl.flush()

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self._clu is not None:
      self._clu.write_hparams({k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                               for k, v in hparams.items()})

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    if self._clu is not None:
      self._clu.write_texts(step, dict(texts))

  def flush(self) -> None:
    if self._clu is not None:
      self._clu.flush()
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    if self._clu is not None:
      self._clu.close()
      self._clu = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None


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
  target = logging.FileHandler(os.path.join(workdir, layout.TRAIN_LOG), encoding="utf-8")
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
