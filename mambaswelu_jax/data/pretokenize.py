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

Big splits: run `--num_tasks=N --task_index=i` for i in 0..N-1 in parallel; task i
reads only its part of the source (SlimPajama: files i, i+N, ...; Wikipedia: the
i-th of N contiguous tfds parts) into `<split>/task_<i>-of-<N>/` (same layout);
readers join the tasks in order. Each task resumes on its own. As a SLURM array job,
`--task_index=-1` takes the task from SLURM_ARRAY_TASK_ID (and --num_tasks, when 0,
from SLURM_ARRAY_TASK_COUNT):

  sbatch --array=0-63 --wrap="python -m mambaswelu_jax.cli.pretokenize ... \
      --num_tasks=64 --task_index=-1"

  python -m mambaswelu_jax.cli.pretokenize --source=slimpajama \\
      --data_dir=/data/SlimPajama-627B --tokenizer=/data/study_tokenizer.model \\
      --output_dir=/data/slimpajama_tok --splits=train,validation

Readers: `TokenShards(dir)` (memmaps, `.read(start, length)` across shard
boundaries) and `TokenWindows(shards, window)` (a grain random-access source of
non-overlapping windows, used by the training pipeline).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

import numpy as np

from mambaswelu_jax.data.sources import DataError
from mambaswelu_jax.workdir import atomic_write

INDEX = "index.json"


def tokenizer_digest(tokenizer) -> str:
  return hashlib.sha256(tokenizer.model_proto).hexdigest()


def _write_index(directory: str, index: dict) -> None:
  atomic_write(os.path.join(directory, INDEX), json.dumps(index, indent=1))


def _batched(iterable: Iterable, n: int):
  batch = []
  for item in iterable:
    batch.append(item)
    if len(batch) == n:
      yield batch
      batch = []
  if batch:
    yield batch


def task_dirname(task_index: int, num_tasks: int) -> str:
  return f"task_{task_index:05d}-of-{num_tasks:05d}"


def pretokenize_split(source, tokenizer, split: str, output_dir: str, *,
                      shard_tokens: int = 1 << 28, max_tokens: int = 0,
                      encode_batch: int = 256, num_threads: int = 0,
                      task_index: int = 0, num_tasks: int = 1) -> dict:
  """Writes (or resumes writing) one split's shards; returns its index.

  With num_tasks > 1, this call handles the source's part task_index of
  num_tasks (whole files for SlimPajama, contiguous tfds parts for Wikipedia)
  into `<split>/task_<i>-of-<n>/`; run the tasks in parallel (one process or
  machine each); readers join them in task order.
  """
  if not 0 <= task_index < num_tasks:
    raise ValueError(f"task_index {task_index} not in [0, {num_tasks})")
  directory = os.path.join(output_dir, split)
  if num_tasks > 1:
    directory = os.path.join(directory, task_dirname(task_index, num_tasks))
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

  stream = source.documents(split, shard_index=task_index, num_shards=num_tasks)
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


def _read_index(directory: str) -> dict:
  with open(os.path.join(directory, INDEX)) as f:
    index = json.load(f)
  if not index["complete"]:
    raise DataError(f"{directory} is incomplete (pre-tokenization was "
                    f"interrupted); rerun the same command to finish it")
  return index


def _task_dirs(directory: str) -> list[str]:
  """The task_*-of-N subdirectories, all N of them, in task order."""
  names = sorted(n for n in os.listdir(directory) if n.startswith("task_"))
  if not names:
    return []
  num_tasks = int(names[0].rsplit("-of-", 1)[1])
  want = [task_dirname(i, num_tasks) for i in range(num_tasks)]
  if names != want:
    missing = sorted(set(want) - set(names))
    raise DataError(f"{directory}: pre-tokenization tasks missing or mixed: "
                    f"{missing or names}; run every --task_index of "
                    f"--num_tasks={num_tasks}")
  return [os.path.join(directory, n) for n in names]


class TokenShards:
  """Random access to a pre-tokenized split (all shards as one token stream)."""

  def __init__(self, directory: str):
    if os.path.exists(os.path.join(directory, INDEX)):
      dirs = [directory]
    else:
      dirs = _task_dirs(directory) if os.path.isdir(directory) else []
    if not dirs:
      raise DataError(f"no pre-tokenized data at {directory}/{INDEX}; write it "
                      f"with python -m mambaswelu_jax.cli.pretokenize")
    indexes = [_read_index(d) for d in dirs]
    if len({i["tokenizer_sha256"] for i in indexes}) != 1:
      raise DataError(f"{directory}: tasks were written with different "
                      f"tokenizers")
    self.index = indexes[0]
    self.digest = hashlib.sha256(json.dumps(
        [i["shards"] for i in indexes]).encode()).hexdigest()[:16]
    self.directory = directory
    self.skipped = {}  # tasks read disjoint parts: their counts add up
    for i in indexes:
      for reason, n in i.get("skipped", {}).items():
        self.skipped[reason] = self.skipped.get(reason, 0) + n
    self._arrays = [np.memmap(os.path.join(d, s["file"]), dtype=i["dtype"],
                              mode="r")
                    for d, i in zip(dirs, indexes)
                    for s in i["shards"] if s["tokens"]]
    sizes = [len(a) for a in self._arrays]
    self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self.num_tokens = int(self._starts[-1])
    self.itemsize = np.dtype(self.index["dtype"]).itemsize
    # Bytes of token data this reader has read (a data stream reads only its windows).
    self.bytes_read = 0

  def check_tokenizer(self, tokenizer) -> None:
    if self.index["tokenizer_sha256"] != tokenizer_digest(tokenizer):
      raise DataError(f"{self.directory} was tokenized with another tokenizer "
                      f"than the run's; pre-tokenize again or set "
                      f"config.data.tokenizer_path to the one used")

  def read(self, start: int, length: int) -> np.ndarray:
    """Tokens [start, start + length) of the stream as int32."""
    self.bytes_read += length * self.itemsize
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
