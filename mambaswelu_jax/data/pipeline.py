"""Grain input pipelines: resumable training batches and deterministic eval batches.

Training (`make_train_dataset(data_cfg, tokenizer, global_batch_size, seed=...,
process_index=..., process_count=...)` -> `grain.IterDataset`):

  documents of the train split -> seeded shuffle (reshuffled every epoch) ->
  this process's share (`[process_index::process_count]`) -> tokenize (+ EOS),
  `data_cfg.tokenize_chunk_docs` documents per task, in `data_cfg.num_workers`
  grain worker processes (0 = in this process) -> pack into windows of
  seq_len + 1 tokens in this process -> batch.

  Each batch is a dict of numpy arrays, b = global_batch_size // process_count:

    "inputs"             int32 (b, seq_len)  window[:-1]
    "targets"            int32 (b, seq_len)  window[1:]
    "skipped_documents"  int32 (b,)          every row equal: the cumulative number
                         of bad records skipped while reading the data this run
                         trains on (counted when the split is loaded, or read from
                         the pre-tokenized shards' index). It is a plain field of
                         every batch, so it crosses worker processes and survives
                         checkpoint / resume without extra state; the trainer logs
                         `batch["skipped_documents"][0]`. Per-reason counts are in
                         `dataset.skipped` (a dict) on the returned dataset.

  Packing runs after the worker processes, so the batches do not depend on the
  number of workers. `iter(ds)` is a grain DatasetIterator: save it with
  `grain.checkpoint.CheckpointSave(it)` in an Orbax CheckpointManager and restore
  with `grain.checkpoint.CheckpointRestore(it)` (or `it.get_state()` /
  `it.set_state(state)`, a small JSON-able dict); the restored iterator yields the
  very next batch. Same seed and process count give the same batches. The state
  carries a fingerprint (document ids, tokenizer, seq_len, batch, seed, process
  index / count, num_workers); restoring it into a pipeline built differently
  raises DataError rather than feeding other batches.

  With `data_cfg.pretokenized_dir` set, training reads token windows from shards
  written by `python -m mambaswelu_jax.cli.pretokenize` (random access, memmap):
  seeded shuffle of windows of seq_len + 1 consecutive tokens of the token stream
  (documents already separated by EOS), same batch format.

  On-the-fly mode holds the split's text in memory (at most
  `data_cfg.max_text_bytes` bytes, else a DataError asks you to pre-tokenize).

Evaluation (`make_eval_batches(source, tokenizer, split, batch_size, seq_len,
max_tokens=0, process_index=0, process_count=1)` -> `EvalBatches`, re-iterable):

  documents in source order, no shuffle, one token stream [EOS] doc1 EOS doc2 EOS
  ... cut into rows of seq_len predictions (row r's inputs are the seq_len tokens
  before its targets, so every token of every document is a target exactly once),
  until the split ends or `max_tokens` targets are covered. Batches:

    "inputs", "targets"  int32 (b, seq_len)
    "weights"            float32 (b, seq_len)  1 real target, 0 padding
    "target_bytes"       int32 (b, seq_len)    UTF-8 bytes the target token stands
                         for (0 for EOS / padding); the sum over a document is
                         len(text.encode("utf-8")), so
                         bits/byte = sum(nll * weights) / (ln 2 * sum(target_bytes))
    "text_type"          int32 (b, seq_len)    index into source.text_types

  Every process gets the same number of batches (the last global batch is padded),
  so collective eval steps stay in lockstep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterator

import grain
import numpy as np

from mambaswelu_jax.data import sources as sources_lib
from mambaswelu_jax.data.sources import DataError


def _cfg(data_cfg, key, default):
  return sources_lib.config_value(data_cfg, key, default)


# --------------------------------------------------------------------------
# Documents held in memory for the on-the-fly training mode.


@dataclasses.dataclass
class LoadedSplit:
  texts: list[str]
  text_chars: int
  skipped: dict[str, int]
  digest: str  # of the document ids, in order: names the data a state is for


def load_split(source, split: str, max_documents: int = 0,
               max_text_bytes: int = 8 << 30) -> LoadedSplit:
  """Reads a split's texts (bad records skipped and counted); fails if empty."""
  estimate = source.estimated_bytes(split)
  if not max_documents and estimate and estimate > max_text_bytes:
    raise DataError(_too_big(source, split, max_text_bytes, f"~{estimate}"))
  texts, total, ids = [], 0, hashlib.sha256()
  for doc in source.documents(split):
    texts.append(doc["text"])
    ids.update(doc["id"].encode("utf-8", "replace") + b"\0")
    total += len(doc["text"])
    if max_documents and len(texts) >= max_documents:
      break
    if total > max_text_bytes:
      raise DataError(_too_big(source, split, max_text_bytes, "more"))
  skipped = dict(source.skipped[split])
  if not texts:
    raise DataError(f"{source.name}: no usable documents in the {split} split "
                    f"(skipped: {skipped or 'none'}); check config.data.")
  return LoadedSplit(texts, total, skipped,
                     f"{source.name}:{len(texts)}:{ids.hexdigest()[:16]}")


