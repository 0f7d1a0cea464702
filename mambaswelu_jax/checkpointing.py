"""A run's checkpoints (Orbax) and its recorded config.

Workdir layout::

  DIR/config.json              the resolved config this workdir was started with
  DIR/checkpoints/<step>/      full states, the newest checkpoint.max_to_keep:
      state/                     {"step", "params", "opt_state"} (Orbax PyTree)
      data/                      the grain iterator, one JSON file per process
      meta/                      JSON: checksums of the state's arrays, the run's fault counters
  DIR/snapshots/<step>/params/ params only, every checkpoint.snapshot_every_steps, kept forever
  DIR/final/<step>/params/     params at the end of training

Saves are asynchronous: the train state is copied off the device before
`save` returns and written in the background; the data-iterator state is
captured at `save` time. `restore_latest` walks back from the newest step until
one restores, logging each step it skips and why.

Integrity: every save records a checksum of each array (`meta/`, computed on the
device when saving) and a restore recomputes it, so a checkpoint whose bytes
changed on disk (garbage, a truncated or missing file that still decodes) is
refused with the array and the step named. A state with a non-finite array is
never written (`NonFiniteState`). A failed write (full disk, I/O error) leaves the
earlier checkpoints as they were: Orbax writes into a temporary directory and
renames it only when complete; `save` and `wait` raise `CheckpointWriteError`.
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


class CorruptCheckpoint(ValueError):
  """A checkpoint's arrays differ from the checksums recorded when it was saved."""


class NonFiniteState(ValueError):
  """A state to be saved holds NaN or Inf: it is not written."""


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (the earlier checkpoints are intact)."""


# ----------------------------------------------------------------------------
# Checksums of arrays (computed where the arrays live).
# ----------------------------------------------------------------------------


def _path_str(path) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree_util.keystr(path)


def _leaf_checksum(x):
  """A position-weighted sum of the array's bits modulo 2**32 (any dtype up to 32 bits)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(x).reshape(-1)
  width = x.dtype.itemsize
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif width in (1, 2, 4):
    utype = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    bits = jax.lax.bitcast_convert_type(x, utype).astype(jnp.uint32)
  else:  # 64-bit: both halves
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


def _finite(x):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.all(jnp.isfinite(x))
  return jnp.bool_(True)


