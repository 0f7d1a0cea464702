"""A run's workdir: the names of what it holds, one atomic write, one step lister.

Standard library only: the study tools that read workdirs import this without JAX.

  config.json            the resolved config of the run
  config_history/        earlier configs, when a change was accepted on resume
  tokenizer.model        the run's SentencePiece model
  checkpoints/<step>/    full train states (Orbax) + the data iterator + meta
  snapshots/<step>/      params only, kept forever
  final/<step>/          the params at the end of training
  unrestorable_checkpoints/step_<N>.<UTC time>/   checkpoints moved aside (not steps)
  metrics.jsonl          one JSON record per written step (append-only)
  tensorboard/           TensorBoard events
  train.log              the progress log
  data_order.jsonl       a hash of every step's batch
  eval/<step>.json       the evaluation tool's results
"""

from __future__ import annotations

import json
import os
from typing import Iterator

CONFIG = "config.json"
CONFIG_HISTORY = "config_history"
TOKENIZER = "tokenizer.model"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
FINAL = "final"
UNRESTORABLE = "unrestorable_checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
TRAIN_LOG = "train.log"
DATA_ORDER = "data_order.jsonl"
EVAL = "eval"
# Where params live, in the order `latest` looks (params-only kinds first: cheaper).
PARAMS_KINDS = (FINAL, SNAPSHOTS, CHECKPOINTS)


def steps(workdir: str, kind: str = CHECKPOINTS) -> list[int]:
  """The saved steps of DIR/<kind> (directories named by a step number), ascending."""
  directory = os.path.join(workdir, kind)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes a whole file or nothing: a temporary file, synced, renamed over `path`."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb" if isinstance(data, bytes) else "w",
            **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def ends_with_newline(path: str) -> bool:
  """False for a file whose last line was cut by a crash (appenders add a newline first)."""
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def json_records(path: str) -> Iterator[dict]:
  """The JSON objects of a JSON-lines file, one per line; a line cut short by a crash
  (or anything that is not an object) is skipped."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict):
        yield record
