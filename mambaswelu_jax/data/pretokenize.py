"""Pre-tokenization: a source's split -> shards of token ids with random access.

Layout of `<output_dir>/<split>/`:

  tokens_00000.bin ...   raw little-endian token ids (uint16 when the vocabulary
                         fits, else uint32); each document is followed by EOS
  index.json             {"dtype", "eos_id", "vocab_size", "tokenizer_sha256",
                          "source", "split", "complete",
                          "shards": [{"file", "tokens", "documents"}...],
                          "documents": total read, "skipped": {reason: count}}

The index is rewritten atomically after every finished shard, so an interrupted
run resumes at the first unfinished shard: it skips the documents already
written (reading, not tokenizing them) and rewrites the unfinished shard.

  python -m mambaswelu_jax.data.pretokenize --source=slimpajama \\
      --data_dir=/data/SlimPajama-627B --tokenizer=/data/study_tokenizer.model \\
      --output_dir=/data/slimpajama_tok --splits=train,validation

Readers: `TokenShards(dir)` (memmaps, `.read(start, length)` across shard
boundaries) and `TokenWindows(shards, window)` (a grain random-access source of
non-overlapping windows, used by the training pipeline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Iterable

import numpy as np

from mambaswelu_jax.data import sources as sources_lib
from mambaswelu_jax.data.sources import DataError

INDEX = "index.json"


def tokenizer_digest(tokenizer) -> str:
  return hashlib.sha256(tokenizer.model_proto).hexdigest()


def _write_index(directory: str, index: dict) -> None:
  tmp = os.path.join(directory, INDEX + ".tmp")
  with open(tmp, "w") as f:
    json.dump(index, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(directory, INDEX))


def _batched(iterable: Iterable, n: int):
  batch = []
  for item in iterable:
    batch.append(item)
    if len(batch) == n:
      yield batch
      batch = []
  if batch:
    yield batch


def pretokenize_split(source, tokenizer, split: str, output_dir: str, *,
                      shard_tokens: int = 1 << 28, max_tokens: int = 0,
                      encode_batch: int = 256, num_threads: int = 0) -> dict:
  """Writes (or resumes writing) one split's shards; returns its index."""
  directory = os.path.join(output_dir, split)
  os.makedirs(directory, exist_ok=True)
  dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
  index = {"dtype": dtype, "eos_id": tokenizer.eos_id,
           "vocab_size": tokenizer.vocab_size,
           "tokenizer_sha256": tokenizer_digest(tokenizer),
           "source": source.name, "split": split, "complete": False,
           "shards": [], "documents": 0, "skipped": {}}
  index_path = os.path.join(directory, INDEX)
  if os.path.exists(index_path):
    with open(index_path) as f:
      old = json.load(f)
    if old["tokenizer_sha256"] != index["tokenizer_sha256"]:
      raise DataError(f"{directory} was written with another tokenizer; use a "
                      f"new --output_dir")
    if old["complete"]:
      return old
    index["shards"] = old["shards"]
  done_docs = sum(s["documents"] for s in index["shards"])
  done_tokens = sum(s["tokens"] for s in index["shards"])
  threads = num_threads or os.cpu_count() or 1

  shard, shard_docs, shard_tok = None, 0, 0
  documents = 0

  def open_shard():
    name = f"tokens_{len(index['shards']):05d}.bin"
    return name, open(os.path.join(directory, name), "wb")

  def close_shard():
    nonlocal shard
    name, f = shard
    f.flush()
    os.fsync(f.fileno())
    f.close()
    index["shards"].append({"file": name, "tokens": shard_tok,
                            "documents": shard_docs})
    index["documents"] = done_docs + documents
    index["skipped"] = dict(source.skipped[split])
    _write_index(directory, index)
    shard = None

  stream = source.documents(split)
  for _ in range(done_docs):  # resume: these are in finished shards
    next(stream)
  total = done_tokens
  for docs in _batched((d["text"] for d in stream), encode_batch):
    for ids in tokenizer.encode_batch(docs, num_threads=threads):
      if shard is None:
        shard, shard_docs, shard_tok = open_shard(), 0, 0
      ids.append(tokenizer.eos_id)
      shard[1].write(np.asarray(ids, dtype).tobytes())
      shard_docs += 1
      shard_tok += len(ids)
      documents += 1
      total += len(ids)
      if shard_tok >= shard_tokens:
        close_shard()
    if max_tokens and total >= max_tokens:
      break
  if shard is not None:
    close_shard()
  index["complete"] = True
  index["documents"] = done_docs + documents
  index["skipped"] = dict(source.skipped[split])
  _write_index(directory, index)
  return index


