"""The training loop: `train_and_evaluate(config, workdir)`.

Setup (checks, data, model, pre-flight, resume: `_setup`), then one loop over the
steps with the periodic work named: log, evaluate, checkpoint, snapshot, stop on a
signal; then the final params and a text sample. The pieces live beside it: the train
state and optimizer (`training.state`), the step functions (`steps`), the fault-tolerance
policy that owns the checkpoints (`training.fault_tolerance`), the throughput meter
(`training.throughput`), the metrics writers (`metrics`), the validation figures
(`evaluation`, the eval tool's code), the data-order log (`data.order`), the mesh
(`mesh`).

Nothing is written before the config, the workdir, the data and (on resume) the
checkpoints' shapes are checked; the run's config, log and metrics are written once
its first step has run, so a run that fails before that leaves its workdir as it
found it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from mambaswelu_jax import config_validation
from mambaswelu_jax import evaluation
from mambaswelu_jax import metrics as metrics_lib
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.checkpointing import data_streams
from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax.checkpointing import run_config
from mambaswelu_jax.data import run_data as data_lib
from mambaswelu_jax.data.order import DataOrderLog
from mambaswelu_jax.mesh import make_mesh, split_batch, to_global
from mambaswelu_jax.models import swelu_scalars
from mambaswelu_jax.models.flops import flops_per_token
from mambaswelu_jax.models.handle import ModelHandle
from mambaswelu_jax.models.registry import max_positions
from mambaswelu_jax.sampling import sample_text
from mambaswelu_jax.steps import make_eval_step, make_train_step
from mambaswelu_jax.training import memory_check
from mambaswelu_jax.training import run_summary
from mambaswelu_jax.training import throughput
from mambaswelu_jax.training.workdir_start import WorkdirStart
from mambaswelu_jax.training.fault_tolerance import FaultPolicy, TrainingStopped
from mambaswelu_jax.training.state import ModelParts, abstract_train_state, create_train_state
from mambaswelu_jax.training.state import make_schedule
from mambaswelu_jax.training.stop_signals import StopSignals, signal_name

log = logging.getLogger("mambaswelu_jax.training.train")

# Exit status of `main` when SIGTERM stopped the run after saving a checkpoint
# (the status a shell reports for a process ended by SIGTERM: schedulers treat it
# as a preemption, and rerunning the same command resumes). Ctrl-C gives 130.
PREEMPTED_EXIT_CODE = 143
# Exit status when another trainer took the workdir over (--take_over_lock) while this
# one ran: it stops at once, writing nothing more.
LOCK_LOST_EXIT_CODE = 5
# Train steps dispatched ahead of the device at most. JAX dispatches asynchronously: an
# unbounded loop runs ahead to the next log line's device_get, so a stop signal would be
# seen only there (25 steps later in the demo). One step ahead keeps the device busy and
# a stop within a step or two.
MAX_STEPS_IN_FLIGHT = 1


@dataclasses.dataclass
class TrainResult:
  step: int                      # optimizer steps completed
  final_metrics: dict            # last validation metrics ({} when none ran)
  state: Any = None              # the final train state (for tests and notebooks)
  summary: str = ""              # a few lines for the console
  stop_signal: int = 0           # the signal that stopped the run (SIGTERM, SIGINT) or 0

  @property
  def preempted(self) -> bool:
    """Stopped by a signal (a checkpoint of `step` was saved)."""
    return bool(self.stop_signal)


def due(step: int, every: int, last: int) -> bool:
  """Periodic work: every `every` steps (0: never) and at the last step."""
  return bool(every and step % every == 0) or step == last


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list | None = None, take_over_lock: bool = False,
                       lock_stale_s: float = layout.LOCK_STALE_S) -> TrainResult:
  """Trains (or resumes) the run recorded in `workdir`.

  `devices`: the mesh (default: every device of every process, `jax.devices()`).
  `take_over_lock`: take the workdir even when its lock names a trainer that looks
  alive (`workdir.WorkdirLock`); a stale lock is taken over without it.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_main = jax.process_index() == 0

  # --- Checks, before anything is written or compiled.
  devices = list(jax.devices() if devices is None else devices)
  config = config_validation.resolve(config, num_devices=len(devices),
                                     process_count=jax.process_count(),
                                     data_streams=data_streams.recorded_data_streams(workdir))
  accum = config_validation.check_batch(config, len(devices), jax.process_count())
  run_config.check_workdir(workdir)
  lock = None
  if is_main:  # a workdir in use is refused first (taken below, once the checks pass)
    lock = layout.WorkdirLock(workdir, take_over=take_over_lock, stale_s=lock_stale_s,
                              command=" ".join(sys.argv))
    lock.check()
  resuming = run_config.check_config(workdir, config)
  if resuming and layout.steps(workdir):  # the stored shapes, before anything is built
    orbax_store.check_state_matches(workdir, abstract_train_state(config))
  if resuming:
    done = _already_complete(config, workdir)
    if done is not None:
      return done

  # --- One trainer per workdir: the lock (refused: nothing written).
  existed = os.path.isdir(workdir)
  if lock is not None:
    try:
      lock.acquire()
    except OSError as e:
      if not existed:
        shutil.rmtree(workdir, ignore_errors=True)
      raise config_validation.ConfigError(
          f"--workdir={workdir} cannot be made or locked: {e}") from e
    if lock.replaced:
      log.warning("took over the workdir lock of %s: %s", lock.describe(lock.replaced[0]),
                  lock.replaced[1])
  start = WorkdirStart(workdir, config, is_main, existed)
  try:
    return _train(config, workdir, devices, accum, resuming, start, lock)
  except BaseException:
    start.roll_back()
    raise
  finally:
    start.close()
    if lock is not None:
      lock.release()


