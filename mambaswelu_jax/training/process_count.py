"""The process count a workdir's newest checkpoint was written with (standard library only).

Each process saves its own data-iterator state (checkpoints/<step>/data/
process_<i>-of-<N>.json), so a checkpoint restores only with the same number of
processes. Resuming on another count is refused before anything is written or
compiled, rather than the checkpoint being taken for damaged and the run restarting
from an older one.
"""

from __future__ import annotations

import os
import re

_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


def newest_checkpoint_processes(workdir: str) -> tuple[int, int] | None:
  """(step, processes) of the newest full checkpoint that records its data state."""
  root = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
  try:
    steps = sorted((int(s) for s in os.listdir(root) if s.isdigit()), reverse=True)
  except OSError:
    return None
  for step in steps:
    try:
      names = os.listdir(os.path.join(root, str(step), "data"))
    except OSError:
      continue
    counts = {int(m.group(2)) for m in map(_DATA_FILE.match, names) if m}
    if len(counts) == 1:
      return step, counts.pop()
  return None


def mismatch(workdir: str, processes: int) -> str | None:
  """One line when the newest checkpoint needs another process count, else None."""
  found = newest_checkpoint_processes(workdir)
  if not found or found[1] == processes:
    return None
  step, saved = found
  return (f"--workdir={workdir}: checkpoint {step} was written by {saved} process(es) and "
          f"this run has {processes}; each process's data-iterator state is saved "
          f"separately, so resume with {saved} process(es) (or start a new workdir)")
