"""A run's checkpoints through Orbax: full states (with the data iterator and a meta
item of checksums and fault counters), params snapshots and the final params, in the
places `workdir.LAYOUT` names; and `check_state_matches`, the shapes check before a
resume.

Saves are asynchronous: the train state is copied off the device before
`save` returns and written in the background; the data-iterator state is
captured at `save` time. `restore_latest` walks back from the newest step until
one restores, logging each step it skips and why, and moving it aside.
Before any of that, `check_state_matches` compares the stored arrays' shapes and
dtypes (Orbax metadata) with the model: a config whose model differs is refused
with the arrays named, and nothing is moved or written.

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
import shutil
import time
from typing import Any

import ml_collections

from mambaswelu_jax import workdir as layout
from mambaswelu_jax.checkpointing import data_streams
from mambaswelu_jax.checkpointing.checksums import CorruptCheckpoint, NonFiniteState
from mambaswelu_jax.checkpointing.checksums import verify_checksums
from mambaswelu_jax.checkpointing.checksums import _checksums_and_finite
from mambaswelu_jax.checkpointing.run_config import WorkdirConfigMismatch

log = logging.getLogger("mambaswelu_jax.checkpointing")


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (the earlier checkpoints are intact)."""


def _step_dir(directory, step) -> str:
  return os.path.join(str(directory), str(step))


def _read_meta(directory, step) -> dict | None:
  """The `meta` item of a step as written (None when that step has none)."""
  path = os.path.join(_step_dir(directory, step), "meta", "metadata")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _key_str(key) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes_by_path(tree) -> dict[tuple, tuple]:
  """{path as strings: (shape, dtype)}; the same for an abstract state and for Orbax's
  stored metadata (namedtuple fields and dict keys alike)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[tuple(_key_str(k) for k in path)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return out


class _DropOrbaxNotes:
  """A logging filter for Orbax's warnings that say nothing to a user: reading a
  composite checkpoint's item metadata looks for a _CHECKPOINT_METADATA file only the
  step directory has, and a read-only manager announces itself."""

  NOTES = ("Given directory is read only", "Metadata file does not exist")

  def filter(self, record):
    return not str(record.msg).startswith(self.NOTES)


def quiet_orbax_notes():
  """Context manager: Orbax's notes (_DropOrbaxNotes) are not logged inside it."""
  import contextlib  # pylint: disable=import-outside-toplevel
  import logging as std_logging  # pylint: disable=import-outside-toplevel

  @contextlib.contextmanager
  def ctx():
    note = _DropOrbaxNotes()
    loggers = [std_logging.getLogger("absl"), std_logging.getLogger()]
    for lg in loggers:
      lg.addFilter(note)
    try:
      yield
    finally:
      for lg in loggers:
        lg.removeFilter(note)
  return ctx()