@dataclasses.dataclass
class _Setup:
  """What the loop runs with, made by `_setup` before the first step."""
  config: Any
  mesh: Any
  data: data_lib.RunData
  parts: ModelParts
  handle: ModelHandle
  state: Any
  start_step: int
  faults: FaultPolicy
  train_step: Any
  eval_step: Any
  text_types: list
  schedule: Any
  meter: Any


def _setup(config, workdir, devices, accum, resuming, is_main) -> _Setup:
  """Data, model, optimizer, compiled steps (the train step must fit in memory) and
  the starting state (resume, train.init_from, or from scratch)."""
  tc = config.train
  mesh = make_mesh(devices)
  tokens_per_step = int(tc.global_batch_size) * int(config.data.seq_len)
  log.info("run %s: %d device(s) %s over %d process(es); global batch %d x %d tokens = "
           "%d per step (micro %d x accumulation %d per device); %d steps",
           workdir, len(devices), devices[0].device_kind, jax.process_count(),
           tc.global_batch_size, config.data.seq_len, tokens_per_step,
           tc.micro_batch_per_device, accum, tc.num_steps)
  data = data_lib.RunData(config, workdir, num_devices=len(devices))
  parts, state, handle = create_train_state(config, mesh)
  log.info("model: %s parameters", f"{parts.num_params:,}")
  train_step_fn = make_train_step(mesh, parts, accum)
  memory_check.preflight(config, mesh, parts, state, handle, train_step_fn)
  types = evaluation.text_types(data.source)
  faults, start_step, state = _starting_state(config, workdir, mesh, data, parts, state,
                                              resuming, is_main)
  flops = float(flops_per_token(config.model, int(config.data.seq_len))["training"])
  peak, peak_source = throughput.peak_tflops(devices[0], len(mesh.local_devices),
                                             tc.peak_tflops_per_device)
  log.info("FLOPs per token (training) %.3g; peak %.3g TFLOP/s per device from %s",
           flops, peak, peak_source)
  return _Setup(config, mesh, data, parts, handle, state, start_step, faults, train_step_fn,
                make_eval_step(mesh, len(types)), types,
                make_schedule(tc, int(tc.num_steps)),
                throughput.ThroughputMeter(tokens_per_step, flops, len(devices), peak))


