"""Out-of-memory pre-flight: does the train step fit on the device, before step 1?

The trainer builds its state and its train step, then calls `preflight` once. It
compiles the step ahead of time on the run's real shardings (`lower(...).compile()`
of the jitted shard_map step: the same executable the first step runs, which jit's
cache then reuses), reads XLA's memory analysis of it and compares

  needed    = arguments + outputs + temporaries + generated code - aliased (donated state)
  available = train.memory_limit_bytes when > 0, else the device's `bytes_limit`
              (GPU, TPU), else on CPU the host's available memory / local devices

all per device (every device runs the same SPMD program). A step that does not fit
stops the run with a `ConfigError` (main: exit status 2) before anything of the run
is trained or written, naming the bytes and a setting that fits: the largest
`train.micro_batch_per_device` whose step fits (the accumulation then grows, so
`train.global_batch_size` and the trajectory stay the same), found by compiling the
step at the smaller micro-batches; or, when even micro-batch 1 does not fit,
`model.remat=True` (each block's activations recomputed in the backward pass).

`measure_table` is what `python -m mambaswelu_jax.cli.summary --config=... --memory` prints.

Imports jax, flax, numpy and ml_collections; the trainer's step builders are imported
when first needed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mambaswelu_jax import steps
from mambaswelu_jax.training import state as train_state
from mambaswelu_jax.config_validation import ConfigError
from mambaswelu_jax.mesh import make_mesh

log = logging.getLogger("mambaswelu_jax.training.memory_check")


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """XLA's memory analysis of one compiled train step, in bytes per device."""
  micro_batch: int
  accum: int
  remat: bool
  argument: int        # inputs: the state (params, AdamW moments), the batch, the model handle
  output: int          # the new state and the metrics
  alias: int           # outputs written into donated inputs (the state): counted once
  temp: int            # activations kept for the backward pass, gradients, workspace
  code: int = 0        # generated code held in device memory (GPU)
  compile_s: float = 0.0

  @property
  def total(self) -> int:
    return self.argument + self.output - self.alias + self.temp + self.code


def fmt_bytes(n: float) -> str:
  """'1.50 GiB' style (binary units)."""
  for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{int(n)} B"


def _both(n: int) -> str:
  return f"{int(n):,} bytes" + (f" ({fmt_bytes(n)})" if n >= 1024 else "")


def memory_of(compiled, micro_batch: int, accum: int, remat: bool,
              compile_s: float = 0.0) -> StepMemory:
  """StepMemory from `jax.jit(...).lower(...).compile()`'s `memory_analysis()`."""
  ma = compiled.memory_analysis()
  if ma is None:
    raise RuntimeError("this backend reports no memory analysis for compiled programs")
  get = lambda name: int(getattr(ma, name, 0) or 0)
  return StepMemory(micro_batch=micro_batch, accum=accum, remat=remat,
                    argument=get("argument_size_in_bytes"),
                    output=get("output_size_in_bytes"), alias=get("alias_size_in_bytes"),
                    temp=get("temp_size_in_bytes"),
                    code=get("generated_code_size_in_bytes"), compile_s=compile_s)


# ----------------------------------------------------------------------------
# Available memory.
# ----------------------------------------------------------------------------


def _host_available_bytes() -> int:
  """The host's available memory: /proc/meminfo MemAvailable, else sysconf."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return 0


def available_bytes(devices: Iterable, limit: int = 0) -> tuple[int, str]:
  """(bytes per device, where the figure comes from) for this process's `devices`.

  `limit` > 0 (train.memory_limit_bytes) wins; else the smallest `bytes_limit` the
  devices report; else (CPU) the host's available memory shared among the devices.
  Every process of a multi-process run gets the smallest figure of all of them, so
  they all take the same decision. 0 means unknown."""
  devices = list(devices)
  if limit and limit > 0:
    figure, source = int(limit), "train.memory_limit_bytes"
  else:
    limits = []
    for d in devices:
      try:
        stats = d.memory_stats()
      except Exception:  # pylint: disable=broad-except
        stats = None
      if stats and stats.get("bytes_limit"):
        limits.append(int(stats["bytes_limit"]))
    if limits:
      figure, source = min(limits), f"{devices[0].platform} bytes_limit"
    else:
      host = _host_available_bytes()
      figure = host // max(1, len(devices))
      source = (f"host MemAvailable {fmt_bytes(host)} / {len(devices)} device(s)"
                if host else "unknown")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    everyone = np.asarray(multihost_utils.process_allgather(np.asarray([figure], np.int64)))
    known = everyone[everyone > 0]
    figure = int(known.min()) if known.size else 0
  return figure, source


# ----------------------------------------------------------------------------
# Compiling the step.
# ----------------------------------------------------------------------------


def micro_batch_choices(global_batch: int, num_devices: int) -> list[int]:
  """Micro-batches per device that split `global_batch` over the devices, largest first."""
  per_device = global_batch // num_devices
  return [m for m in range(per_device, 0, -1) if per_device % m == 0]


def _specs(mesh: Mesh, global_batch: int, seq_len: int):
  """The batch and lr_scale arguments of the step as sharded shapes."""
  batch = NamedSharding(mesh, P(mesh.axis_names[0]))
  spec = jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=batch)
  lr = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  return {"inputs": spec, "targets": spec}, lr


def compile_step(jitted: Callable, state: Any, handle: Any, mesh: Mesh, global_batch: int,
                 seq_len: int):
  """(compiled, seconds): `jitted` (steps.make_train_step(...).jitted) compiled for the
  run's batch. `state` and `handle` may hold arrays or sharded ShapeDtypeStructs."""
  batch, lr = _specs(mesh, global_batch, seq_len)
  t0 = time.perf_counter()
  compiled = jitted.lower(state, handle, batch, lr).compile()
  return compiled, time.perf_counter() - t0


