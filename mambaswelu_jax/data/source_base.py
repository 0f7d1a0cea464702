"""The document-source interface and the embedded corpus (the running Python's standard
library, parsed with `ast`, never imported): what every source builds on, and what the
smoke samples are written from. `sources` re-exports these names.
"""

from __future__ import annotations

import ast
import collections
import functools
import glob
import hashlib
import io
import os
import sys
import sysconfig
from typing import Any, Iterator

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
  """Missing, empty or misconfigured data (raised before training starts)."""


def config_value(data_cfg, key: str, default: Any) -> Any:
  """Reads an optional key from a ConfigDict or a plain dict."""
  if isinstance(data_cfg, dict):
    return data_cfg.get(key, default)
  return getattr(data_cfg, key, default) if key in data_cfg else default


def split_of(key: str, validation_fraction: float, test_fraction: float) -> str:
  """Stable split of a document key: the same on every machine and every run."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  if u < validation_fraction:
    return "validation"
  if u < validation_fraction + test_fraction:
    return "test"
  return "train"


def check_fractions(name: str, validation: float, test: float) -> None:
  if not (0 < validation and 0 <= test and validation + test < 1):
    raise DataError(f"{name} source: need 0 < validation_fraction "
                    f"({validation}) and 0 <= test_fraction ({test}) with a sum "
                    f"below 1 (the trainer evaluates on validation)")


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class Source:
  """Base class: a named collection of documents with fixed splits."""

  name = "source"
  text_types: list[str] = []

  def __init__(self):
    self.skipped: dict[str, collections.Counter] = {
        s: collections.Counter() for s in SPLITS}

  def check(self) -> None:
    """Raises DataError when the data is missing; cheap (no full read)."""

  def documents(self, split: str, shard_index: int = 0, num_shards: int = 1
                ) -> Iterator[dict]:
    """The split's documents in a fixed order; with num_shards > 1, the
    shard_index-th of num_shards disjoint parts (for parallel readers)."""
    raise NotImplementedError

  def estimated_bytes(self, split: str) -> int | None:
    """A cheap upper estimate of the split's text size, or None if unknown."""
    del split
    return None

  def _skip(self, split: str, reason: str, n: int = 1) -> None:
    self.skipped[split][reason] += n


class InMemorySource(Source):
  """Documents given as {split: [doc, ...]} (tests, notebooks, small corpora)."""

  def __init__(self, docs_by_split: dict, text_types: list[str],
               name: str = "memory"):
    super().__init__()
    self.name = name
    self.text_types = list(text_types)
    self._docs = {s: list(docs_by_split.get(s, ())) for s in SPLITS}

  def documents(self, split: str, shard_index: int = 0, num_shards: int = 1
                ) -> Iterator[dict]:
    check_split(split)
    for doc in self._docs[split][shard_index::num_shards]:
      yield dict(doc)


# --------------------------------------------------------------------------
# embedded: the running Python's standard library.

_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages",
                  "__pycache__"}


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=2)
def _stdlib_documents(root: str) -> tuple[tuple[tuple[str, str, str], ...], dict]:
  """Parses every stdlib .py file once per process: ((key, type, text), ...).

  Files are parsed with `ast`, never imported (imports have side effects).
  """
  docs, skipped = [], collections.Counter()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
    for filename in sorted(filenames):
      if not filename.endswith(".py"):
        continue
      path = os.path.join(dirpath, filename)
      key = os.path.relpath(path, root).replace(os.sep, "/")
      parsed = _parse_python_file(path)
      if parsed is None:
        skipped["unparsable_python_file"] += 1
        continue
      source, docstrings = parsed
      if docstrings:
        docs.append((key, "docstring", docstrings))
      if source.strip():
        docs.append((key, "code", source))
  return tuple(docs), dict(skipped)


def _parse_python_file(path: str) -> tuple[str, str] | None:
  """Returns (source text, its docstrings joined) or None when unreadable."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
    tree = ast.parse(raw)
    # The encoding cookie is honoured by ast; decode the same way for the text.
    import tokenize  # pylint: disable=g-import-not-at-top
    encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    source = raw.decode(encoding)
  except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
    return None
  return source, _docstrings(tree)


def _docstrings(tree: ast.AST) -> str:
  """The module's docstrings in source order, each headed by its qualified name."""
  parts = []

  def visit(node, prefix):
    doc = ast.get_docstring(node, clean=True)
    if doc:
      parts.append(f"{prefix or '<module>'}\n{doc}" if prefix else doc)
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        visit(child, f"{prefix}.{child.name}" if prefix else child.name)

  visit(tree, "")
  return "\n\n".join(parts)


class EmbeddedSource(Source):
  """Docstrings and source code of the running Python's standard library.

  Two text types: "docstring" (human-written prose, one document per module:
  its docstrings with qualified names) and "code" (the module's source file).
  Both documents of a module share the split of the module's path, so no text of
  a held-out module is trained on.
  """

  name = "embedded"
  text_types = ["docstring", "code"]

  def __init__(self, root: str | None = None, validation_fraction: float = 0.02,
               test_fraction: float = 0.02):
    super().__init__()
    self.root = root or stdlib_root()
    self.validation_fraction = validation_fraction
    self.test_fraction = test_fraction

  def check(self) -> None:
    check_fractions(self.name, self.validation_fraction, self.test_fraction)
    if not glob.glob(os.path.join(self.root, "*.py")):
      raise DataError(
          f"embedded source: no Python standard library .py files under "
          f"{self.root!r} (looked for {self.root}/*.py). This Python install "
          f"ships without its library sources; install the full Python "
          f"(e.g. the python3.X-dev / python3-full package) or use another "
          f"data.source.")

  def documents(self, split: str, shard_index: int = 0, num_shards: int = 1
                ) -> Iterator[dict]:
    check_split(split)
    docs, skipped = _stdlib_documents(self.root)
    self.skipped[split] = collections.Counter(
        skipped if shard_index == 0 else {})  # count file errors once
    mine = (d for d in docs
            if split_of(d[0], self.validation_fraction,
                        self.test_fraction) == split)
    for i, (key, text_type, text) in enumerate(mine):
      if i % num_shards == shard_index:
        yield {"text": text, "text_type": text_type, "id": f"{text_type}:{key}"}

  def estimated_bytes(self, split: str) -> int:
    return sum(b for (_, s), b in self.describe()["bytes_by_type_split"].items()
               if s == split)

  def describe(self) -> dict:
    """Sizes in UTF-8 bytes: total and per (text_type, split)."""
    docs, _ = _stdlib_documents(self.root)
    sizes = collections.Counter()
    for key, text_type, text in docs:
      n = len(text.encode("utf-8"))
      sizes[(text_type, split_of(key, self.validation_fraction,
                                 self.test_fraction))] += n
    return {"root": self.root, "python": sys.version.split()[0],
            "documents": len(docs), "bytes": sum(sizes.values()),
            "bytes_by_type_split": dict(sizes)}


# --------------------------------------------------------------------------
# slimpajama: local copy of cerebras/SlimPajama-627B.