def _too_big(source, split, max_text_bytes, size) -> str:
  return (f"{source.name} {split}: {size} bytes of text, over "
          f"config.data.max_text_bytes={max_text_bytes}; on-the-fly mode keeps "
          f"the split in memory. Pre-tokenize it (python -m "
          f"mambaswelu_jax.cli.pretokenize ...) and set "
          f"config.data.pretokenized_dir, or set config.data.max_documents.")


class Tokenize:
  """Text -> int32 ids followed by EOS (a grain map; picklable for workers)."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  def __call__(self, text: str) -> np.ndarray:
    ids = self.tokenizer.encode(text)
    ids.append(self.tokenizer.eos_id)
    return np.asarray(ids, np.int32)


class TokenizeChunk:
  """A few texts -> their ids, each followed by EOS, as one int32 array.

  Packing only sees the concatenated stream, so chunking documents changes no
  batch; it cuts the per-element cost of grain's worker queues.
  """

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  def __call__(self, texts: list[str]) -> np.ndarray:
    eos = [self.tokenizer.eos_id]
    ids = [i for doc in self.tokenizer.encode_batch(list(texts))
           for i in doc + eos]
    return np.asarray(ids, np.int32)


# --------------------------------------------------------------------------
# Packing and the state guard.


class PackIterDataset(grain.IterDataset):
  """Concatenates 1-D token arrays and cuts windows of `window` tokens.

  No token is lost or repeated: the windows, joined, are exactly the parent's
  stream (the final partial window of a finite stream is dropped).
  """

  def __init__(self, parent, window: int):
    super().__init__(parent)
    self.window = window

  def __iter__(self):
    return _PackIterator(self._parent.__iter__(), self.window)


class _PackIterator(grain.DatasetIterator):
  """State: the parent's state before the current document + offset in it."""

  def __init__(self, parent_it, window: int):
    super().__init__(parent_it)
    self._window = window
    self._doc = None
    self._doc_state = None
    self._offset = 0

  def _next_doc(self):
    self._doc_state = self._parent.get_state()
    self._doc = next(self._parent)
    self._offset = 0

  def __next__(self) -> np.ndarray:
    out = np.empty(self._window, np.int32)
    filled = 0
    while filled < self._window:
      if self._doc is None or self._offset >= len(self._doc):
        self._next_doc()
      n = min(self._window - filled, len(self._doc) - self._offset)
      out[filled:filled + n] = self._doc[self._offset:self._offset + n]
      filled += n
      self._offset += n
    return out

  def get_state(self) -> dict:
    if self._doc is None:
      return {"parent": self._parent.get_state(), "offset": -1}
    return {"parent": self._doc_state, "offset": self._offset}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._doc, self._doc_state, self._offset = None, None, 0
    if state["offset"] >= 0:
      self._next_doc()  # re-reads (and re-tokenizes) the current document
      self._offset = state["offset"]


def pack_dataset(parent, window: int) -> PackIterDataset:
  return PackIterDataset(parent, window)


class GuardIterDataset(grain.IterDataset):
  """Adds `fingerprint` to the iterator state; restoring a state made for other
  data, tokenizer or batch layout raises DataError instead of silently feeding
  different batches."""

  def __init__(self, parent, fingerprint: dict):
    super().__init__(parent)
    self.fingerprint = fingerprint

  def __iter__(self):
    return _GuardIterator(self._parent.__iter__(), self.fingerprint)


