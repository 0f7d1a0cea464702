"""Test helpers: small data in the real on-disk formats (nothing is downloaded).

  write_slimpajama(root) -> list of the good train records of chunk1
      a SlimPajama-627B-layout directory with broken records and a truncated
      file (see the function for what each file holds).
"""

import json
import os

from mambaswelu_jax.data import sources


def record(text, set_name="RedPajamaC4"):
  return json.dumps({"text": text, "meta": {"redpajama_set_name": set_name}})


def write_zst(path, lines, frames=1, truncate=False):
  import zstandard  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n"
                  for l in lines)
  step = -(-len(data) // frames)
  blob = b"".join(zstandard.ZstdCompressor().compress(data[i:i + step])
                  for i in range(0, len(data), step))
  if truncate:
    blob = blob[:len(blob) - 7]
  with open(path, "wb") as f:
    f.write(blob)


def write_slimpajama(root):
  """Two train chunks (one file cut short, one with bad lines) + holdout splits."""
  good = [record(f"train doc {i} é 中", s)
          for i, s in enumerate(sources.SLIMPAJAMA_SETS * 2)]
  write_zst(f"{root}/train/chunk1/example_train_0.jsonl.zst", good, frames=3)
  bad = [record("kept one"),
         b'{"text": "no closing brace"',          # malformed JSON
         b'{"text": "caf\xe9", "meta": {}}',      # invalid UTF-8
         record(""),                              # empty text
         json.dumps({"text": 3, "meta": {}}),     # not a string
         record("unknown set", "Reddit"),        # unknown set name
         json.dumps({"text": "\ud800 lone surrogate",
                     "meta": {"redpajama_set_name": "RedPajamaC4"}}),
         b"",                                      # blank line: ignored
         record("kept two", "RedPajamaGithub")]
  write_zst(f"{root}/train/chunk2/example_train_10.jsonl.zst", bad)
  write_zst(f"{root}/train/chunk2/example_train_2.jsonl.zst",
             [record(f"cut {i}" * 50) for i in range(200)], truncate=True)
  for split in ("validation", "test"):
    write_zst(f"{root}/{split}/chunk1/example_holdout_0.jsonl.zst",
               [record(f"{split} doc {i}", "RedPajamaBook") for i in range(5)])
  return [json.loads(g) for g in good]
