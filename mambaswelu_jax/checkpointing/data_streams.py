"""The data streams a workdir's run reads, as its checkpoints and config record them
(standard library only: main and the launcher read it before JAX starts).

The global batch is made of `train.data_streams` independent streams (0 in a config:
one per process when the run starts); the batches depend on that number, not on the
process count. Each process saves the states of its streams
(checkpoints/<step>/data/process_<i>-of-<N>.json: one grain iterator state, or
{"streams": [...]}), so a checkpoint holds every stream's state whatever the number of
processes that wrote it, and a run resumes on any process count that divides its
streams: the same batches, in the same order (`stream_states` gathers them).
"""

from __future__ import annotations

import json
import os
import re

_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


def _data_files(data_dir: str) -> dict[int, list[str]] | None:
  """{process count: the files process_0-of-N .. process_{N-1}-of-N, in order}, for the
  counts whose files are all there."""
  try:
    names = os.listdir(data_dir)
  except OSError:
    return None
  by_count: dict[int, dict[int, str]] = {}
  for m in map(_DATA_FILE.match, names):
    if m:
      by_count.setdefault(int(m.group(2)), {})[int(m.group(1))] = m.group(0)
  return {n: [os.path.join(data_dir, files[i]) for i in range(n)]
          for n, files in by_count.items() if set(files) == set(range(n))}


def _states_in(path: str) -> list:
  """The stream states one process saved: a list (several streams) or one state."""
  with open(path, encoding="utf-8") as f:
    state = json.load(f)
  return list(state["streams"]) if isinstance(state, dict) and "streams" in state else [state]


def stream_states(data_dir: str) -> list | None:
  """Every stream's saved state, in stream order (process 0's streams first), from a
  checkpoint's data/ directory; None when it holds no complete set."""
  files = _data_files(data_dir)
  if not files:
    return None
  return [s for path in files[max(files)] for s in _states_in(path)]


def newest_checkpoint_streams(workdir: str) -> tuple[int, int, int] | None:
  """(step, processes, streams) of the newest full checkpoint that records its data."""
  root = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
  try:
    steps = sorted((int(s) for s in os.listdir(root) if s.isdigit()), reverse=True)
  except OSError:
    return None
  for step in steps:
    data_dir = os.path.join(root, str(step), "data")
    files = _data_files(data_dir)
    if files:
      try:
        return step, max(files), len(stream_states(data_dir))
      except (OSError, ValueError):
        continue
  return None


def recorded_data_streams(workdir: str) -> int:
  """The data streams of the run a workdir holds (0: none yet). Its recorded config's
  train.data_streams; for a config that recorded 0 (one stream per process), the
  streams its newest checkpoint holds."""
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      recorded = int(json.load(f).get("train", {}).get("data_streams", 0) or 0)
  except (OSError, ValueError, AttributeError):
    recorded = 0
  if recorded:
    return recorded
  found = newest_checkpoint_streams(workdir)
  return found[2] if found else 0


def mismatch(workdir: str, processes: int) -> str | None:
  """One line when this workdir's run cannot continue on `processes` processes (its
  data streams do not split evenly over them), else None."""
  streams = recorded_data_streams(workdir)
  if not streams or streams % processes == 0:
    return None
  fits = [n for n in range(1, streams + 1) if streams % n == 0]
  return (f"--workdir={workdir}: the run reads {streams} data stream(s) (its batches and "
          f"their order), which {processes} process(es) cannot share evenly; resume it on "
          f"{' or '.join(map(str, fits))} process(es), or start a new workdir")