def _train(config, workdir, devices, accum, resuming, start: WorkdirStart,
           lock: layout.WorkdirLock | None) -> TrainResult:
  run = _setup(config, workdir, devices, accum, resuming, start.is_main)
  tc, cc, num_steps = config.train, config.checkpoint, int(config.train.num_steps)
  state, faults, meter, start_step = run.state, run.faults, run.meter, run.start_step
  writer = data_order = None   # made once the first step has run
  pending: list = []           # device metrics since the last log line
  counts: dict = {}            # the batches' side counters (skipped data)
  final_eval: dict = {}
  first_loss, sample, stop_signal = None, "", 0
  stop_at = min(int(tc.stop_at_step) or num_steps, num_steps)
  step = start_step
  run_start = time.perf_counter()
  try:
    with StopSignals(install=jax.process_count() == 1) as stopper:
      for step in range(start_step + 1, stop_at + 1):
        arrays, extra = split_batch(next(run.data.train_iter))
        counts.update(extra)
        state, step_metrics = run.train_step(state, run.handle, to_global(arrays, run.mesh),
                                             faults.lr_scale)
        pending.append(step_metrics)
        if len(pending) > MAX_STEPS_IN_FLIGHT:  # at most this many steps ahead of the device
          jax.block_until_ready(pending[-1 - MAX_STEPS_IN_FLIGHT])
        _check_lock(lock, step)
        if step == start_step + 1:  # compilation: keep it out of the timings
          first_loss = _first_step_done(step_metrics, step, run_start)
          writer, data_order = _start_recording(start, run)
          meter.restart()
        else:
          meter.count_step()
        if data_order is not None:
          data_order.record(step, arrays)

        scalars: dict = {}
        if due(step, tc.log_every_steps, num_steps):
          scalars, state = _log_interval(run, step, state, pending or [step_metrics], counts)
          pending = []
        paused_from = time.perf_counter()
        if due(step, config.eval.every_steps, num_steps):
          final_eval = _validate(run, state["params"], step)
          scalars.update(final_eval)
        if scalars:
          writer.write_scalars(step, scalars)
        stop = stopper.signal is not None or (jax.process_count() > 1
                                              and faults.ckpts.reached_preemption(step))
        if due(step, cc.every_steps, num_steps) or stop or step == stop_at:
          if data_order is not None:
            data_order.flush()
          state = faults.save(step, state, run.data.train_iter)
        if cc.snapshot_every_steps and step % cc.snapshot_every_steps == 0:
          state = faults.save_snapshot(step, state)
        meter.pause(time.perf_counter() - paused_from)
        if stop:
          stop_signal = stopper.signal or signal.SIGTERM
          log.warning("stopped by %s at step %d; checkpoint saved. Rerun the same "
                      "command to resume.", signal_name(stop_signal), step)
          break
    if writer is None:  # no step was left to run
      writer, data_order = _start_recording(start, run)
    if step >= num_steps and not stop_signal:
      sample = _finish(run, step, state, writer)
  finally:  # pending async saves finish; writers flush, also on errors
    if data_order is not None:
      data_order.close()
    if writer is not None:
      writer.close()
    # (not while an error propagates: it, not the missing last step, is the news)
    faults.close(step, must_succeed=(bool(stop_signal) or step >= num_steps)
                 and sys.exc_info()[0] is None)
  elapsed = time.perf_counter() - run_start
  log.info("done at step %d in %s", step, run_summary.fmt_time(elapsed))
  summary = run_summary.summary(workdir, step, num_steps, elapsed, stop_signal, first_loss, final_eval,
                     config, config.eval.sample_prompt, sample)
  summary += run_summary.write_errors_line(workdir, faults)
  return TrainResult(step=step, final_metrics=final_eval,
                     state=state, summary=summary, stop_signal=int(stop_signal))


def _check_lock(lock: layout.WorkdirLock | None, step: int) -> None:
  if lock is not None and lock.lost:  # another trainer writes this workdir now
    raise TrainingStopped(
        f"step {step}: another trainer took this workdir over "
        f"({lock.describe(lock.lost)}); this one stops without saving.", LOCK_LOST_EXIT_CODE)


def _first_step_done(step_metrics, step: int, run_start: float) -> float | None:
  """Waits for the first step (with what was left to compile); its loss at step 1."""
  jax.block_until_ready(step_metrics)
  log.info("first step (with what was left to compile) took %.1f s",
           time.perf_counter() - run_start)
  return float(jax.device_get(step_metrics["train_loss"])) if step == 1 else None