class TokenShards:
  """Random access to a pre-tokenized split (all shards as one token stream)."""

  def __init__(self, directory: str):
    path = os.path.join(directory, INDEX)
    if not os.path.exists(path):
      raise DataError(f"no pre-tokenized data at {path}; write it with "
                      f"python -m mambaswelu_jax.data.pretokenize")
    with open(path) as f:
      self.index = json.load(f)
    if not self.index["complete"]:
      raise DataError(f"{directory} is incomplete (pre-tokenization was "
                      f"interrupted); rerun the same command to finish it")
    self.directory = directory
    self.skipped = dict(self.index.get("skipped", {}))
    self._arrays = [np.memmap(os.path.join(directory, s["file"]),
                              dtype=self.index["dtype"], mode="r")
                    for s in self.index["shards"] if s["tokens"]]
    sizes = [len(a) for a in self._arrays]
    self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self.num_tokens = int(self._starts[-1])

  def check_tokenizer(self, tokenizer) -> None:
    if self.index["tokenizer_sha256"] != tokenizer_digest(tokenizer):
      raise DataError(f"{self.directory} was tokenized with another tokenizer "
                      f"than the run's; pre-tokenize again or set "
                      f"config.data.tokenizer_path to the one used")

  def read(self, start: int, length: int) -> np.ndarray:
    """Tokens [start, start + length) of the stream as int32."""
    shard = int(np.searchsorted(self._starts, start, side="right")) - 1
    offset = start - int(self._starts[shard])
    first = self._arrays[shard][offset:offset + length]
    if len(first) == length:
      return first.astype(np.int32)
    parts, got = [first], len(first)
    while got < length:  # the window crosses a shard boundary
      shard += 1
      part = self._arrays[shard][:length - got]
      parts.append(part)
      got += len(part)
    return np.concatenate(parts).astype(np.int32)


class TokenWindows:
  """Non-overlapping windows of `window` tokens (a grain random-access source)."""

  def __init__(self, shards: TokenShards, window: int):
    self.shards = shards
    self.window = window

  def __len__(self) -> int:
    return self.shards.num_tokens // self.window

  def __getitem__(self, i: int) -> np.ndarray:
    if not 0 <= i < len(self):
      raise IndexError(i)
    return self.shards.read(i * self.window, self.window)


def main(argv=None) -> None:
  from mambaswelu_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", default="embedded")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--wikipedia_config", default="20230601.en")
  parser.add_argument("--try_gcs", action="store_true")
  parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--splits", default="train")
  parser.add_argument("--shard_tokens", type=int, default=1 << 28)
  parser.add_argument("--max_tokens", type=int, default=0,
                      help="stop a split after about this many tokens (0: all)")
  parser.add_argument("--num_threads", type=int, default=0)
  args = parser.parse_args(argv)
  source = sources_lib.make_source(
      {"source": args.source, "data_dir": args.data_dir,
       "wikipedia_config": args.wikipedia_config, "try_gcs": args.try_gcs})
  tokenizer = tokenizer_lib.load_tokenizer(args.tokenizer)
  for split in args.splits.split(","):
    start = time.time()
    index = pretokenize_split(source, tokenizer, split, args.output_dir,
                              shard_tokens=args.shard_tokens,
                              max_tokens=args.max_tokens,
                              num_threads=args.num_threads)
    tokens = sum(s["tokens"] for s in index["shards"])
    print(f"{split}: {tokens} tokens, {index['documents']} documents, "
          f"{len(index['shards'])} shards, skipped {index['skipped']} "
          f"({time.time() - start:.1f}s)", file=sys.stderr)


if __name__ == "__main__":
  main()
