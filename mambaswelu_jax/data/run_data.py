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


class Streams:
  """This process's data streams (numbers `first` .. `first + len(iterators) - 1` of
  the run's `total`) as one iterator: batches concatenated row-wise in stream order;
  checkpointed by grain's handler as one JSON document, {"streams": [state, ...]}."""

  def __init__(self, iterators, first: int, total: int):
    self.iterators, self.first, self.total = iterators, first, total

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(it) for it in self.iterators]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts], 0) for k in parts[0]}

  def get_state(self) -> bytes:
    return json.dumps({"streams": [it.get_state() for it in self.iterators]}).encode()

  def set_state(self, state: bytes) -> None:
    """This process's streams from its own file (one bare iterator state: a checkpoint
    written before streams were saved as a list)."""
    saved = json.loads(state)
    self._set(saved["streams"] if isinstance(saved, dict) and "streams" in saved else [saved])

  def set_stream_states(self, states: list) -> None:
    """This process's streams out of every stream's state, in stream order (a
    checkpoint written by another number of processes)."""
    if len(states) != self.total:
      raise ValueError(f"the checkpoint holds {len(states)} data stream(s), this run reads "
                       f"{self.total} (train.data_streams)")
    self._set(states[self.first:self.first + len(self.iterators)])

  def _set(self, states: list) -> None:
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
    # The run's streams (resolved: train.data_streams, else the recorded run's, else
    # one per process); this process reads `per_process` of them.
    streams = int(config.train.data_streams) or jax.process_count()
    per_process = streams // jax.process_count()
    first = jax.process_index() * per_process
    self.datasets = [
        pipeline.make_train_dataset(
            config.data, self.tokenizer, int(config.train.global_batch_size),
            seed=int(config.seed), process_index=k, process_count=streams, source=self.source)
        for k in range(first, first + per_process)]
    self.train_iter = Streams([iter(d) for d in self.datasets], first, streams)
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
