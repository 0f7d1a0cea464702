"""Training speed: device peak FLOP/s (a table by device kind, or a CPU estimate) and
the throughput meter behind the log line's tokens/s, step time, TFLOP/s and MFU."""

from __future__ import annotations

import os
import re
import time
from typing import Any


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
