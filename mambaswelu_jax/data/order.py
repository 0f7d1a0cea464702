"""DIR/data_order.jsonl: which batch every step trained on.

One line per step, {"step", "sha", "streams"}: a hash of the batch this process
trained on (inputs and targets), and one of each data stream's rows in it ({stream
number: hash}: the same whatever the number of processes that read the streams).
Cheap (one short write per step), it lets a test or a person check that a resumed run
saw exactly the batches of an uninterrupted one, also on another process count
(`read_stream_order`): after a crash the steps since the last checkpoint are recorded
again, each with the hash it had before. Process i > 0 writes data_order.<i>.jsonl. The lines are kept in memory
and written at each checkpoint (`flush`) through `workdir.AppendFile`: on a full disk
they stay in memory and are written when there is room again; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from mambaswelu_jax import workdir as layout

log = logging.getLogger("mambaswelu_jax.data.order")


def _hash(arrays: dict) -> str:
  h = hashlib.blake2b(digest_size=8)
  for k in sorted(arrays):
    a = np.ascontiguousarray(np.asarray(arrays[k]))
    h.update(k.encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


class DataOrderLog:
  """`streams`: (the first data stream of this process, how many it reads); a batch's
  rows are its streams' rows in order, an equal share each."""

  def __init__(self, workdir: str, start_step: int, process_index: int = 0,
               streams: tuple[int, int] = (0, 1)):
    self.first_stream, self.num_streams = streams
    name = layout.DATA_ORDER if process_index == 0 else f"data_order.{process_index}.jsonl"
    self.path = os.path.join(workdir, name)
    self._f = layout.AppendFile(self.path, on_error=lambda m: log.warning("data order: %s", m))
    self._lines: list[str] = []
    if start_step:
      self._lines.append(json.dumps({"resumed_at": int(start_step)}) + "\n")

  def record(self, step: int, arrays: dict) -> None:
    rows = len(next(iter(arrays.values()))) // self.num_streams
    streams = {str(self.first_stream + j): _hash({k: v[j * rows:(j + 1) * rows]
                                                  for k, v in arrays.items()})
               for j in range(self.num_streams)}
    self._lines.append(json.dumps({"step": int(step), "sha": _hash(arrays),
                                   "streams": streams}) + "\n")
    if len(self._lines) >= 1000:
      self.flush()

  def flush(self) -> None:
    self._f.append("".join(self._lines))
    self._lines = []

  def close(self) -> None:
    self.flush()
    if not self._f.close():
      log.warning("data order: %d byte(s) of %s could not be written (full disk?)",
                  len(self._f.pending), self.path)


def read_data_order(path: str) -> dict[int, list[str]]:
  """{step: [hash, ...]} from a data-order log (a step recorded again after a resume
  appears more than once; a line cut by a crash is ignored)."""
  out: dict[int, list[str]] = {}
  for r in layout.json_records(path):
    if "step" in r:
      out.setdefault(int(r["step"]), []).append(r["sha"])
  return out


def read_stream_order(workdir: str) -> dict[int, dict[str, list[str]]]:
  """{step: {stream: [hash, ...]}} over every process's data-order log of a workdir:
  what each data stream fed each step, whichever process read it (a step recorded
  again after a resume appears more than once)."""
  out: dict[int, dict[str, list[str]]] = {}
  for name in sorted(os.listdir(workdir)):
    if name == layout.DATA_ORDER or (name.startswith("data_order.") and name.endswith(".jsonl")):
      for r in layout.json_records(os.path.join(workdir, name)):
        for stream, sha in r.get("streams", {}).items():
          out.setdefault(int(r["step"]), {}).setdefault(stream, []).append(sha)
  return out
