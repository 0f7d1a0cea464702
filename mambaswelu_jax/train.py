"""Training: a pure train state, pure step functions, and the loop around them.

`train_step` / `eval_step` are per-device functions; `make_train_step` and
`make_eval_step` wrap them in `jax.shard_map` over a 1-D `data` mesh (every device
of the run, across hosts too) and `jax.jit` with the state donated. Each device
takes its slice of the global batch, runs `accum` micro-batches of
`train.micro_batch_per_device` sequences, and the gradients are averaged across the
mesh before one AdamW update, so the same global batch gives the same trajectory on
1, 2 or 4 devices.

`train_and_evaluate(config, workdir)` is the loop: validate the config, record it,
build data, model and optimizer, restore the newest valid checkpoint, train with
periodic logging / evaluation / checkpoints, stop cleanly on SIGTERM, and finish
with a final evaluation, the final params and (if asked) a text sample.

This module imports jax, flax, optax, numpy and ml_collections only; Orbax, CLU,
grain and the data layer are imported when `train_and_evaluate` first needs them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# These import Orbax, CLU, grain and the data layer only when used.
from mambaswelu_jax import checkpointing
from mambaswelu_jax import config_validation
from mambaswelu_jax import metrics as metrics_lib
from mambaswelu_jax import run_data

log = logging.getLogger("mambaswelu_jax.train")

DATA_AXIS = "data"
# Exit status of `main` when SIGTERM stopped the run after saving a checkpoint
# (the status a shell reports for a process ended by SIGTERM: schedulers treat it
# as a preemption, and rerunning the same command resumes).
PREEMPTED_EXIT_CODE = 143
# Exit status when a checkpoint write failed and checkpoint.on_write_error = "stop"
# (the checkpoints already on disk are intact; free space and rerun to resume).
WRITE_ERROR_EXIT_CODE = 3
# Exit status when the run kept producing non-finite updates after
# train.max_nonfinite_reloads reloads of the last good checkpoint.
DIVERGED_EXIT_CODE = 4


class TrainingStopped(RuntimeError):
  """The run stopped on a fault it could not get past; `exit_code` is main's status."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code

TrainState = dict  # {"step": int32 scalar, "params": nnx.State, "opt_state": optax state}


# ----------------------------------------------------------------------------
# Optimizer.
# ----------------------------------------------------------------------------


def make_schedule(train_cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then cosine to learning_rate * min_lr_ratio."""
  lr = float(train_cfg.learning_rate)
  warmup = int(train_cfg.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(int(num_steps), warmup + 1), end_value=lr * float(train_cfg.min_lr_ratio))


def make_optimizer(train_cfg: ml_collections.ConfigDict, num_steps: int,
                   decay_mask: Any) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with the schedule and the decay mask."""
  parts = []
  if train_cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(train_cfg.grad_clip_norm)))
  parts.append(optax.adamw(make_schedule(train_cfg, num_steps), b1=float(train_cfg.b1),
                           b2=float(train_cfg.b2), eps=float(train_cfg.eps),
                           weight_decay=float(train_cfg.weight_decay), mask=decay_mask))
  return optax.chain(*parts)


# ----------------------------------------------------------------------------
# Model and train state.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelParts:
  """What the step functions need besides the state: the static graph and the optimizer."""
  graphdef: Any
  tx: optax.GradientTransformation
  num_params: int


def _build(model_cfg, seed):
  from mambaswelu_jax.models import build_model  # pylint: disable=import-outside-toplevel
  return build_model(model_cfg, nnx.Rngs(seed))


def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh
                       ) -> tuple[ModelParts, TrainState, Any]:
  """(parts, state, rest): the state replicated over `mesh`; `rest` holds the model's
  non-parameter variables (not trained, not checkpointed: rebuilt from the config)."""
  from mambaswelu_jax.models import count_parameters, weight_decay_mask  # pylint: disable=import-outside-toplevel
  abstract = nnx.eval_shape(lambda: _build(config.model, config.seed))
  graphdef, abstract_params, _ = nnx.split(abstract, nnx.Param, ...)
  tx = make_optimizer(config.train, config.train.num_steps, weight_decay_mask(abstract_params))

  def init():
    model = _build(config.model, config.seed)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    return state, rest

  replicated = NamedSharding(mesh, P())
  state, rest = jax.jit(init, out_shardings=replicated)()
  return ModelParts(graphdef, tx, int(count_parameters(abstract_params))), state, rest


