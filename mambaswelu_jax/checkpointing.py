"""A run's checkpoints (Orbax) and its recorded config.

Workdir layout::

  DIR/config.json              the resolved config this workdir was started with
  DIR/checkpoints/<step>/      full states, the newest checkpoint.max_to_keep:
      state/                     {"step", "params", "opt_state"} (Orbax PyTree)
      data/                      the grain iterator, one JSON file per process
  DIR/snapshots/<step>/params/ params only, every checkpoint.snapshot_every_steps, kept forever
  DIR/final/<step>/params/     params at the end of training

Saves are asynchronous: the train state is copied off the device before
`save` returns and written in the background; the data-iterator state is
captured at `save` time. `restore_latest` walks back from the newest step until
one restores, logging each step it skips and why.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ml_collections

from mambaswelu_jax import config_validation

log = logging.getLogger("mambaswelu_jax.checkpointing")

CONFIG_FILE = "config.json"


class WorkdirConfigMismatch(config_validation.ConfigError):
  """The workdir was written by a different config."""


# ----------------------------------------------------------------------------
# The recorded config.
# ----------------------------------------------------------------------------


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a workdir records (for eval/generate tools)."""
  with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def check_or_record_config(workdir: str, config: ml_collections.ConfigDict,
                           is_main: bool = True) -> bool:
  """Records `config` in a new workdir, or checks it against the recorded one.

  Returns True when the workdir already held a run. Raises WorkdirConfigMismatch
  when a key outside `config_validation.RESUMABLE_CHANGES` differs and
  `checkpoint.allow_config_change` is off.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  existed = os.path.exists(path)
  if existed:
    with open(path, encoding="utf-8") as f:
      old = config_validation.flatten(json.load(f))
    new = config_validation.flatten(json.loads(config_to_json(config)))
    changes = config_validation.diff(old, new)
    if changes and not config.checkpoint.allow_config_change:
      shown = "\n  ".join(changes[:20])
      raise WorkdirConfigMismatch(
          f"workdir {workdir} was written by a different config:\n  {shown}\n"
          f"Use a new --workdir for a new run, or resume with this config anyway by "
          f"adding --config.checkpoint.allow_config_change=True (the new config is "
          f"then recorded in {path}).")
    if changes:
      log.warning("resuming %s with a changed config (allowed):\n  %s", workdir,
                  "\n  ".join(changes))
  elif os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
      os.path.join(workdir, "checkpoints")):
    raise WorkdirConfigMismatch(
        f"workdir {workdir} holds checkpoints but no {CONFIG_FILE}, so its config is "
        f"unknown. Use a new --workdir, or write the run's config to {path}.")
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(config_to_json(config))
    os.replace(tmp, path)
  return existed


# ----------------------------------------------------------------------------
# Orbax.
# ----------------------------------------------------------------------------


class Checkpoints:
  """Full states (+ data iterator), params snapshots and the final params."""

  def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self._ocp = ocp
    self.workdir = workdir
    async_save = bool(ckpt_config.async_save)

    def mp(prefix):  # distinct barrier names: several managers may save one step at once
      return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)

    self.states = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=int(ckpt_config.max_to_keep), create=True,
            enable_async_checkpointing=async_save, multiprocessing_options=mp("states")),
        item_names=("state", "data"))
    self.snapshots = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "snapshots"),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                             enable_async_checkpointing=async_save,
                                             multiprocessing_options=mp("snapshots")),
        item_names=("params",))
    self._final_options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        multiprocessing_options=mp("final"))
    self.final = None  # made when the run finishes

  def _data_save(self, data_iter):
    import grain  # pylint: disable=import-outside-toplevel
    return grain.checkpoint.CheckpointSave(data_iter)

  def _data_restore(self, data_iter):
    import grain  # pylint: disable=import-outside-toplevel
    return grain.checkpoint.CheckpointRestore(data_iter)

  def save(self, step: int, state: Any, data_iter: Any) -> None:
    """A full state at `step` (no-op when that step is already saved)."""
    if step in self.states.all_steps():
      return
    ocp = self._ocp
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = self._data_save(data_iter)
    self.states.save(step, args=ocp.args.Composite(**items), force=True)
    log.info("checkpoint: saving step %d to %s", step, self.states.directory)

  def save_snapshot(self, step: int, params: Any) -> None:
    if step in self.snapshots.all_steps():
      return
    ocp = self._ocp
    self.snapshots.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                        force=True)

  def save_final(self, step: int, params: Any) -> None:
    ocp = self._ocp
    if self.final is None:
      self.final = ocp.CheckpointManager(os.path.join(os.path.abspath(self.workdir), "final"),
                                         options=self._final_options, item_names=("params",))
    if step in self.final.all_steps():
      return
    self.final.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                    force=True)
    log.info("final params saved to %s/%d", self.final.directory, step)

  def latest_step(self) -> int | None:
    return self.states.latest_step()

  def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[int, Any] | None:
    """(step, state) from the newest checkpoint that restores; None when none exists.

    `data_iter` is restored in place. Checkpoints that fail are skipped with a warning.
    """
    ocp = self._ocp
    steps = sorted(self.states.all_steps(), reverse=True)
    for step in steps:
      try:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
          items["data"] = self._data_restore(data_iter)
        restored = self.states.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        log.warning("checkpoint %s/%d does not restore, skipping it: %s: %s",
                    self.states.directory, step, type(e).__name__, str(e)[:500])
        continue
      return step, restored["state"]
    return None

  def reached_preemption(self, step: int) -> bool:
    return bool(self.states.reached_preemption(step))

  def _managers(self):
    return [m for m in (self.states, self.snapshots, self.final) if m is not None]

  def wait(self) -> None:
    for m in self._managers():
      m.wait_until_finished()

  def close(self) -> None:
    for m in self._managers():
      m.wait_until_finished()
      m.close()


def restore_params(workdir: str, abstract_params: Any, step: int | None = None,
                   kind: str = "auto") -> tuple[int, Any]:
  """Params from a workdir for evaluation or generation.

  kind: "final", "snapshots", "checkpoints", or "auto" (final, else the newest
  full checkpoint, else the newest snapshot).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None) or one_device),
      abstract_params)
  kinds = ("final", "checkpoints", "snapshots") if kind == "auto" else (kind,)
  for k in kinds:
    directory = os.path.join(os.path.abspath(workdir), k)
    if not os.path.isdir(directory):
      continue
    item = "state" if k == "checkpoints" else "params"
    mngr = ocp.CheckpointManager(directory, item_names=(item,),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    s = step if step is not None else mngr.latest_step()
    if s is None or s not in mngr.all_steps():
      mngr.close()
      continue
    if item == "state":
      target = {"params": abstract_params}
      restored = mngr.restore(s, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item=target, partial_restore=True,
              # The target's shardings, not the saved ones: another device count works.
              restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
      params = restored["state"]["params"]
    else:
      restored = mngr.restore(s, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))
      params = restored["params"]
    mngr.close()
    return s, params
  raise FileNotFoundError(f"no {kind} params checkpoint (step {step}) under {workdir}")
