"""What a run writes into its workdir only once its first step has run, and how it
leaves the workdir as it found it when it fails or is stopped before that."""

from __future__ import annotations

import os
import shutil

import ml_collections

from mambaswelu_jax import metrics as metrics_lib
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.checkpointing import run_config
from mambaswelu_jax.training.fault_tolerance import WRITE_ERROR_EXIT_CODE, TrainingStopped


class WorkdirStart:
  """What a run writes into its workdir only once its first step has run: the config
  (config.json, with the previous one kept if it changed), train.log (records held in
  memory until then) and the metrics writers. A run that fails or is stopped before
  that leaves the workdir as it found it: a workdir this run created is removed, and
  in an existing one the entries it added are (a checkpoint moved aside stays)."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, is_main: bool,
               existed: bool):
    self.workdir, self.config, self.is_main = workdir, config, is_main
    self.existed = existed
    self.entries = (set(os.listdir(workdir)) | {layout.LOCK}) if existed else set()
    self.log_handler = metrics_lib.add_train_log(workdir, is_main)
    self.done = False

  def commit(self, step: int) -> None:
    if self.done:
      return
    if self.is_main:
      try:
        run_config.record_config(self.workdir, self.config, step)
      except OSError as e:  # a full disk: checkpoints without their config cannot resume
        raise TrainingStopped(
            f"writing {os.path.join(self.workdir, layout.CONFIG)} failed: {e}\nNo checkpoint "
            f"of this attempt was written; free space (or fix the error) and rerun the "
            f"same command.", WRITE_ERROR_EXIT_CODE) from e
    metrics_lib.start_train_log(self.log_handler, self.workdir)
    self.done = True

  def roll_back(self) -> None:
    if self.done or not self.is_main or not os.path.isdir(self.workdir):
      return
    if not self.existed:
      shutil.rmtree(self.workdir, ignore_errors=True)
      return
    for name in set(os.listdir(self.workdir)) - self.entries - {layout.UNRESTORABLE}:
      path = os.path.join(self.workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        try:
          os.remove(path)
        except OSError:
          pass

  def close(self) -> None:
    metrics_lib.remove_train_log(self.log_handler)