def merge_model(parts: ModelParts, params: Any, rest: Any) -> nnx.Module:
  return nnx.merge(parts.graphdef, params, rest)


# ----------------------------------------------------------------------------
# Step functions (per device; wrapped in shard_map below).
# ----------------------------------------------------------------------------


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, batch: dict, rest: Any, lr_scale: jax.Array | None = None,
               *, graphdef: Any, tx: optax.GradientTransformation, accum_steps: int,
               axis_name: str | None = DATA_AXIS) -> tuple[TrainState, dict]:
  """One optimizer step on this device's slice of the global batch.

  batch["inputs"], batch["targets"]: int32 (accum_steps * micro, L). Gradients of the
  mean token loss are accumulated in float32 over micro-batches, averaged over the
  mesh, clipped and applied, scaled by `lr_scale` (1 unless non-finite steps made the
  loop lower it). When the loss, the gradient norm or the new parameters are not
  finite the update is dropped inside the step (params and optimizer state stay as
  they were; `step` still advances past the batch) and metrics["skipped_update"] is 1.
  """
  params = state["params"]

  def loss_fn(p, inputs, targets):
    logits = nnx.merge(graphdef, p, rest)(inputs)
    return token_nll(logits, targets).mean()

  grad_fn = jax.value_and_grad(loss_fn)
  inputs, targets = batch["inputs"], batch["targets"]
  if accum_steps == 1:
    loss, grads = grad_fn(params, inputs, targets)
  else:
    def split(x):
      return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

    def micro_step(carry, xs):
      loss_sum, grad_sum = carry
      loss, grads = grad_fn(params, *xs)
      return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss, grads), _ = jax.lax.scan(micro_step, (jnp.zeros((), jnp.float32), zeros),
                                    (split(inputs), split(targets)))
    loss = loss / accum_steps
    grads = jax.tree.map(lambda g, p: (g / accum_steps).astype(p.dtype), grads, params)
  if axis_name is not None:
    loss, grads = jax.lax.pmean((loss, grads), axis_name)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state["opt_state"], params)
  if lr_scale is not None:
    updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
  new_params = optax.apply_updates(params, updates)
  # Identical on every device (loss and gradients are averaged over the mesh).
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)

  def keep_if_bad(new, old):
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

  new_state = {"step": state["step"] + 1, "params": keep_if_bad(new_params, params),
               "opt_state": keep_if_bad(opt_state, state["opt_state"])}
  return new_state, {"train_loss": loss, "grad_norm": grad_norm,
                     "skipped_update": 1.0 - ok.astype(jnp.float32)}


def eval_step(params: Any, batch: dict, rest: Any, *, graphdef: Any,
              axis_name: str | None = DATA_AXIS) -> dict:
  """Weighted sums over this device's slice: nll, tokens, target bytes."""
  logits = nnx.merge(graphdef, params, rest)(batch["inputs"])
  nll = token_nll(logits, batch["targets"])
  w = batch["weights"].astype(jnp.float32)
  sums = {"nll": jnp.sum(nll * w), "tokens": jnp.sum(w),
          "bytes": jnp.sum(batch["target_bytes"].astype(jnp.float32) * w)}
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


def make_train_step(mesh: Mesh, parts: ModelParts, accum_steps: int) -> Callable:
  """jit(shard_map(train_step)): state, rest and lr_scale replicated, batch split on
  `data`; the state argument is donated. Called as step(state, batch, rest) or
  step(state, batch, rest, lr_scale) (a float32 scalar, default 1)."""
  fn = functools.partial(train_step, graphdef=parts.graphdef, tx=parts.tx,
                         accum_steps=accum_steps)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()),
                          out_specs=(P(), P()), check_vma=False)
  jitted = jax.jit(sharded, donate_argnums=(0,))
  one = jax.device_put(jnp.ones((), jnp.float32), NamedSharding(mesh, P()))

  def step(state, batch, rest, lr_scale=None):
    return jitted(state, batch, rest, one if lr_scale is None else lr_scale)

  step.jitted = jitted
  return step


def make_eval_step(mesh: Mesh, parts: ModelParts) -> Callable:
  fn = functools.partial(eval_step, graphdef=parts.graphdef)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(),
                          check_vma=False)
  return jax.jit(sharded)


