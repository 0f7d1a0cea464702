"""A run's data, as the trainer sees it: the workdir's tokenizer (checked against
the model), the resumable training iterator and the validation batches.

A thin layer over `mambaswelu_jax.data` (sources, tokenizer, grain pipeline). In a
multi-process run process 0 prepares `DIR/tokenizer.model` (copied, reused, or
trained on the source) while the others wait, then every process loads it.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np

from mambaswelu_jax.config_validation import ConfigError

log = logging.getLogger("mambaswelu_jax.data.run_data")


def data_streams(config: ml_collections.ConfigDict, process_count: int | None = None) -> int:
  """How many independent data streams make the global batch (train.data_streams, or one
  per process). The batches depend on this number, not on the process count: runs with
  the same streams see the same data on any number of processes."""
  process_count = jax.process_count() if process_count is None else process_count
  return int(config.train.data_streams) or process_count


class _Streams:
  """Several grain iterators of one process as one: batches concatenated row-wise in
  stream order; checkpointed by grain's handler as one JSON document."""

  def __init__(self, iterators):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(it) for it in self.iterators]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts], 0) for k in parts[0]}

  def get_state(self) -> bytes:
    return json.dumps({"streams": [it.get_state() for it in self.iterators]}).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)["streams"]
    if len(states) != len(self.iterators):
      raise ValueError(f"the checkpoint holds {len(states)} data streams for this process, "
                       f"the run has {len(self.iterators)}")
    for it, st in zip(self.iterators, states):
      it.set_state(st)

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after it restores the state."""
    for it in self.iterators:
      if hasattr(it, "start_prefetch"):
        it.start_prefetch()


class RunData:

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, num_devices: int | None = None):
    from mambaswelu_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
    from mambaswelu_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
    self.config = config
    self._pipeline = pipeline
    self.source = sources.make_source(config.data)   # DataError now when data is missing
    path = os.path.join(workdir, "tokenizer.model")
    if jax.process_index() == 0:
      path = tokenizer_lib.prepare_tokenizer(config.data, workdir, source=self.source)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("mambaswelu_jax: tokenizer ready")
    self.tokenizer = tokenizer_lib.load_tokenizer(path)
    vocab = int(config.model.vocab_size)
    if self.tokenizer.vocab_size != vocab:
      raise ConfigError(
          f"config key 'model.vocab_size' = {vocab} does not match the tokenizer "
          f"{path} ({self.tokenizer.vocab_size} tokens). Set "
          f"--config.model.vocab_size={self.tokenizer.vocab_size}, or point "
          f"data.tokenizer_path at a tokenizer with {vocab} tokens (a workdir keeps "
          f"its tokenizer.model once made).")
    log.info("tokenizer %s: %d tokens", path, self.tokenizer.vocab_size)
    streams = data_streams(config)
    per_process = streams // jax.process_count()
    first = jax.process_index() * per_process
    self.datasets = [
        pipeline.make_train_dataset(
            config.data, self.tokenizer, int(config.train.global_batch_size),
            seed=int(config.seed), process_index=k, process_count=streams, source=self.source)
        for k in range(first, first + per_process)]
    self.train_iter = (iter(self.datasets[0]) if per_process == 1
                       else _Streams([iter(d) for d in self.datasets]))
    self._eval = None
    self.num_devices = jax.device_count() if num_devices is None else num_devices

  def eval_batches(self):
    """This process's validation batches (the same ones at every evaluation)."""
    if self._eval is None:
      ec = self.config.eval
      global_batch = int(ec.batch_per_device) * self.num_devices
      seq_len = int(self.config.data.seq_len)
      max_tokens = int(ec.max_batches) * global_batch * seq_len
      self._eval = self._pipeline.make_eval_batches(
          self.source, self.tokenizer, "validation", global_batch, seq_len,
          max_tokens=max_tokens, process_index=jax.process_index(),
          process_count=jax.process_count())
    return self._eval