class _GuardIterator(grain.DatasetIterator):

  def __init__(self, parent_it, fingerprint: dict):
    super().__init__(parent_it)
    self._fingerprint = fingerprint

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict:
    return {"fingerprint": self._fingerprint,
            "pipeline": self._parent.get_state()}

  def set_state(self, state: dict) -> None:
    saved, now = state.get("fingerprint", {}), self._fingerprint
    if saved != now:
      diff = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
              if saved.get(k) != now.get(k)}
      raise DataError(f"the checkpointed data iterator was made for other data "
                      f"or settings (saved, now): {diff}; resume with the same "
                      f"data config, seed and process count")
    self._parent.set_state(state["pipeline"])


def guard_dataset(parent, fingerprint: dict) -> GuardIterDataset:
  return GuardIterDataset(parent, fingerprint)


def _fingerprint(data: str, tokenizer, seq_len, batch, seed, process_index,
                 process_count, num_workers) -> dict:
  return {"data": data,
          "tokenizer": hashlib.sha256(tokenizer.model_proto).hexdigest()[:16],
          "seq_len": int(seq_len), "batch": int(batch), "seed": int(seed),
          "process": f"{process_index}/{process_count}",
          "num_workers": int(num_workers)}


class _ToTrainBatch:
  """(b, seq_len + 1) windows -> the training batch dict."""

  def __init__(self, skipped_documents: int):
    self.skipped_documents = skipped_documents

  def __call__(self, windows: np.ndarray) -> dict:
    return {"inputs": np.ascontiguousarray(windows[:, :-1]),
            "targets": np.ascontiguousarray(windows[:, 1:]),
            "skipped_documents": np.full((windows.shape[0],),
                                         self.skipped_documents, np.int32)}


def _absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; outside an absl app (tests,
  notebooks, the benchmark) nothing parsed them, so take their defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def per_process_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by "
                     f"{process_count} processes")
  return global_batch_size // process_count


# --------------------------------------------------------------------------
# Training.


def make_train_dataset(data_cfg, tokenizer, global_batch_size: int, *,
                       seed: int = 0, process_index: int = 0,
                       process_count: int = 1, source=None,
                       num_workers: int | None = None):
  """The training IterDataset (see the module docstring for the format)."""
  seq_len = int(_cfg(data_cfg, "seq_len", 1024))
  batch = per_process_batch(global_batch_size, process_count)
  pretokenized = _cfg(data_cfg, "pretokenized_dir", "")
  if pretokenized:
    return _pretokenized_train_dataset(
        pretokenized, tokenizer, seq_len, batch, seed, process_index,
        process_count)
  source = source or sources_lib.make_source(data_cfg)
  loaded = load_split(source, "train", int(_cfg(data_cfg, "max_documents", 0)),
                      int(_cfg(data_cfg, "max_text_bytes", 8 << 30)))
  ds = grain.MapDataset.source(loaded.texts).shuffle(seed=seed).repeat(None)
  chunk = int(_cfg(data_cfg, "tokenize_chunk_docs", 8))
  ds = ds[process_index::process_count].batch(chunk, batch_fn=list)
  ds = ds.map(TokenizeChunk(tokenizer)).to_iter_dataset()
  workers = _cfg(data_cfg, "num_workers", 0) if num_workers is None else num_workers
  if workers > 0:
    _absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers,
        per_worker_buffer_size=int(_cfg(data_cfg, "worker_buffer_size", 16))))
  ds = pack_dataset(ds, seq_len + 1).batch(batch, drop_remainder=True)
  ds = ds.map(_ToTrainBatch(sum(loaded.skipped.values())))
  ds = guard_dataset(ds, _fingerprint(loaded.digest, tokenizer, seq_len, batch,
                                      seed, process_index, process_count,
                                      workers))
  ds.skipped = loaded.skipped
  return ds


def _pretokenized_train_dataset(directory, tokenizer, seq_len, batch, seed,
                                process_index, process_count):
  from mambaswelu_jax.data import pretokenize  # pylint: disable=g-import-not-at-top
  shards = pretokenize.TokenShards(os.path.join(directory, "train"))
  shards.check_tokenizer(tokenizer)
  windows = pretokenize.TokenWindows(shards, seq_len + 1)
  if len(windows) < batch * process_count:
    raise DataError(f"{directory}/train holds {shards.num_tokens} tokens: fewer "
                    f"than one global batch of {seq_len + 1}-token windows")
  ds = grain.MapDataset.source(windows).shuffle(seed=seed).repeat(None)
  ds = ds[process_index::process_count].batch(batch, drop_remainder=True)
  skipped = shards.skipped
  ds = ds.map(_ToTrainBatch(sum(skipped.values()))).to_iter_dataset()
  data = f"pretokenized:{shards.num_tokens}:{shards.digest}"
  ds = guard_dataset(ds, _fingerprint(data, tokenizer, seq_len, batch, seed,
                                      process_index, process_count, 0))
  ds.skipped = skipped
  ds.shards = shards  # its `bytes_read`: this stream reads only its own windows
  return ds