def _log_interval(run: _Setup, step: int, state, pending: list, counts: dict):
  """The log line's scalars (means over the interval, throughput, SWELU scalars) and the
  state (reloaded when the run keeps producing non-finite steps)."""
  fetched = jax.device_get(pending)
  run.faults.count_skips(step, fetched)
  scalars = _train_scalars(fetched, run.meter.scalars(step), run.faults, run.schedule, step)
  scalars.update(swelu_scalars(run.handle.bind(state["params"])))
  scalars.update(counts)
  _log_progress(step, int(run.config.train.num_steps), scalars)
  run.meter.restart()
  return scalars, run.faults.reload_if_diverging(step, state)


def _finish(run: _Setup, step: int, state, writer) -> str:
  """The end of training: the final params, then a text sample (returned)."""
  ec = run.config.eval
  run.faults.save_final(step, state["params"])
  if run.start_step == step:
    log.info("run already complete at step %d", step)
  if ec.sample_tokens <= 0:
    return ""
  sample = sample_text(run.handle, state["params"], run.data.tokenizer, ec.sample_prompt,
                       int(ec.sample_tokens), float(ec.sample_temperature),
                       max_positions=max_positions(run.config.model) or 0, seed=run.config.seed)
  writer.write_texts(step, {"sample": sample})
  log.info("sample (temperature %.2f):\n%s%s", ec.sample_temperature, ec.sample_prompt, sample)
  return sample


