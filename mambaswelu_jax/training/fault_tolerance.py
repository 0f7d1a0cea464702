"""What the trainer does about faults: non-finite steps, bad states, failed writes.

`FaultPolicy` owns the run's checkpoints while it trains (the trainer saves only
through it):
  - counts skipped (non-finite) updates; after `train.max_consecutive_nonfinite` in a
    row, or when a state to be saved holds NaN/Inf, reloads the params and optimizer
    state of the last good checkpoint and scales the learning rate by
    `train.nonfinite_lr_factor` (the step counter and the data stream go on: the
    batches since that checkpoint are not replayed, they count as skipped); more than
    `train.max_nonfinite_reloads` reloads stop the run (DIVERGED_EXIT_CODE);
  - a failed checkpoint write is logged and counted; the save is tried once more
    (the error may be an earlier asynchronous write's), and with
    `checkpoint.on_write_error="stop"` the run stops (WRITE_ERROR_EXIT_CODE).
The counters and the learning-rate scale are kept in every checkpoint's meta, so a
resumed run continues them.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from mambaswelu_jax.checkpointing import checksums
from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax.mesh import replicated

log = logging.getLogger("mambaswelu_jax.training.fault_tolerance")

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


class FaultPolicy:
  """Saves, restores and reloads the train state, keeping the fault counters."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, is_main: bool,
               abstract_state: Any, fresh_state: Callable[[], Any], mesh):
    self.train_cfg, self.ckpt_cfg = config.train, config.checkpoint
    self.ckpts = orbax_store.Checkpoints(workdir, config.checkpoint, is_main=is_main)
    self.abstract, self.fresh_state, self.mesh = abstract_state, fresh_state, mesh
    self.counters = {"skipped_updates": 0, "nonfinite_reloads": 0, "checkpoint_write_errors": 0,
                     "lr_scale": 1.0}
    self.consecutive_skips = 0
    self.lr_scale = self._device_scale()

  def _device_scale(self) -> jax.Array:
    return jax.device_put(jnp.asarray(self.counters["lr_scale"], jnp.float32),
                          replicated(self.mesh))

  def prepare_save(self, state: Any) -> None:
    """Compiles the save's checksum function now, not in a stop's grace period."""
    checksums.state_checksums(state)

  # --- Resume.

  def restore(self, data_iter: Any) -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint that restores (None: start at 0), with
    the counters it recorded."""
    restored = self.ckpts.restore_latest(self.abstract, data_iter)
    if restored is None:
      return None
    meta = self.ckpts.restored_meta
    self.counters.update({k: type(v)(meta.get(k, v)) for k, v in self.counters.items()})
    self.lr_scale = self._device_scale()
    if self.counters["lr_scale"] != 1.0:
      log.info("learning rate scaled by %g (after %d reload(s) on non-finite steps)",
               self.counters["lr_scale"], self.counters["nonfinite_reloads"])
    return restored

  # --- Non-finite steps.

  def count_skips(self, step: int, fetched: list[dict]) -> None:
    """Counts the skipped updates among a log interval's step metrics."""
    for m in fetched:
      skipped = bool(m["skipped_update"] > 0)
      self.counters["skipped_updates"] += int(skipped)
      self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
    if self.consecutive_skips:
      log.warning("step %d: %d update(s) in a row skipped (non-finite loss, gradients or "
                  "params); %d skipped in all", step, self.consecutive_skips,
                  self.counters["skipped_updates"])

  def reload_if_diverging(self, step: int, state: Any) -> Any:
    limit = int(self.train_cfg.max_consecutive_nonfinite)
    if limit and self.consecutive_skips >= limit:
      state = self.reload(step, state, f"{self.consecutive_skips} non-finite steps in a row "
                                       f"(train.max_consecutive_nonfinite={limit})")
      self.consecutive_skips = 0
    return state

  def reload(self, step: int, state: Any, reason: str) -> Any:
    """The last good checkpoint's params and optimizer state at the current step, with
    the learning rate scaled down."""
    self.counters["nonfinite_reloads"] += 1
    most = int(self.train_cfg.max_nonfinite_reloads)
    if self.counters["nonfinite_reloads"] > most:
      raise TrainingStopped(
          f"step {step}: {reason}; train.max_nonfinite_reloads={most} reloads did not help. "
          f"Lower --config.train.learning_rate, or check the data.", DIVERGED_EXIT_CODE)
    self.wait(step)
    good = self.ckpts.restore_latest(self.abstract, None)
    good_step, fresh = (0, self.fresh_state()) if good is None else good
    self.counters["lr_scale"] *= float(self.train_cfg.nonfinite_lr_factor)
    self.lr_scale = self._device_scale()
    log.warning("step %d: %s; reloaded the params of step %d (reload %d of at most %d), "
                "learning rate now x%g", step, reason, good_step,
                self.counters["nonfinite_reloads"], most, self.counters["lr_scale"])
    return {"step": state["step"], "params": fresh["params"], "opt_state": fresh["opt_state"]}

  # --- Saves.

  def save(self, step: int, state: Any, data_iter: Any) -> Any:
    """A checkpoint of `step`; returns the state (reloaded when it was not finite)."""
    for _ in range(2):  # one retry
      try:
        self.ckpts.save(step, state, data_iter, meta=dict(self.counters))
        return state
      except checksums.NonFiniteState as e:
        state = self.reload(step, state, str(e))  # then the reloaded (finite) state
      except orbax_store.CheckpointWriteError as e:
        # The error may be an earlier asynchronous write's: this step once more.
        self.write_error(step, e, f"saving the checkpoint of step {step}")
    return state

  def save_snapshot(self, step: int, state: Any) -> Any:
    try:
      self.ckpts.save_snapshot(step, state["params"])
    except checksums.NonFiniteState as e:
      state = self.reload(step, state, str(e))
    except orbax_store.CheckpointWriteError as e:
      self.write_error(step, e, f"saving the params snapshot of step {step}")
    return state

  def save_final(self, step: int, params: Any) -> None:
    self.wait(step)
    try:
      self.ckpts.save_final(step, params)
    except orbax_store.CheckpointWriteError as e:
      self.write_error(step, e, "saving the final params")

  def wait(self, step: int) -> None:
    try:
      self.ckpts.wait()
    except orbax_store.CheckpointWriteError as e:
      self.write_error(step, e, "an asynchronous checkpoint write")

  def close(self, step: int, must_succeed: bool) -> None:
    """Waits for pending writes; a failure stops the run when the last checkpoint
    matters (`must_succeed`: the run ended or was stopped: step `step` must be on disk,
    as a full checkpoint or the final params, whatever on_write_error says) or
    on_write_error="stop"."""
    try:
      self.ckpts.close()
    except orbax_store.CheckpointWriteError as e:
      self.counters["checkpoint_write_errors"] += 1
      log.error("a pending checkpoint write failed; earlier checkpoints are intact: %s", e)
      self.ckpts.discard_partial()
      if must_succeed or self.ckpt_cfg.on_write_error == "stop":
        raise TrainingStopped(f"the last checkpoint write failed: {e}\nThe checkpoints "
                              f"already written are intact: rerun the same command to "
                              f"resume.", WRITE_ERROR_EXIT_CODE) from e
    if must_succeed and self.counters["checkpoint_write_errors"]:
      from mambaswelu_jax import workdir as layout  # pylint: disable=import-outside-toplevel
      saved = layout.steps(self.ckpts.workdir)
      if step not in saved and step not in layout.steps(self.ckpts.workdir, layout.FINAL):
        raise TrainingStopped(
            f"step {step}: neither its checkpoint nor its final params could be written "
            f"({int(self.counters['checkpoint_write_errors'])} failed write(s), see "
            f"{layout.TRAIN_LOG}); newest checkpoint: "
            f"{saved[-1] if saved else 'none'}. Free space (or fix the error) and rerun "
            f"the same command to resume from it.", WRITE_ERROR_EXIT_CODE)

  def write_error(self, step: int, error: Exception, what: str) -> None:
    self.counters["checkpoint_write_errors"] += 1
    log.error("step %d: %s failed; earlier checkpoints are intact: %s", step, what, error)
    self.ckpts.discard_partial()  # a full disk needs the half-written one's space back
    if self.ckpt_cfg.on_write_error == "stop":
      raise TrainingStopped(f"step {step}: {what} failed: {error}\nThe checkpoints already "
                            f"written are intact: free space (or fix the error) and rerun the "
                            f"same command to resume.", WRITE_ERROR_EXIT_CODE)
