"""A workdir's recorded config and the checks before a run writes anything: the
workdir itself (`check_workdir`), the config against the one it records
(`check_config`), and writing it (`record_config`, an accepted change keeps the
previous config in DIR/config_history/). The files are named in `workdir.LAYOUT`.
"""

from __future__ import annotations

import json
import logging
import os
import time

import ml_collections

from mambaswelu_jax import config_validation
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.workdir import atomic_write

log = logging.getLogger("mambaswelu_jax.checkpointing")


class WorkdirConfigMismatch(config_validation.ConfigError):
  """The workdir was written by a different config."""


# ----------------------------------------------------------------------------
# The recorded config.
# ----------------------------------------------------------------------------


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


# Keys added to the schema after runs had recorded their configs, with the value that
# reproduces what those runs computed: a config.json without the key ran that way
# (before them the head had a residual, Linears the fan-in init, no dropout, SWELU's
# slope capped at |z| = 1e-6).
KEYS_ADDED_LATER = {"model.dense_residual": True, "model.dropout": 0.0,
                    "model.init": "fan_in", "model.swelu_eps": 0.0,
                    "model.swelu_k_param": "softplus"}


def complete_config(recorded: dict) -> dict:
  """A recorded config (a dict) with every schema key: a key it lacks gets its
  KEYS_ADDED_LATER value, else the schema default (keys that do not change the
  model's function)."""
  out = json.loads(json.dumps(recorded))
  have = config_validation.flatten(out)
  for key, default in config_validation.flatten(config_validation.reference_config()).items():
    if key in have:
      continue
    *blocks, name = key.split(".")
    node = out
    for block in blocks:
      node = node.setdefault(block, {})
    node[name] = KEYS_ADDED_LATER.get(key, default)
  return out


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a workdir records (for eval/generate tools), completed
  (`complete_config`)."""
  with open(os.path.join(workdir, layout.CONFIG), encoding="utf-8") as f:
    return ml_collections.ConfigDict(complete_config(json.load(f)))


def check_workdir(workdir: str) -> None:
  """Refuses (ConfigError) a workdir that is a file or cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_validation.ConfigError(
        f"--workdir={workdir} is a file, not a directory: give a directory path (a new "
        f"one starts a run, an existing run's resumes it).")
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise config_validation.ConfigError(
        f"--workdir={workdir} cannot be made: {existing} is a file, not a directory.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise config_validation.ConfigError(
        f"--workdir={workdir} is not writable ({existing} does not allow this user to "
        f"write): choose a directory you can write, or fix its permissions.")


def check_config(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Checks `config` against the one `workdir` records; writes nothing.

  Returns True when the workdir already holds a run. Raises WorkdirConfigMismatch
  when a key outside `config_validation.RESUMABLE_CHANGES` differs and
  `checkpoint.allow_config_change` is off (whether the stored state restores into
  the new model is checked separately, by `check_state_matches`).
  """
  path = os.path.join(workdir, layout.CONFIG)
  if os.path.exists(path):
    old, new = _flat_config_file(path), _flat(config)
    if old.get("train.data_streams") == 0:
      # Recorded before the stream count was resolved: 0 was one per process, which
      # `data_streams.recorded_data_streams` has read back from the checkpoints.
      old["train.data_streams"] = new.get("train.data_streams")
    changes = config_validation.diff(old, new)
    if changes and not config.checkpoint.allow_config_change:
      shown = "\n  ".join(changes[:20])
      raise WorkdirConfigMismatch(
          f"workdir {workdir} was written by a different config:\n  {shown}\n"
          f"Use a new --workdir for a new run, or resume with this config anyway by "
          f"adding --config.checkpoint.allow_config_change=True (allowed when the "
          f"checkpoints still restore into the model; the old config is kept in "
          f"{os.path.join(workdir, layout.CONFIG_HISTORY)}/).")
    if changes:
      log.warning("resuming %s with a changed config (allowed):\n  %s", workdir,
                  "\n  ".join(changes))
    return True
  if layout.steps(workdir):
    raise WorkdirConfigMismatch(
        f"workdir {workdir} holds checkpoints but no {layout.CONFIG}, so its config is "
        f"unknown. Use a new --workdir, or write the run's config to {path}.")
  return False


def record_config(workdir: str, config: ml_collections.ConfigDict, step: int) -> None:
  """Writes `config` to DIR/config.json. A different config already there (an
  accepted change) is first copied to DIR/config_history/, so no config is lost."""
  path = os.path.join(workdir, layout.CONFIG)
  text = config_to_json(config)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = f.read()
    if old == text:
      return
    history = os.path.join(workdir, layout.CONFIG_HISTORY)
    os.makedirs(history, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = os.path.join(history, f"config.until_step_{step}.{stamp}.json")
    atomic_write(kept, old)
    log.info("config changed at step %d: the previous config is kept in %s", step, kept)
  atomic_write(path, text)


def _flat(config: ml_collections.ConfigDict) -> dict:
  return config_validation.flatten(json.loads(config_to_json(config)))


def _flat_config_file(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return config_validation.flatten(complete_config(json.load(f)))