def _checksums_and_finite(tree):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  @jax.jit
  def fn(t):
    leaves = jax.tree.leaves(t)
    sums = [_leaf_checksum(x) for x in leaves]
    finite = [_finite(x) for x in leaves]
    return sums, (jnp.all(jnp.stack(finite)) if finite else jnp.bool_(True)), finite

  sums, all_finite, finite = jax.device_get(fn(tree))
  paths = [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  bad = [p for p, f in zip(paths, finite) if not bool(f)]
  return {p: int(c) for p, c in zip(paths, sums)}, bool(all_finite), bad


def state_checksums(tree) -> dict[str, int]:
  """{array path: checksum} of a pytree of arrays."""
  return _checksums_and_finite(tree)[0]


def verify_checksums(tree, recorded: dict[str, int], where: str) -> None:
  """Raises CorruptCheckpoint when an array of `tree` differs from `recorded`
  (arrays absent from `recorded` are not checked)."""
  got = state_checksums(tree)
  wrong = [p for p, c in got.items() if p in recorded and int(recorded[p]) != c]
  if wrong:
    raise CorruptCheckpoint(
        f"{len(wrong)} array(s) differ from the checksums recorded at save (its files "
        f"changed on disk) in {where}: {', '.join(wrong[:5])}")


def _step_dir(directory, step) -> str:
  return os.path.join(str(directory), str(step))


def _read_meta(directory, step) -> dict | None:
  """The `meta` item of a step as written (None when that step has none)."""
  path = os.path.join(_step_dir(directory, step), "meta", "metadata")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


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
        item_names=("state", "data", "meta"))
    self.snapshots = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "snapshots"),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                             enable_async_checkpointing=async_save,
                                             multiprocessing_options=mp("snapshots")),
        item_names=("params", "meta"))
    self._final_options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        multiprocessing_options=mp("final"))
    self.final = None  # made when the run finishes
    self.restored_meta: dict = {}  # the `meta` of the checkpoint restore_latest returned

  def _data_save(self, data_iter):
    import grain  # pylint: disable=import-outside-toplevel
    return grain.checkpoint.CheckpointSave(data_iter)

  def _data_restore(self, data_iter):
    import grain  # pylint: disable=import-outside-toplevel
    return grain.checkpoint.CheckpointRestore(data_iter)

  def save(self, step: int, state: Any, data_iter: Any, meta: dict | None = None) -> None:
    """A full state at `step` (no-op when that step is already saved).

    `meta`: JSON-able counters stored beside the state (the array checksums are
    added). Raises NonFiniteState (nothing written) when an array holds NaN/Inf, and
    CheckpointWriteError when Orbax reports a failed write (of this step or of an
    earlier asynchronous one).
    """
    if step in self.states.all_steps():
      return
    ocp = self._ocp
    sums, finite, bad = _checksums_and_finite(state)
    if not finite:
      raise NonFiniteState(f"state of step {step} has non-finite values in "
                           f"{', '.join(bad[:5])}: not saved")
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave({**(meta or {}), "step": int(step), "checksums": sums})}
    if data_iter is not None:
      items["data"] = self._data_save(data_iter)
    with self._write_errors(f"checkpoint of step {step}"):
      self.states.save(step, args=ocp.args.Composite(**items), force=True)
    log.info("checkpoint: saving step %d to %s", step, self.states.directory)

  def _write_errors(self, what: str):
    """Orbax's errors while writing -> CheckpointWriteError naming what was written."""
    import contextlib  # pylint: disable=import-outside-toplevel

    @contextlib.contextmanager
    def ctx():
      try:
        yield
      except (NonFiniteState, CorruptCheckpoint):
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointWriteError(
            f"writing the {what} (or finishing an earlier asynchronous save) under "
            f"{self.workdir} failed: {type(e).__name__}: {e}") from e
    return ctx()

  def _params_items(self, params):
    ocp = self._ocp
    sums, finite, bad = _checksums_and_finite(params)
    if not finite:
      raise NonFiniteState(f"params have non-finite values in {', '.join(bad[:5])}: not saved")
    return ocp.args.Composite(params=ocp.args.StandardSave(params),
                              meta=ocp.args.JsonSave({"checksums": sums}))

  def save_snapshot(self, step: int, params: Any) -> None:
    if step in self.snapshots.all_steps():
      return
    with self._write_errors(f"params snapshot of step {step}"):
      self.snapshots.save(step, args=self._params_items(params), force=True)

  def save_final(self, step: int, params: Any) -> None:
    ocp = self._ocp
    if self.final is None:
      self.final = ocp.CheckpointManager(os.path.join(os.path.abspath(self.workdir), "final"),
                                         options=self._final_options,
                                         item_names=("params", "meta"))
    if step in self.final.all_steps():
      return
    with self._write_errors(f"final params of step {step}"):
      self.final.save(step, args=self._params_items(params), force=True)
    log.info("final params saved to %s/%d", self.final.directory, step)

  def latest_step(self) -> int | None:
    return self.states.latest_step()

  def restore_latest(self, abstract_state: Any, data_iter: Any
                     ) -> tuple[int, Any] | None:
    """(step, state) from the newest checkpoint that restores; None when none exists.

    `data_iter` is restored in place (None: the state only). A checkpoint that fails
    to restore, whose arrays differ from the checksums recorded at save, or that
    holds non-finite values is skipped with a warning naming it and the reason.
    The restored checkpoint's `meta` counters are in `self.restored_meta`.
    """
    ocp = self._ocp
    self.restored_meta = {}
    steps = sorted(self.states.all_steps(), reverse=True)
    for step in steps:
      where = _step_dir(self.states.directory, step)
      try:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
          items["data"] = self._data_restore(data_iter)
        meta = _read_meta(self.states.directory, step)
        restored = self.states.restore(step, args=ocp.args.Composite(**items))
        if meta is not None:
          verify_checksums(restored["state"], meta.get("checksums", {}), where)
        _, finite, bad = _checksums_and_finite(restored["state"])
        if not finite:
          raise NonFiniteState(f"{where}: non-finite values in {', '.join(bad[:5])}")
      except Exception as e:  # pylint: disable=broad-except
        log.warning("checkpoint %s does not restore, skipping it: %s: %s",
                    where, type(e).__name__, str(e)[:500])
        continue
      self.restored_meta = meta or {}
      if step != steps[0]:
        log.warning("restored checkpoint %s: the newer one(s) %s were skipped (see above)",
                    where, ", ".join(str(s) for s in steps if s > step))
      return step, restored["state"]
    return None

  def reached_preemption(self, step: int) -> bool:
    return bool(self.states.reached_preemption(step))

  def _managers(self):
    return [m for m in (self.states, self.snapshots, self.final) if m is not None]

  def wait(self) -> None:
    with self._write_errors("pending checkpoint"):
      for m in self._managers():
        m.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and closes; raises CheckpointWriteError after closing
    every manager when a pending save failed."""
    error = None
    for m in self._managers():
      try:
        with self._write_errors("pending checkpoint"):
          m.wait_until_finished()
      except CheckpointWriteError as e:
        error = error or e
      try:
        m.close()
      except Exception as e:  # pylint: disable=broad-except
        error = error or CheckpointWriteError(f"closing {m.directory}: {type(e).__name__}: {e}")
    if error is not None:
      raise error


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
    mngr = ocp.CheckpointManager(directory, item_names=(item, "meta"),
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
    meta = _read_meta(directory, s)
    if meta is not None:
      recorded = meta.get("checksums", {})
      if item == "state":  # the state's "['params']..." entries, as the params' paths
        recorded = {p[len("['params']"):]: c for p, c in recorded.items()
                    if p.startswith("['params']")}
      verify_checksums(params, recorded, _step_dir(directory, s))
    return s, params
  raise FileNotFoundError(f"no {kind} params checkpoint (step {step}) under {workdir}")