# ----------------------------------------------------------------------------
# Host-side helpers.
# ----------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def to_global(batch: dict, mesh: Mesh) -> dict:
  """This process's rows of a batch -> global arrays split on `data`."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


_MODEL_KEYS = ("inputs", "targets")
_EVAL_KEYS = ("inputs", "targets", "weights", "target_bytes")


def split_batch(batch: dict, keys=_MODEL_KEYS) -> tuple[dict, dict]:
  """(arrays for the device, numeric side counters such as skipped-data counts)."""
  arrays = {k: batch[k] for k in keys}
  extra = {}
  for k, v in batch.items():
    if k in keys:
      continue
    a = np.asarray(v)
    if a.dtype.kind in "iuf" and a.size >= 1:
      extra[k] = float(a.reshape(-1)[-1]) if a.ndim else float(a)
  return arrays, extra


def _pad_eval_batch(batch: dict, rows: int) -> dict:
  """Pads a short final validation batch to `rows` rows with zero weight."""
  n = np.asarray(batch["inputs"]).shape[0]
  if n == rows:
    return {k: batch[k] for k in _EVAL_KEYS}
  out = {}
  for k in _EVAL_KEYS:
    v = np.asarray(batch[k])
    pad = np.zeros((rows - n,) + v.shape[1:], v.dtype)
    out[k] = np.concatenate([v, pad], 0)
  return out


class _Stopper:
  """SIGTERM or Ctrl-C (SIGINT) -> a flag the loop polls; the loop saves and exits
  cleanly. A second Ctrl-C aborts at once (Python's KeyboardInterrupt).

  Only for one process: across processes every one must stop at the same step, so
  there JAX's own preemption notifier (set up by jax.distributed) catches SIGTERM and
  the loop asks Orbax's `reached_preemption`, a synchronised decision.
  """

  def __init__(self, install: bool = True):
    self.signal = None
    self._old = {}
    self._install = install

  def __enter__(self):
    if self._install and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.signal is None:
      self.signal = signum
    if signum == signal.SIGINT:  # the next Ctrl-C is Python's own: abort at once
      signal.signal(signal.SIGINT, signal.default_int_handler)
      log.warning("Ctrl-C: saving a checkpoint of the current step and stopping (Ctrl-C "
                  "again aborts at once, losing the steps since the last checkpoint)")
    else:
      log.warning("received signal %d: saving a checkpoint and stopping", signum)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False


class _WorkdirStart:
  """What a run writes into its workdir only once its first step has run: the config
  (config.json, with the previous one kept if it changed), train.log (records held in
  memory until then) and the metrics writers. A run that fails or is stopped before
  that leaves the workdir as it found it: a workdir this run created is removed, and
  in an existing one the entries it added are (a checkpoint moved aside stays)."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, is_main: bool):
    self.workdir, self.config, self.is_main = workdir, config, is_main
    self.existed = os.path.isdir(workdir)
    self.entries = set(os.listdir(workdir)) if self.existed else set()
    self.log_handler = metrics_lib.add_train_log(workdir, is_main)
    self.done = False

  def commit(self, step: int) -> None:
    if self.done:
      return
    if self.is_main:
      checkpointing.record_config(self.workdir, self.config, step)
    metrics_lib.start_train_log(self.log_handler, self.workdir)
    self.done = True

  def roll_back(self) -> None:
    if self.done or not self.is_main or not os.path.isdir(self.workdir):
      return
    if not self.existed:
      shutil.rmtree(self.workdir, ignore_errors=True)
      return
    for name in set(os.listdir(self.workdir)) - self.entries - {checkpointing.UNRESTORABLE_DIR}:
      path = os.path.join(self.workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)

  def close(self) -> None:
    metrics_lib.remove_train_log(self.log_handler)


@dataclasses.dataclass
class TrainResult:
  step: int                      # optimizer steps completed
  preempted: bool                # stopped by a signal (a checkpoint of `step` was saved)
  final_metrics: dict            # last validation metrics ({} when none ran)
  state: Any = None              # the final train state (for tests and notebooks)
  summary: str = ""              # a few lines for the console
  stop_signal: int = 0           # the signal that stopped the run (SIGTERM, SIGINT) or 0


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list | None = None) -> TrainResult:
  """Trains (or resumes) the run recorded in `workdir`.

  `devices`: the mesh (default: every device of every process, `jax.devices()`).
  Nothing is written before the config, the data and (on resume) the checkpoints'
  shapes are checked, and a failure before the first step leaves the workdir as it
  was (see `_WorkdirStart`).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_main = jax.process_index() == 0

  # --- Config: validate before anything compiles or is written.
  devices = list(jax.devices() if devices is None else devices)
  config = config_validation.resolve(config, num_devices=len(devices),
                                     process_count=jax.process_count())
  num_steps = int(config.train.num_steps)
  accum = config_validation.check_batch(config, len(devices), jax.process_count())
  checkpointing.check_workdir(workdir)
  resumed_workdir = checkpointing.check_config(workdir, config)
  start = _WorkdirStart(workdir, config, is_main)
  try:
    if is_main:
      try:
        os.makedirs(workdir, exist_ok=True)
      except OSError as e:
        raise config_validation.ConfigError(f"--workdir={workdir} cannot be made: {e}") from e
    return _run(config, workdir, devices, accum, num_steps, resumed_workdir, is_main, start)
  except BaseException:
    start.roll_back()
    raise
  finally:
    start.close()


def _run(config, workdir, devices, accum, num_steps, resumed_workdir, is_main,
         start: _WorkdirStart) -> TrainResult:
  tc, ec = config.train, config.eval
  mesh = make_mesh(devices)
  tokens_per_step = int(tc.global_batch_size) * int(config.data.seq_len)
  log.info("run %s: %d device(s) %s over %d process(es); global batch %d x %d tokens = "
           "%d per step (micro %d x accumulation %d per device); %d steps",
           workdir, len(devices), devices[0].device_kind, jax.process_count(),
           tc.global_batch_size, config.data.seq_len, tokens_per_step,
           tc.micro_batch_per_device, accum, num_steps)

  # --- Data: tokenizer (checked against the model), train iterator, eval batches.
  data = run_data.RunData(config, workdir, num_devices=len(devices))

  # --- Model, optimizer, state.
  parts, state, rest = create_train_state(config, mesh)
  log.info("model: %s parameters", f"{parts.num_params:,}")
  train_step_fn = make_train_step(mesh, parts, accum)
  from mambaswelu_jax import memory_check  # pylint: disable=import-outside-toplevel
  memory_check.preflight(config, mesh, parts, state, rest, train_step_fn)  # OOM: exit 2
  eval_step_fn = make_eval_step(mesh, parts)
  schedule = make_schedule(tc, num_steps)

  # --- Checkpoints: the stored shapes must fit this model (checked before anything is
  # written); resume from the newest one that restores, moving damaged ones aside.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  checkpointing.check_state_matches(workdir, abstract)
  ckpts = checkpointing.Checkpoints(workdir, config.checkpoint, is_main=is_main)
  restored = ckpts.restore_latest(abstract, data.train_iter)
  start_step = 0
  faults = {"skipped_updates": 0, "nonfinite_reloads": 0, "checkpoint_write_errors": 0,
            "lr_scale": 1.0}  # kept in each checkpoint's meta, so a resume continues them
  if restored is not None:
    start_step, state = restored
    faults.update({k: type(v)(ckpts.restored_meta.get(k, v)) for k, v in faults.items()})
    log.info("resumed from %s/checkpoints/%d", workdir, start_step)
    if faults["lr_scale"] != 1.0:
      log.info("learning rate scaled by %g (after %d reload(s) on non-finite steps)",
               faults["lr_scale"], faults["nonfinite_reloads"])
  elif resumed_workdir:
    log.info("workdir %s has no checkpoint yet: starting from step 0", workdir)
  replicated = NamedSharding(mesh, P())
  lr_scale = jax.device_put(jnp.asarray(faults["lr_scale"], jnp.float32), replicated)
  data_order = None
  writer = None  # the metrics writers: made once the first step has run

  def commit() -> None:
    """The first step ran: the workdir now records this run (config, log, metrics)."""
    nonlocal writer, data_order
    start.commit(start_step)
    if writer is None:
      writer = metrics_lib.MetricsWriter(workdir, is_main=is_main, resume_step=start_step)
      if start_step == 0:
        hparams = config_validation.flatten(config)
        hparams["num_params"] = parts.num_params
        writer.write_hparams(hparams)
      if tc.data_order_log:
        data_order = _DataOrderLog(workdir, start_step)

  # --- Metrics.
  flops = _flops_per_token(config)
  peak, peak_source = metrics_lib.peak_tflops(devices[0], len(mesh.local_devices),
                                              tc.peak_tflops_per_device)
  log.info("FLOPs per token (training) %.3g; peak %.3g TFLOP/s per device from %s",
           flops, peak, peak_source)

  def evaluate(params, final=False):
    return _evaluate(eval_step_fn, params, rest, data, mesh, config, final)

  def swelu_and_counts(params):
    out = {}
    try:
      from mambaswelu_jax.models import swelu_scalars  # pylint: disable=import-outside-toplevel
      out.update(swelu_scalars(merge_model(parts, params, rest)))
    except ImportError:
      pass
    return out

  def recover(reason: str) -> None:
    """Back to the last good checkpoint's params and optimizer state, with the learning
    rate scaled by train.nonfinite_lr_factor. The step counter and the data stream go on
    (the batches since that checkpoint are not replayed: they are counted as skipped)."""
    nonlocal state, lr_scale
    faults["nonfinite_reloads"] += 1
    if faults["nonfinite_reloads"] > int(tc.max_nonfinite_reloads):
      raise TrainingStopped(
          f"step {step}: {reason}; train.max_nonfinite_reloads={tc.max_nonfinite_reloads} "
          f"reloads did not help. Lower --config.train.learning_rate, or check the data.",
          DIVERGED_EXIT_CODE)
    _wait_for_saves()
    good = ckpts.restore_latest(abstract, None)
    if good is None:
      good_step, (_, fresh, _) = 0, create_train_state(config, mesh)
    else:
      good_step, fresh = good
    faults["lr_scale"] *= float(tc.nonfinite_lr_factor)
    lr_scale = jax.device_put(jnp.asarray(faults["lr_scale"], jnp.float32), replicated)
    state = {"step": state["step"], "params": fresh["params"],
             "opt_state": fresh["opt_state"]}
    log.warning("step %d: %s; reloaded the params of step %d (reload %d of at most %d), "
                "learning rate now x%g", step, reason, good_step, faults["nonfinite_reloads"],
                tc.max_nonfinite_reloads, faults["lr_scale"])

  def on_write_error(error: Exception, what: str) -> None:
    faults["checkpoint_write_errors"] += 1
    log.error("step %d: %s failed; earlier checkpoints are intact: %s", step, what, error)
    if config.checkpoint.on_write_error == "stop":
      raise TrainingStopped(f"step {step}: {what} failed: {error}\nThe checkpoints already "
                            f"written are intact: free space (or fix the error) and rerun the "
                            f"same command to resume.", WRITE_ERROR_EXIT_CODE)

  def _wait_for_saves() -> None:
    try:
      ckpts.wait()
    except checkpointing.CheckpointWriteError as e:
      on_write_error(e, "an asynchronous checkpoint write")

  def save_state(retry: bool = True) -> None:
    try:
      ckpts.save(step, state, data.train_iter, meta=dict(faults))
    except checkpointing.NonFiniteState as e:
      recover(str(e))
      if retry:  # the reloaded (finite) params at this step
        save_state(retry=False)
    except checkpointing.CheckpointWriteError as e:
      on_write_error(e, f"saving the checkpoint of step {step}")
      if retry:  # the error may be an earlier asynchronous write's: this step once more
        save_state(retry=False)

  consecutive_skips = 0        # non-finite steps in a row (seen at each log step)

  # --- Loop.
  step = start_step
  preempted, stop_signal = False, 0
  stop_at = int(tc.stop_at_step) or num_steps
  final_eval: dict = {}
  pending: list = []           # device metrics since the last log line
  extra_counts: dict = {}
  interval_start = time.perf_counter()
  interval_steps = 0
  paused = 0.0                 # eval/checkpoint time inside the interval
  run_start = time.perf_counter()
  first_step_done = False
  first_loss = None
  sample = ""
  try:
    with _Stopper(install=jax.process_count() == 1) as stopper:
      while step < min(stop_at, num_steps):
        batch = next(data.train_iter)
        arrays, extra = split_batch(batch)
        extra_counts.update(extra)
        state, step_metrics = train_step_fn(state, to_global(arrays, mesh), rest, lr_scale)
        step += 1
        pending.append(step_metrics)
        if not first_step_done:  # compilation: keep it out of the timings
          jax.block_until_ready(step_metrics)
          first_step_done = True
          commit()
          if step == 1:
            first_loss = float(jax.device_get(step_metrics["train_loss"]))
          log.info("first step (compilation included) took %.1f s",
                   time.perf_counter() - run_start)
          interval_start, interval_steps, paused = time.perf_counter(), 0, 0.0
        else:
          interval_steps += 1
        if data_order is not None:
          data_order.record(step, arrays)

        scalars: dict = {}
        if step % tc.log_every_steps == 0 or step == num_steps:
          fetched = jax.device_get(pending or [step_metrics])
          scalars.update(_train_scalars(fetched, interval_start, interval_steps,
                                        paused, tokens_per_step, flops, len(devices), peak,
                                        schedule, step))
          for m in fetched:
            skipped = bool(m["skipped_update"] > 0)
            faults["skipped_updates"] += int(skipped)
            consecutive_skips = consecutive_skips + 1 if skipped else 0
          scalars["learning_rate"] *= faults["lr_scale"]
          scalars.update({k: float(v) for k, v in faults.items()})
          if consecutive_skips:
            log.warning("step %d: %d update(s) in a row skipped (non-finite loss, gradients "
                        "or params); %d skipped in all", step, consecutive_skips,
                        faults["skipped_updates"])
          scalars.update(swelu_and_counts(state["params"]))
          scalars.update(_gather_counts(extra_counts))
          eta = (num_steps - step) * scalars.get("step_time", float("nan"))
          log.info("step %d/%d  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tokens/s  "
                   "%.4f s/step  MFU %.2f%%  ETA %s", step, num_steps, scalars["train_loss"],
                   scalars["learning_rate"], scalars["grad_norm"], scalars["tokens_per_second"],
                   scalars["step_time"], 100 * scalars["mfu"], _fmt_time(eta))
          interval_start, interval_steps, paused, pending = time.perf_counter(), 0, 0.0, []
          if tc.max_consecutive_nonfinite and consecutive_skips >= tc.max_consecutive_nonfinite:
            recover(f"{consecutive_skips} non-finite steps in a row "
                    f"(train.max_consecutive_nonfinite={tc.max_consecutive_nonfinite})")
            consecutive_skips = 0

        t0 = time.perf_counter()
        if (ec.every_steps and step % ec.every_steps == 0) or step == num_steps:
          final_eval = evaluate(state["params"], final=step == num_steps)
          scalars.update(final_eval)
          log.info("step %d  validation loss %.4f  perplexity %.2f  bits/byte %.4f", step,
                   final_eval["validation_loss"], final_eval["validation_perplexity"],
                   final_eval["validation_bits_per_byte"])
        if scalars:
          writer.write_scalars(step, scalars)

        stop = stopper.signal is not None
        if jax.process_count() > 1 and not stop:
          stop = ckpts.reached_preemption(step)
        if (step % config.checkpoint.every_steps == 0 or stop or step == num_steps
            or step == stop_at):
          if data_order is not None:
            data_order.flush()
          save_state()
        snap = config.checkpoint.snapshot_every_steps
        if snap and step % snap == 0:
          try:
            ckpts.save_snapshot(step, state["params"])
          except checkpointing.NonFiniteState as e:
            recover(str(e))
          except checkpointing.CheckpointWriteError as e:
            on_write_error(e, f"saving the params snapshot of step {step}")
        paused += time.perf_counter() - t0
        if stop:
          preempted, stop_signal = True, stopper.signal or signal.SIGTERM
          log.warning("stopped by %s at step %d; checkpoint saved. Rerun the same "
                      "command to resume.", _signal_name(stop_signal), step)
          break
    commit()  # also when there was no step left to run

    # --- End: final params, a text sample.
    if step >= num_steps and not preempted:
      _wait_for_saves()
      try:
        ckpts.save_final(step, state["params"])
      except checkpointing.CheckpointWriteError as e:
        on_write_error(e, "saving the final params")
      if start_step == num_steps:
        log.info("run already complete at step %d", step)
      if ec.sample_tokens > 0:
        text = sample = sample_text(
            parts, state["params"], rest, data.tokenizer, ec.sample_prompt,
            int(ec.sample_tokens), float(ec.sample_temperature),
            max_positions=(0 if config.model.get("architecture", "mamba") == "mamba"
                           else int(config.model.max_len)),
            seed=config.seed)
        writer.write_texts(step, {"sample": text})
        log.info("sample (temperature %.2f):\n%s%s", ec.sample_temperature, ec.sample_prompt,
                 text)
  finally:  # pending async saves finish; writers flush, also on errors
    if data_order is not None:
      data_order.close()
    if writer is not None:
      writer.close()
    try:
      ckpts.close()
    except checkpointing.CheckpointWriteError as e:
      faults["checkpoint_write_errors"] += 1
      log.error("a pending checkpoint write failed; earlier checkpoints are intact: %s", e)
      if preempted or config.checkpoint.on_write_error == "stop" or step >= num_steps:
        raise TrainingStopped(f"the last checkpoint write failed: {e}\nThe checkpoints "
                              f"already written are intact: rerun the same command to "
                              f"resume.", WRITE_ERROR_EXIT_CODE) from e
  elapsed = time.perf_counter() - run_start
  log.info("done at step %d in %s", step, _fmt_time(elapsed))
  summary = _summary(workdir, step, num_steps, elapsed, stop_signal, first_loss, final_eval,
                     config, ec.sample_prompt, sample)
  return TrainResult(step=step, preempted=preempted, final_metrics=final_eval, state=state,
                     summary=summary, stop_signal=int(stop_signal))


def _signal_name(signum: int) -> str:
  return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _summary(workdir, step, num_steps, elapsed, stop_signal, first_loss, final_eval, config,
             prompt, sample) -> str:
  """What a person wants to read when the run ends: the figures, where the files are
  and the commands that come next."""
  lines = [f"{workdir}: step {step}/{num_steps} in {_fmt_time(elapsed)}"
           + (f" (stopped by {_signal_name(stop_signal)}; rerun the same command to resume)"
              if stop_signal else "")]
  vocab = int(config.model.vocab_size)
  if first_loss is not None:
    lines.append(f"  first train loss       {first_loss:.3f} nats/token "
                 f"(ln vocab = ln {vocab} = {math.log(vocab):.3f})")
  if final_eval:
    lines.append(f"  validation loss        {final_eval['validation_loss']:.3f} nats/token, "
                 f"perplexity {final_eval['validation_perplexity']:.2f}, "
                 f"{final_eval['validation_bits_per_byte']:.3f} bits/byte")
    if "validation_unigram_entropy" in final_eval:
      lines.append(f"  unigram entropy        {final_eval['validation_unigram_entropy']:.3f} "
                   f"nats/token (of the validation tokens: a model that ignores context)")
  if sample:
    lines.append(f"  sample: {prompt}{sample}".replace("\n", "\n    "))
  lines += [f"  metrics                {os.path.join(workdir, 'metrics.jsonl')} "
            f"(log: {os.path.join(workdir, 'train.log')})",
            f"  TensorBoard            tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
            f"  checkpoints            {os.path.join(workdir, 'checkpoints')}"]
  if step >= num_steps:
    lines += [f"  evaluate               python -m mambaswelu_jax.eval --workdir={workdir}",
              f"  generate               python -m mambaswelu_jax.generate --workdir={workdir} "
              f"--prompt='...'"]
  return "\n".join(lines)


def _flops_per_token(config) -> float:
  try:
    from mambaswelu_jax.models.flops import flops_per_token  # pylint: disable=import-outside-toplevel
  except ImportError:
    return float("nan")
  return float(flops_per_token(config.model, int(config.data.seq_len))["training"])


def _train_scalars(fetched, interval_start, interval_steps, paused,
                   tokens_per_step, flops, num_devices, peak, schedule, step) -> dict:
  """Means over the applied steps of the interval (NaN when every one was skipped)."""
  applied = [m for m in fetched if not m.get("skipped_update", 0) > 0]
  loss = float(np.mean([m["train_loss"] for m in applied])) if applied else float("nan")
  grad_norm = float(np.mean([m["grad_norm"] for m in applied])) if applied else float("nan")
  elapsed = time.perf_counter() - interval_start - paused
  if interval_steps > 0 and elapsed > 0:
    step_time = elapsed / interval_steps
    tps = tokens_per_step / step_time
  else:
    step_time, tps = float("nan"), float("nan")
  tflops = tps * flops / num_devices / 1e12
  return {"train_loss": loss, "learning_rate": float(schedule(step - 1)),
          "grad_norm": grad_norm, "tokens_per_second": tps, "step_time": step_time,
          "tflops_per_device": tflops, "mfu": tflops / peak if peak and peak > 0 else float("nan"),
          "tokens_seen": float(step * tokens_per_step)}


class _DataOrderLog:
  """DIR/data_order.jsonl: one line per step, {"step", "sha"}, a hash of the batch this
  process trained on (inputs and targets). Cheap (one short write per step), it lets a
  test or a person check that a resumed run saw exactly the batches of an
  uninterrupted one: after a crash the steps since the last checkpoint are recorded
  again, each with the hash it had before. Other processes write data_order.<i>.jsonl."""

  def __init__(self, workdir: str, start_step: int):
    i = jax.process_index()
    self.path = os.path.join(workdir, "data_order.jsonl" if i == 0 else f"data_order.{i}.jsonl")
    torn = os.path.exists(self.path) and os.path.getsize(self.path) > 0 and open(
        self.path, "rb").read()[-1:] != b"\n"  # a line cut by a crash
    self._f = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    if torn:
      self._f.write("\n")
    if start_step:
      self._f.write(json.dumps({"resumed_at": int(start_step)}) + "\n")

  def record(self, step: int, arrays: dict) -> None:
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(arrays):
      a = np.ascontiguousarray(np.asarray(arrays[k]))
      h.update(k.encode())
      h.update(str(a.shape).encode())
      h.update(a.tobytes())
    self._f.write(f'{{"step": {int(step)}, "sha": "{h.hexdigest()}"}}\n')

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def read_data_order(path: str) -> dict[int, list[str]]:
  """{step: [hash, ...]} from a data-order log (a step recorded again after a resume
  appears more than once; a line cut by a crash is ignored)."""
  out: dict[int, list[str]] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "step" in r:
        out.setdefault(int(r["step"]), []).append(r["sha"])
  return out


def _gather_counts(counts: dict) -> dict:
  """Side counters of the batches (skipped data: counted over the whole split, the same
  in every stream and process)."""
  return dict(counts)


def _evaluate(eval_step_fn, params, rest, data, mesh, config, final) -> dict:
  """Validation loss, perplexity and bits per byte over the validation split."""
  ec = config.eval
  rows = int(ec.batch_per_device) * len(mesh.local_devices)  # this process's share
  totals = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
  counts = np.zeros((config.model.vocab_size,), np.float64) if final else None
  for i, batch in enumerate(data.eval_batches()):
    if ec.max_batches and i >= ec.max_batches:
      break
    batch = _pad_eval_batch(batch, rows)
    if counts is not None:
      t = np.asarray(batch["targets"]).reshape(-1)
      w = np.asarray(batch["weights"], np.float64).reshape(-1)
      counts += np.bincount(t, weights=w, minlength=counts.shape[0])[:counts.shape[0]]
    sums = jax.device_get(eval_step_fn(params, to_global(batch, mesh), rest))
    for k in totals:
      totals[k] += float(sums[k])
  if totals["tokens"] == 0:
    return {}
  loss = totals["nll"] / totals["tokens"]
  out = {"validation_loss": loss, "validation_perplexity": math.exp(min(loss, 700.0)),
         "validation_bits_per_byte": totals["nll"] / (math.log(2) * max(totals["bytes"], 1.0)),
         "validation_tokens": totals["tokens"]}
  if counts is not None and counts.sum() > 0:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(
          -1, counts.shape[0]).sum(0)
    p = counts[counts > 0] / counts.sum()
    out["validation_unigram_entropy"] = float(-(p * np.log(p)).sum())
  return out


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------


def sample_text(parts: ModelParts, params: Any, rest: Any, tokenizer: Any, prompt: str,
                num_tokens: int, temperature: float, max_positions: int = 0,
                seed: int = 0) -> str:
  """A continuation of `prompt` (after an EOS, as documents are packed) by the compiled
  recurrent sampler of `generate`. A KV cache holds `max_positions` tokens (0: no
  limit): a longer prompt keeps its end and the sample is cut to fit."""
  from mambaswelu_jax import generate  # pylint: disable=import-outside-toplevel
  ids = [tokenizer.eos_id] + list(tokenizer.encode(prompt))
  if max_positions:
    ids = ids[-max(1, max_positions // 2):]
    num_tokens = min(num_tokens, max_positions - len(ids))
  fn = jax.jit(functools.partial(generate.generate_tokens, graphdef=parts.graphdef,
                                 max_new_tokens=num_tokens))
  tokens = fn(jax.device_get(params), jax.device_get(rest), jnp.asarray([ids], jnp.int32),
              jnp.asarray([len(ids)], jnp.int32), jax.random.key(seed),
              jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0), jnp.int32(-1))
  return tokenizer.decode([int(t) for t in np.asarray(tokens)[0]])