# --------------------------------------------------------------------------
# Evaluation.


def _eval_rows(source, tokenizer, split, seq_len, max_tokens
               ) -> Iterator[tuple[np.ndarray, ...]]:
  """Rows (inputs, targets, weights, target_bytes, text_type) of one stream."""
  type_index = {t: i for i, t in enumerate(source.text_types)}
  eos = tokenizer.eos_id
  tok, typ = [eos], [0]  # the stream starts with EOS: first token is a target
  start, emitted = 0, 0  # `start`: index in tok of the next row's first input

  def row(end):
    inputs = np.asarray(tok[start:end], np.int32)
    targets = np.asarray(tok[start + 1:end + 1], np.int32)
    types = np.asarray(typ[start + 1:end + 1], np.int32)
    n = len(targets)
    pad = seq_len - n
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    nbytes = tokenizer.token_bytes[targets].astype(np.int32)
    fill = lambda a: np.concatenate([a, np.zeros(pad, a.dtype)])
    return (fill(inputs[:n]), fill(targets), weights, fill(nbytes), fill(types))

  for doc in source.documents(split):
    ids = tokenizer.encode(doc["text"])
    ids.append(eos)
    tok.extend(ids)
    typ.extend([type_index[doc["text_type"]]] * len(ids))
    while len(tok) - 1 - start >= seq_len:  # a full row of targets is ready
      yield row(start + seq_len)
      emitted += seq_len
      start += seq_len
      if max_tokens and emitted >= max_tokens:
        return
    if start > 1 << 16:  # drop consumed tokens, keep the row's first input
      del tok[:start], typ[:start]
      start = 0
  if len(tok) - 1 > start:
    yield row(len(tok) - 1)


class EvalBatches:
  """Re-iterable eval batches for this process; built once, then cached."""

  def __init__(self, source, tokenizer, split, batch_size, seq_len,
               max_tokens=0, process_index=0, process_count=1):
    self.args = (source, tokenizer, split, seq_len, max_tokens)
    self.local = per_process_batch(batch_size, process_count)
    self.global_batch = batch_size
    self.process_index = process_index
    self._cache: list[dict] | None = None
    self.skipped: dict[str, int] = {}

  def _build(self) -> list[dict]:
    source, tokenizer, split, seq_len, max_tokens = self.args
    rows = list(_eval_rows(source, tokenizer, split, seq_len, max_tokens))
    self.skipped = dict(source.skipped[split])
    if not rows:
      raise DataError(f"{source.name}: the {split} split has no documents "
                      f"(skipped: {self.skipped or 'none'})")
    fields = [np.stack(f) for f in zip(*rows)]
    n_global = -(-len(rows) // self.global_batch)
    pad = n_global * self.global_batch - len(rows)
    fields = [np.concatenate([f, np.zeros((pad,) + f.shape[1:], f.dtype)])
              for f in fields]
    names = ("inputs", "targets", "weights", "target_bytes", "text_type")
    batches = []
    for g in range(n_global):
      lo = g * self.global_batch + self.process_index * self.local
      batches.append({k: f[lo:lo + self.local] for k, f in zip(names, fields)})
    return batches

  def __iter__(self):
    if self._cache is None:
      self._cache = self._build()
    return iter(self._cache)

  def __len__(self):
    if self._cache is None:
      self._cache = self._build()
    return len(self._cache)


def make_eval_batches(source, tokenizer, split: str, batch_size: int,
                      seq_len: int, max_tokens: int = 0, process_index: int = 0,
                      process_count: int = 1) -> EvalBatches:
  """Deterministic eval batches (see the module docstring for the format)."""
  return EvalBatches(source, tokenizer, split, batch_size, seq_len, max_tokens,
                     process_index, process_count)