def _with_remat(config: ml_collections.ConfigDict, remat: bool) -> ml_collections.ConfigDict:
  if bool(config.model.remat) == remat:
    return config
  new = ml_collections.ConfigDict(config.to_dict())
  new.model.remat = remat
  return new


def _graphdef(config: ml_collections.ConfigDict) -> Any:
  """The model's static graph for `config` (nothing allocated)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.registry import abstract_model  # pylint: disable=import-outside-toplevel
  return nnx.split(abstract_model(config.model), nnx.Param, ...)[0]


def measure(config: ml_collections.ConfigDict, mesh: Mesh, parts: Any, state: Any,
            handle: Any, micro_batch: int, remat: bool | None = None) -> StepMemory:
  """Compiles the train step at `micro_batch` per device (accumulation keeping
  train.global_batch_size) and, when given, `remat`; returns its memory."""
  remat = bool(config.model.remat) if remat is None else remat
  g, n = int(config.train.global_batch_size), mesh.devices.size
  accum = g // (micro_batch * n)
  if remat != bool(config.model.remat):
    handle = handle.replace(graphdef=_graphdef(_with_remat(config, remat)))
  step = steps.make_train_step(mesh, parts, accum)
  compiled, seconds = compile_step(step.jitted, state, handle, mesh, g,
                                   int(config.data.seq_len))
  return memory_of(compiled, micro_batch, accum, remat, seconds)


def abstract_state(config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Any, Any, Any]:
  """(parts, state, handle) of `training.state.create_train_state` as sharded shapes:
  nothing is allocated, so the study model is measured on a laptop."""
  box = {}

  def build():
    parts, state, handle = train_state.create_train_state(config, mesh)
    box["parts"] = parts
    return state, handle

  state, handle = jax.eval_shape(build)
  replicated = NamedSharding(mesh, P())
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
  return box["parts"], jax.tree.map(spec, state), jax.tree.map(spec, handle)


# ----------------------------------------------------------------------------
# The trainer's pre-flight.
# ----------------------------------------------------------------------------


def _suggestion(config, mesh, parts, state, handle, needed: StepMemory, available: int,
                source: str) -> str:
  """The refusal: bytes needed and available, and a setting that fits (compiled to check)."""
  t = config.train
  g, n, m = int(t.global_batch_size), mesh.devices.size, int(t.micro_batch_per_device)
  remat = bool(config.model.remat)
  head = (f"the train step needs {_both(needed.total)} per device (arguments "
          f"{fmt_bytes(needed.argument)} + outputs {fmt_bytes(needed.output)} - donated "
          f"{fmt_bytes(needed.alias)} + temporaries {fmt_bytes(needed.temp)}"
          + (f" + code {fmt_bytes(needed.code)}" if needed.code else "")
          + f") at train.micro_batch_per_device={m} (accumulation {needed.accum})"
          + (" with model.remat=True" if remat else "")
          + f", but {_both(available)} are available ({source}).")
  tried = [f"micro-batch {m}{' remat' if remat else ''}: {fmt_bytes(needed.total)}"]

  def fits(micro, with_remat):
    mem = measure(config, mesh, parts, state, handle, micro, with_remat)
    tried.append(f"micro-batch {micro}{' remat' if with_remat else ''}: "
                 f"{fmt_bytes(mem.total)}")
    log.info("memory pre-flight: micro-batch %d%s (accumulation %d) needs %s (compiled in "
             "%.1f s)", micro, " with remat" if with_remat else "", mem.accum,
             fmt_bytes(mem.total), mem.compile_s)
    return mem if mem.total <= available else None

  smaller = [c for c in micro_batch_choices(g, n) if c < m]
  for micro in smaller:
    mem = fits(micro, remat)
    if mem is not None:
      return (f"{head} Micro-batch {micro} fits ({_both(mem.total)}, accumulation "
              f"{mem.accum}, global_batch_size {g} unchanged): rerun with "
              f"--config.train.micro_batch_per_device={micro}.")
  if not remat:
    for micro in [c for c in micro_batch_choices(g, n) if c <= m]:
      mem = fits(micro, True)
      if mem is not None:
        flags = "--config.model.remat=True"
        if micro != m:
          flags += f" --config.train.micro_batch_per_device={micro}"
        return (f"{head} Even micro-batch 1 does not fit without rematerialisation; "
                f"recomputing each block's activations in the backward pass fits at "
                f"micro-batch {micro} ({_both(mem.total)}, accumulation {mem.accum}, "
                f"global_batch_size {g} unchanged; one more forward pass of the blocks "
                f"per step): rerun with {flags}.")
  return (f"{head} No micro-batch fits, with or without model.remat ("
          f"{'; '.join(tried)}): the state alone takes {fmt_bytes(needed.argument)}. "
          f"Use a device with more memory, a shorter data.seq_len or a smaller model "
          f"(or set train.memory_limit_bytes / --config.train.memory_check=False if the "
          f"available figure is wrong).")


def preflight(config: ml_collections.ConfigDict, mesh: Mesh, parts: Any, state: Any,
              handle: Any, step_fn: Callable) -> StepMemory | None:
  """The trainer's one call, after the state and `step_fn` (steps.make_train_step) are
  built and before step 1. Compiles `step_fn` for the run's batch (the first step then
  reuses the executable), logs its memory, and raises ConfigError with a setting that
  fits when it does not. Returns the measurement (None when train.memory_check is off
  or the backend reports no memory analysis)."""
  t = config.train
  if not t.memory_check:
    return None
  remat = bool(config.model.remat)
  accum = int(t.global_batch_size) // (int(t.micro_batch_per_device) * mesh.devices.size)
  compiled, seconds = compile_step(step_fn.jitted, state, handle, mesh,
                                   int(t.global_batch_size), int(config.data.seq_len))
  try:
    needed = memory_of(compiled, int(t.micro_batch_per_device), accum, remat, seconds)
  except (RuntimeError, NotImplementedError) as e:  # the backend reports none
    log.warning("memory pre-flight skipped: %s", e)
    return None
  available, source = available_bytes(mesh.local_devices, int(t.memory_limit_bytes))
  if not available:
    log.warning("memory pre-flight: the train step needs %s per device; the available "
                "memory is unknown (set train.memory_limit_bytes to check it)",
                fmt_bytes(needed.total))
    return needed
  log.info("memory pre-flight: the train step needs %s per device (temporaries %s) of %s "
           "available (%s); compiled in %.1f s", fmt_bytes(needed.total),
           fmt_bytes(needed.temp), fmt_bytes(available), source, needed.compile_s)
  if needed.total > available:
    raise ConfigError(_suggestion(config, mesh, parts, state, handle, needed, available,
                                  source))
  return needed


# ----------------------------------------------------------------------------
# The summary's table.
# ----------------------------------------------------------------------------


def measure_table(config: ml_collections.ConfigDict, devices: list | None = None,
                  remat: Iterable[bool] = (False, True),
                  micro_batches: Iterable[int] | None = None) -> list[str]:
  """Lines of a table: the compiled per-device memory of the train step for each
  micro-batch (default: the configured one and every smaller one the pre-flight would
  try) and remat setting, on this backend, against the available memory."""
  from mambaswelu_jax import config_validation  # pylint: disable=import-outside-toplevel
  devices = list(jax.devices() if devices is None else devices)
  config = config_validation.resolve(config, num_devices=len(devices),
                                     process_count=jax.process_count())
  mesh = make_mesh(devices)
  t = config.train
  g, n = int(t.global_batch_size), len(devices)
  if micro_batches is None:
    micro_batches = [c for c in micro_batch_choices(g, n) if c <= int(t.micro_batch_per_device)]
  available, source = available_bytes(mesh.local_devices, int(t.memory_limit_bytes))
  parts, state, handle = abstract_state(config, mesh)
  lines = [f"train step memory per device on {n} {devices[0].platform} device(s) "
           f"({devices[0].device_kind}), global batch {g} x {config.data.seq_len} tokens; "
           f"available {fmt_bytes(available)} ({source})",
           f"  {'micro':>5} {'accum':>5} {'remat':>5} {'arguments':>11} {'outputs':>11} "
           f"{'donated':>11} {'temp':>11} {'total':>11} {'fits':>4} {'compile':>8}"]
  for with_remat in remat:
    for micro in micro_batches:
      mem = measure(config, mesh, parts, state, handle, int(micro), bool(with_remat))
      fits = "?" if not available else ("yes" if mem.total <= available else "no")
      lines.append(
          f"  {mem.micro_batch:>5} {mem.accum:>5} {'on' if mem.remat else 'off':>5} "
          f"{fmt_bytes(mem.argument):>11} {fmt_bytes(mem.output):>11} "
          f"{fmt_bytes(mem.alias):>11} {fmt_bytes(mem.temp):>11} "
          f"{fmt_bytes(mem.total):>11} {fits:>4} {mem.compile_s:>7.1f}s")
  lines.append("total = arguments + outputs - donated + temporaries (+ generated code); "
               "configured: micro-batch "
               f"{t.micro_batch_per_device}, remat {bool(config.model.remat)}")
  return lines