def _starting_state(config, workdir, mesh, data, parts, state, resuming, is_main):
  """(fault policy, start step, state). The checkpoints' shapes were checked against
  the config before anything was built: resume from the newest one that restores
  (damaged ones are moved aside), else start from train.init_from, else from `state`."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  faults = FaultPolicy(config, workdir, is_main, abstract,
                       lambda: create_train_state(config, mesh)[1], mesh)
  start_step, restored = 0, faults.restore(data.train_iter)
  if restored is not None:
    start_step, state = restored
    log.info("resumed from %s/%s/%d", workdir, layout.CHECKPOINTS, start_step)
  elif config.train.init_from:
    state = _init_from(config.train.init_from, state, parts, abstract)
  elif resuming:
    log.info("workdir %s has no checkpoint yet: starting from step 0", workdir)
  faults.prepare_save(state)
  if is_main:
    _warn_if_disk_too_small(workdir, state)
  return faults, start_step, state


def _warn_if_disk_too_small(workdir: str, state) -> None:
  """One warning when the workdir's filesystem cannot hold one more checkpoint (its
  saves would fail: the run still goes on, as checkpoint.on_write_error says)."""
  need = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
  try:
    free = shutil.disk_usage(workdir).free
  except OSError:
    return
  if free < need:
    log.warning("%s has %.1f MB free; one checkpoint of this run needs about %.1f MB: "
                "its checkpoints will fail until space is freed", workdir, free / 1e6,
                need / 1e6)


def _already_complete(config, workdir: str) -> TrainResult | None:
  """A run whose final params and last checkpoint are saved at train.num_steps has
  nothing left to do: said at once (nothing built, compiled or written), with the last
  validation figures from metrics.jsonl. None when something is left."""
  num_steps = int(config.train.num_steps)
  saved = layout.steps(workdir)
  if (int(config.train.stop_at_step or 0) not in (0, num_steps)
      or num_steps not in layout.steps(workdir, layout.FINAL)
      or not saved or saved[-1] != num_steps):
    return None
  final_eval = {}
  path = os.path.join(workdir, layout.METRICS)
  if os.path.exists(path):
    for record in metrics_lib.read_jsonl(path):
      if "validation_loss" in record and record["step"] <= num_steps:
        final_eval = {k: v for k, v in record.items() if k.startswith("validation_")}
  log.info("run already complete at step %d (final params in %s/%d)", num_steps,
           os.path.join(workdir, layout.FINAL), num_steps)
  summary = run_summary.summary(workdir, num_steps, num_steps, 0.0, 0, None, final_eval, config, "", "")
  summary = summary.replace(f"step {num_steps}/{num_steps} in 0m00s",
                            f"step {num_steps}/{num_steps}, already complete", 1)
  return TrainResult(step=num_steps, final_metrics=final_eval, summary=summary)


def _start_recording(start: WorkdirStart, run: _Setup):
  """The first step ran: the workdir now records the run (config, log, metrics)."""
  start.commit(run.start_step)
  writer = metrics_lib.MetricsWriter(start.workdir, is_main=start.is_main,
                                     resume_step=run.start_step)
  if run.start_step == 0:
    writer.write_hparams({**config_validation.flatten(run.config),
                          "num_params": run.parts.num_params})
  streams = run.data.train_iter
  data_order = (DataOrderLog(start.workdir, run.start_step, jax.process_index(),
                             (streams.first, len(streams.iterators)))
                if run.config.train.data_order_log else None)
  return writer, data_order


def _train_scalars(fetched: list[dict], meter_scalars: dict, faults: FaultPolicy, schedule,
                   step: int) -> dict:
  """Means over the applied steps of the log interval (NaN when every one was skipped),
  throughput, the learning rate and the fault counters."""
  applied = [m for m in fetched if not m.get("skipped_update", 0) > 0]
  mean = lambda k: float(np.mean([m[k] for m in applied])) if applied else float("nan")  # pylint: disable=unnecessary-lambda-assignment
  return {"train_loss": mean("train_loss"),
          "learning_rate": float(schedule(step - 1)) * faults.counters["lr_scale"],
          "grad_norm": mean("grad_norm"), **meter_scalars,
          **{k: float(v) for k, v in faults.counters.items()}}


def _log_progress(step: int, num_steps: int, scalars: dict) -> None:
  eta = (num_steps - step) * scalars.get("step_time", float("nan"))
  log.info("step %d/%d  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tokens/s  "
           "%.4f s/step  MFU %.2f%%  ETA %s", step, num_steps, scalars["train_loss"],
           scalars["learning_rate"], scalars["grad_norm"], scalars["tokens_per_second"],
           scalars["step_time"], 100 * scalars["mfu"], run_summary.fmt_time(eta))


def _init_from(source: str, state, parts, abstract):
  """The state with the params of workdir `source` (its latest params: final, else the
  newest checkpoint or snapshot) and a fresh optimizer state, at step 0."""
  source = os.path.abspath(os.path.expanduser(source))
  try:
    got, params = orbax_store.restore_params(source, abstract["params"])
  except Exception as e:  # pylint: disable=broad-except
    raise config_validation.ConfigError(
        f"config key 'train.init_from' = {source!r}: its params do not restore into this "
        f"model: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
  params = jax.tree.map(lambda p, a: jax.device_put(p, a.sharding), params, abstract["params"])
  log.info("initialised from the params of step %d of %s", got, source)
  return {"step": state["step"], "params": params,
          "opt_state": jax.jit(parts.tx.init, out_shardings=jax.tree.map(
              lambda a: a.sharding, abstract["opt_state"]))(params)}


def _validate(run: _Setup, params, step: int) -> dict:
  """The validation figures of `params` over the run's fixed validation subset, by the
  evaluation library's code: loss, perplexity, bits per byte, overall and per text
  type (validation/<type>/<figure>); at the end also the unigram entropy of the
  validation tokens."""
  ec = run.config.eval
  vocab = int(run.config.model.vocab_size) if step == int(run.config.train.num_steps) else 0
  got = evaluation.sum_batches(
      run.eval_step, params, run.handle, run.data.eval_batches(), run.mesh,
      rows=int(ec.batch_per_device) * len(run.mesh.local_devices),  # this process's share
      max_batches=int(ec.max_batches), vocab_size=vocab)
  if got["totals"] is None or got["totals"][:, 1].sum() == 0:
    return {}
  figures = evaluation.split_figures(got["totals"], run.text_types)
  out = {"validation_loss": figures["loss"], "validation_perplexity": figures["perplexity"],
         "validation_bits_per_byte": figures["bits_per_byte"],
         "validation_tokens": figures["tokens"]}
  if len(run.text_types) > 1:
    for typ, f in figures["by_type"].items():
      out.update({f"validation/{typ}/{k}": f[k] for k in ("loss", "perplexity", "bits_per_byte")})
  if got["counts"] is not None and got["counts"].sum() > 0:
    out["validation_unigram_entropy"] = evaluation.unigram_entropy(got["counts"])
  log.info("step %d  validation loss %.4f  perplexity %.2f  bits/byte %.4f", step,
           out["validation_loss"],
           out["validation_perplexity"], out["validation_bits_per_byte"])
  return out