def check_state_matches(workdir: str, abstract_state: Any) -> None:
  """Refuses (WorkdirConfigMismatch, nothing written) when the stored checkpoints hold a
  state of another structure, shape or dtype than `abstract_state`: such a config
  change cannot resume, with or without checkpoint.allow_config_change. One step that
  fits is enough: a step whose metadata cannot be read or differs while another fits is
  damage, left to `Checkpoints.restore_latest` (which moves it aside)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  want = _shapes_by_path(abstract_state)
  mismatch = None  # (where, stored shapes) of the newest readable step that differs
  for step in reversed(layout.steps(workdir)):
    where = os.path.join(workdir, layout.CHECKPOINTS, str(step))
    try:
      with quiet_orbax_notes():
        stored = ocp.StandardCheckpointer().metadata(os.path.join(where, "state"))
      have = _shapes_by_path(getattr(stored, "item_metadata", stored))
    except Exception:  # pylint: disable=broad-except
      continue
    if not have:  # metadata files missing: nothing to compare
      continue
    if have == want:
      return
    mismatch = mismatch or (where, have)
  if mismatch is None:
    return
  where, have = mismatch
  # The params first (the optimizer's moments mirror them), then the rest.
  order = lambda p: (p[0] != "params", p)  # pylint: disable=unnecessary-lambda-assignment
  diffs = [f"{'/'.join(p)}: stored {have[p][0]} {have[p][1]}, this config {want[p][0]} "
           f"{want[p][1]}" for p in sorted(set(have) & set(want), key=order)
           if have[p] != want[p]]
  diffs += [f"{'/'.join(p)}: stored, not in this config's model"
            for p in sorted(set(have) - set(want), key=order)]
  diffs += [f"{'/'.join(p)}: in this config's model, not stored"
            for p in sorted(set(want) - set(have), key=order)]
  shown = "\n  ".join(diffs[:8]) + (f"\n  ... and {len(diffs) - 8} more" if len(diffs) > 8
                                    else "")
  raise WorkdirConfigMismatch(
      f"the checkpoints in {where} do not fit this config's model ({len(diffs)} "
      f"array(s) differ):\n  {shown}\nA model of another shape cannot resume this run, "
      f"even with checkpoint.allow_config_change (it covers changes the checkpoints "
      f"restore into: learning rate, steps, data location, logging). Use a new "
      f"--workdir, or drop the --config.model.* overrides. Nothing was written.")


# ----------------------------------------------------------------------------
# Orbax.
# ----------------------------------------------------------------------------


class Checkpoints:
  """Full states (+ data iterator), params snapshots and the final params."""

  def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict,
               is_main: bool = True):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self._ocp = ocp
    self.workdir = workdir
    self.is_main = is_main  # the process that moves unrestorable checkpoints aside
    async_save = bool(ckpt_config.async_save)

    def mp(prefix):  # distinct barrier names: several managers may save one step at once
      return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)

    self.states = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), layout.CHECKPOINTS),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=int(ckpt_config.max_to_keep), create=True,
            cleanup_tmp_directories=is_main,
            enable_async_checkpointing=async_save, multiprocessing_options=mp("states")),
        item_names=("state", "data", "meta"))
    self.snapshots = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), layout.SNAPSHOTS),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                             cleanup_tmp_directories=is_main,
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
      self.final = ocp.CheckpointManager(os.path.join(os.path.abspath(self.workdir), layout.FINAL),
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
    holds non-finite values is skipped with a warning naming it and the reason, and
    moved aside to DIR/unrestorable_checkpoints/ (kept for inspection; its step is
    saved again when training reaches it). A data iterator saved for other data or
    settings is a config mismatch, not damage: WorkdirConfigMismatch, nothing moved.
    The restored checkpoint's `meta` counters are in `self.restored_meta`.
    """
    ocp = self._ocp
    self.restored_meta = {}
    steps = sorted(self.states.all_steps(), reverse=True)
    found = None
    for step in steps:
      where = _step_dir(self.states.directory, step)
      try:
        meta = _read_meta(self.states.directory, step)
        restored = self.states.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        if meta is not None:
          verify_checksums(restored["state"], meta.get("checksums", {}), where)
        _, finite, bad = _checksums_and_finite(restored["state"])
        if not finite:
          raise NonFiniteState(f"{where}: non-finite values in {', '.join(bad[:5])}")
        if data_iter is not None:
          self._restore_data(step, data_iter, where)
      except WorkdirConfigMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except
        log.warning("checkpoint %s does not restore, skipping it: %s: %s",
                    where, type(e).__name__, str(e)[:500])
        self._move_aside(step)
        continue
      self.restored_meta = meta or {}
      if step != steps[0]:
        log.warning("restored checkpoint %s: the newer one(s) %s were skipped (see above)",
                    where, ", ".join(str(s) for s in steps if s > step))
      found = step, restored["state"]
      break
    if found is None or found[0] != steps[0]:
      self.states.reload()  # forget the steps moved aside, so they are saved again
    return found

  def _restore_data(self, step: int, data_iter: Any, where: str) -> None:
    """The data iterator's state at `step`: through grain's handler when this process
    count wrote the checkpoint, else this process's streams out of every stream's state
    (`data_streams.stream_states`: the same batches on another process count)."""
    from mambaswelu_jax.data.sources import DataError  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    data_dir = os.path.join(where, "data")
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    try:
      if os.path.isdir(data_dir) and not os.path.exists(os.path.join(data_dir, own)):
        states = data_streams.stream_states(data_dir)
        if states is None:
          raise ValueError(f"{data_dir} holds no complete set of data-stream states")
        try:
          data_iter.set_stream_states(states)
        except ValueError as e:  # another stream count: other batches, not damage
          raise WorkdirConfigMismatch(
              f"{where}: {e}; resume with the run's own train.data_streams. Nothing was "
              f"written.") from e
        data_iter.start_prefetch()
        log.info("%s: %d data stream(s) written by another process count, %d read here",
                 where, len(states), len(data_iter.iterators))
        return
      self.states.restore(step, args=self._ocp.args.Composite(
          data=self._data_restore(data_iter)))
    except Exception as e:  # pylint: disable=broad-except
      cause = e
      while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__ or cause.__context__
      if cause is None:
        raise
      raise WorkdirConfigMismatch(
          f"{where}: {cause}\nUse a new --workdir for other data, or the run's own "
          f"data settings. Nothing was written.") from e

  def _move_aside(self, step: int) -> None:
    """DIR/checkpoints/<step> -> DIR/unrestorable_checkpoints/step_<step>.<UTC time>."""
    if not self.is_main:
      return
    source = _step_dir(self.states.directory, step)
    aside = os.path.join(self.workdir, layout.UNRESTORABLE)
    target = os.path.join(aside, f"step_{step}." + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    try:
      os.makedirs(aside, exist_ok=True)
      shutil.move(source, target)
    except OSError as e:
      log.warning("could not move %s aside: %s", source, e)
      return
    log.warning("moved %s to %s (kept for inspection; training resumes from an older "
                "checkpoint and saves again every checkpoint.every_steps; step %d itself is "
                "saved again only if it falls on that cadence or the run stops there)",
                source, target, step)

  def discard_partial(self) -> list[str]:
    """After a failed write: waits for the saves in flight (their errors are already
    reported), then removes the temporary directories of unfinished checkpoints
    (`<step>.orbax-checkpoint-tmp*`), which a full disk needs back. Returns them."""
    for m in self._managers():
      try:
        m.wait_until_finished()
      except Exception:  # pylint: disable=broad-except
        pass
    removed = []
    if not self.is_main:
      return removed
    for m in self._managers():
      directory = str(m.directory)
      try:
        names = os.listdir(directory)
      except OSError:
        continue
      for name in names:
        if ".orbax-checkpoint-tmp" in name:
          path = os.path.join(directory, name)
          shutil.rmtree(path, ignore_errors=True)
          removed.append(path)
    if removed:
      log.warning("removed the unfinished checkpoint(s) %s", ", ".join(removed))
    return removed

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
  with quiet_orbax_notes():
    return _restore_params(workdir, abstract_params, step, kind)


def _restore_params(workdir, abstract_params, step, kind) -> tuple[int, Any]:
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
    with quiet_orbax_notes():
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
