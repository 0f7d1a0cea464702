"""Document sources: the offline embedded corpus, SlimPajama and Wikipedia.

Every source yields documents as plain dicts::

  {"text": str, "text_type": str, "id": str}

Public names:

  DataError              ValueError raised for missing / empty / misconfigured data,
                         before any model compiles.
  SPLITS                 ("train", "validation", "test").
  make_source(data_cfg)  builds the source named by `data_cfg.source` and runs its
                         cheap `check()`; returns a `Source`. A non-empty
                         `data_cfg.text_types` ("docstring" or "docstring,code")
                         keeps only documents of those types, in every split:
                         one corpus gives "a mixture of types" (empty, the
                         default) and "a single type" datasets.
                         With `data_cfg.smoke_sample` (set by `:smoke` configs)
                         and no `data_dir`, slimpajama and wikipedia read a
                         small sample in their real format, written once from
                         the embedded corpus (data/smoke_sample.py).
  TypeFilteredSource(source, types)  that restriction around any source.
  InMemorySource(docs_by_split, text_types)   documents held in a dict.
  Source                 `.name`, `.text_types` (stable order),
                         `.documents(split, shard_index=0, num_shards=1)`,
                         `.check()`, `.estimated_bytes(split)` (cheap, or None),
                         `.skipped[split]` (Counter: reason -> count, for the
                         most recent pass over that split, complete or partial).
  EmbeddedSource.describe()  corpus sizes per text type and split.
  split_of(key, validation_fraction, test_fraction)
                         the stable hash split used by `embedded` and `wikipedia`.

Splits are a function of a document's id (sha256 of the id), never of file order
or a random draw, so they are disjoint and identical on every run. SlimPajama ships
its own train / validation / test directories and keeps them.

Bad records (invalid UTF-8, malformed JSON, empty or non-string texts, unknown set
names, truncated .zst files, unparsable Python files) are skipped and counted in
`source.skipped[split]`; reading never crashes on them.
"""

from __future__ import annotations

import ast
import collections
import functools
import glob
import hashlib
import io
import json
import os
import sys
import sysconfig
from typing import Any, Iterator

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
  """Missing, empty or misconfigured data (raised before training starts)."""


def _cfg(data_cfg, key: str, default: Any) -> Any:
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


def _check_fractions(name: str, validation: float, test: float) -> None:
  if not (0 < validation and 0 <= test and validation + test < 1):
    raise DataError(f"{name} source: need 0 < validation_fraction "
                    f"({validation}) and 0 <= test_fraction ({test}) with a sum "
                    f"below 1 (the trainer evaluates on validation)")


def _check_split(split: str) -> None:
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
    _check_split(split)
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
    _check_fractions(self.name, self.validation_fraction, self.test_fraction)
    if not glob.glob(os.path.join(self.root, "*.py")):
      raise DataError(
          f"embedded source: no Python standard library .py files under "
          f"{self.root!r} (looked for {self.root}/*.py). This Python install "
          f"ships without its library sources; install the full Python "
          f"(e.g. the python3.X-dev / python3-full package) or use another "
          f"data.source.")

  def documents(self, split: str, shard_index: int = 0, num_shards: int = 1
                ) -> Iterator[dict]:
    _check_split(split)
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

SLIMPAJAMA_SETS = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub",
                   "RedPajamaBook", "RedPajamaArXiv", "RedPajamaWikipedia",
                   "RedPajamaStackExchange"]

SLIMPAJAMA_HELP = (
    "Download it (about 900 GB; the validation and test splits alone are a few "
    "GB) with\n"
    "  pip install -U huggingface_hub\n"
    "  huggingface-cli download cerebras/SlimPajama-627B --repo-type dataset "
    "--local-dir /data/SlimPajama-627B\n"
    "(add --include 'validation/*' 'test/*' 'train/chunk1/*' for a subset) and "
    "set config.data.data_dir=/data/SlimPajama-627B.")


def slimpajama_files(root: str, split: str) -> list[str]:
  """The split's .jsonl.zst files, in a fixed order (chunk, then file number)."""
  _check_split(split)
  files = glob.glob(slimpajama_pattern(root, split))
  return sorted(files, key=_natural_key)


def slimpajama_pattern(root: str, split: str) -> str:
  name = "example_train_*" if split == "train" else "example_holdout_*"
  return os.path.join(root, split, "chunk*", name + ".jsonl.zst")


def _natural_key(path: str) -> list:
  """Sorts chunk2 before chunk10 and example_train_9 before example_train_10."""
  import re  # pylint: disable=g-import-not-at-top
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


class TruncatedFile(Exception):
  """A compressed stream ended inside a frame."""


def zstd_lines(path: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
  """Lines of a (multi-frame) .zst file; raises TruncatedFile at a cut end.

  zstandard's stream_reader ends silently at a truncated frame, so we drive a
  decompressobj ourselves and check that the last frame is complete. A cut
  file yields its complete lines first; the cut line is not yielded.
  """
  import zstandard  # pylint: disable=g-import-not-at-top
  dctx = zstandard.ZstdDecompressor()
  dobj, in_frame, pending = dctx.decompressobj(), False, b""
  with open(path, "rb") as f:
    for raw in iter(lambda: f.read(chunk_size), b""):
      while raw:
        out = dobj.decompress(raw)
        in_frame, raw = True, b""
        if dobj.eof:  # a frame ended: the next one starts in unused_data
          raw = dobj.unused_data
          dobj, in_frame = dctx.decompressobj(), False
        if out:
          lines = (pending + out).split(b"\n")
          pending = lines.pop()
          yield from lines
  if in_frame:
    raise TruncatedFile(path)
  if pending:
    yield pending


class SlimPajamaSource(Source):
  """Reads `{split}/chunk*/example_*.jsonl.zst`; text_type = redpajama_set_name.

  `data_dir="hf://cerebras/SlimPajama-627B"` streams the dataset through Hugging
  Face `datasets` instead (when installed; no local copy, same records).
  """

  name = "slimpajama"
  text_types = list(SLIMPAJAMA_SETS)

  def __init__(self, data_dir: str, need_train: bool = True):
    super().__init__()
    data_dir = data_dir or ""
    self.hf_repo = data_dir[len("hf://"):] if data_dir.startswith("hf://") else ""
    self.root = "" if self.hf_repo else os.path.expanduser(data_dir)
    self.need_train = need_train  # False when training reads token shards

  def check(self) -> None:
    if self.hf_repo:
      try:
        import datasets  # pylint: disable=g-import-not-at-top,unused-import
      except ImportError as e:
        raise DataError(f"slimpajama source: data_dir=hf://{self.hf_repo} "
                        f"streams through Hugging Face datasets; pip install "
                        f"datasets, or use a local copy. " + SLIMPAJAMA_HELP
                        ) from e
      return
    if not self.root:
      raise DataError("slimpajama source: config.data.data_dir is empty. "
                      + SLIMPAJAMA_HELP)
    for split in ("train", "validation") if self.need_train else ("validation",):
      if not slimpajama_files(self.root, split):
        raise DataError(
            f"slimpajama source: no files matching "
            f"{slimpajama_pattern(self.root, split)}"
            f" ({split} split). " + SLIMPAJAMA_HELP)

  def estimated_bytes(self, split: str) -> int | None:
    if self.hf_repo:  # the published sizes: ~2.5 TB of train text, ~2 GB held out
      if self.hf_repo != "cerebras/SlimPajama-627B":
        return None
      return 2_500_000_000_000 if split == "train" else 2_500_000_000
    # zstd compresses this text about 3-4x; err on the large side.
    return 4 * sum(os.path.getsize(p) for p in slimpajama_files(self.root, split))

  def documents(self, split: str, shard_index: int = 0, num_shards: int = 1
                ) -> Iterator[dict]:
    self.skipped[split] = collections.Counter()
    if self.hf_repo:
      yield from self._stream_hf(split, shard_index, num_shards)
      return
    # Parallel readers take whole files: each decompresses only its own.
    for path in slimpajama_files(self.root, split)[shard_index::num_shards]:
      rel = os.path.relpath(path, self.root).replace(os.sep, "/")
      yield from self._read_file(path, rel, split)

  def _read_file(self, path: str, rel: str, split: str) -> Iterator[dict]:
    try:
      for line_no, line in enumerate(zstd_lines(path)):
        doc = self._parse(line, split)
        if doc is not None:
          doc["id"] = f"{rel}:{line_no}"
          yield doc
    except TruncatedFile:
      self._skip(split, "truncated_zst_file")
    except OSError:
      self._skip(split, "unreadable_file")
    except Exception as e:  # pylint: disable=broad-except
      if type(e).__name__ != "ZstdError":
        raise
      self._skip(split, "corrupt_zst_file")

  def _stream_hf(self, split: str, shard_index: int, num_shards: int
                 ) -> Iterator[dict]:
    _check_split(split)
    import datasets  # pylint: disable=g-import-not-at-top
    ds = datasets.load_dataset(self.hf_repo, split=split, streaming=True)
    if num_shards > 1:  # parallel readers take whole files here too
      ds = ds.shard(num_shards=num_shards, index=shard_index)
    for i, record in enumerate(ds):
      doc = self._record(record, split)
      if doc is not None:
        doc["id"] = f"hf:{split}:{shard_index}-of-{num_shards}:{i}"
        yield doc

  def _parse(self, line: bytes, split: str) -> dict | None:
    if not line.strip():
      return None  # blank lines are layout, not records
    try:
      record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
      self._skip(split, "invalid_utf8")
      return None
    except ValueError:
      self._skip(split, "malformed_json")
      return None
    return self._record(record, split)

  def _record(self, record, split: str) -> dict | None:
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str) or not text:
      self._skip(split, "empty_or_missing_text")
      return None
    meta = record.get("meta")
    set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
    if set_name not in SLIMPAJAMA_SETS:
      self._skip(split, "unknown_set_name")
      return None
    if "\ud800" <= max(text) and _has_surrogates(text):
      self._skip(split, "invalid_utf8")  # JSON "\ud800" escapes: not encodable
      return None
    return {"text": text, "text_type": set_name}


def _has_surrogates(text: str) -> bool:
  try:
    text.encode("utf-8")
    return False
  except UnicodeEncodeError:
    return True


# --------------------------------------------------------------------------
# wikipedia: tensorflow-datasets `wikipedia/<date>.<lang>`.

WIKIPEDIA_HELP = (
    "Prepare it once with tensorflow-datasets (needs apache-beam and "
    "mwparserfromhell: pip install apache-beam mwparserfromhell), e.g.\n"
    "  tfds build wikipedia/20230601.en --data_dir=/data/tfds\n"
    "or copy a prepared dataset from gs://tfds-data/datasets/wikipedia, or set "
    "config.data.try_gcs=True on a machine that reaches GCS; then set "
    "config.data.data_dir=/data/tfds.")


class WikipediaSource(Source):
  """tfds `wikipedia/<config>`: text = title + blank line + article text.

  tfds publishes only a train split; validation and test are carved out of it
  by the stable hash of the article title.
  """

  name = "wikipedia"
  text_types = ["wikipedia"]

  def __init__(self, config: str = "20230601.en", data_dir: str = "",
               try_gcs: bool = False, validation_fraction: float = 0.005,
               test_fraction: float = 0.005):
    super().__init__()
    self.dataset_name = f"wikipedia/{config}"
    self.data_dir = os.path.expanduser(data_dir) if data_dir else None
    self.try_gcs = try_gcs
    self.validation_fraction = validation_fraction
    self.test_fraction = test_fraction

  def _builder(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      return tfds.builder(self.dataset_name, data_dir=self.data_dir,
                          try_gcs=self.try_gcs)
    except Exception as e:  # tfds raises several types for unknown configs
      raise DataError(f"wikipedia source: cannot open tfds dataset "
                      f"{self.dataset_name!r} ({e}). " + WIKIPEDIA_HELP) from e

  def check(self) -> None:
    _check_fractions(self.name, self.validation_fraction, self.test_fraction)
    builder = self._builder()
    if not _tfds_is_prepared(builder):
      raise DataError(
          f"wikipedia source: tfds dataset {self.dataset_name!r} is not "
          f"prepared under data_dir={builder.data_dir!r} "
          f"(try_gcs={self.try_gcs}). " + WIKIPEDIA_HELP)

  def estimated_bytes(self, split: str) -> int | None:
    try:
      size = int(self._builder().info.dataset_size)
    except Exception:  # pylint: disable=broad-except
      return None
    held_out = self.validation_fraction + self.test_fraction
    return size if split == "train" else int(size * held_out) + 1 if size else None

  def documents(self, split: str, shard_index: int = 0, num_shards: int = 1
                ) -> Iterator[dict]:
    _check_split(split)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self.skipped[split] = collections.Counter()
    part = "train"
    if num_shards > 1:  # parallel readers take contiguous parts of the files
      part = tfds.even_splits("train", n=num_shards)[shard_index]
    ds = self._builder().as_dataset(split=part, shuffle_files=False)
    for example in tfds.as_numpy(ds):
      title = _as_text(example.get("title"))
      text = _as_text(example.get("text"))
      if title is None or text is None:
        self._skip(split, "invalid_utf8")
        continue
      if not text.strip():
        self._skip(split, "empty_or_missing_text")
        continue
      if split_of(title, self.validation_fraction, self.test_fraction) != split:
        continue
      yield {"text": f"{title}\n\n{text}", "text_type": "wikipedia",
             "id": title}


def _as_text(value) -> str | None:
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return None
  return value if isinstance(value, str) else None


def _tfds_is_prepared(builder) -> bool:
  """True when the builder can serve examples (files, GCS or tfds mock data)."""
  try:
    if builder.is_prepared():
      return True
  except Exception:  # pylint: disable=broad-except
    pass
  # tfds.testing.mock_data serves examples without any files: read one.
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    ds = builder.as_dataset(split="train[:1]", shuffle_files=False)
    next(iter(tfds.as_numpy(ds)))
    return True
  except Exception:  # pylint: disable=broad-except
    return False


# --------------------------------------------------------------------------


class TypeFilteredSource(Source):
  """The documents of `source` whose text_type is in `types` (all splits).

  `text_types` keeps the inner source's order, so type indices stay stable
  across runs restricted to different subsets only where the subsets agree;
  tools key per-type results by name, never by index.
  """

  def __init__(self, source: Source, types: list[str]):
    super().__init__()
    unknown = [t for t in types if t not in source.text_types]
    if unknown or not types:
      raise DataError(f"data.text_types={','.join(types)!r}: {source.name} has "
                      f"text types {source.text_types}; unknown: {unknown}")
    self.inner = source
    self.text_types = [t for t in source.text_types if t in types]
    self.name = f"{source.name}[{'+'.join(self.text_types)}]"
    self.skipped = source.skipped  # the inner reader counts bad records

  def check(self) -> None:
    self.inner.check()

  def documents(self, split: str, shard_index: int = 0, num_shards: int = 1
                ) -> Iterator[dict]:
    keep = set(self.text_types)
    for doc in self.inner.documents(split, shard_index, num_shards):
      if doc["text_type"] in keep:
        yield doc

  def estimated_bytes(self, split: str) -> int | None:
    if isinstance(self.inner, EmbeddedSource):
      return sum(b for (t, s), b in self.inner.describe()["bytes_by_type_split"].items()
                 if s == split and t in self.text_types)
    return self.inner.estimated_bytes(split)  # an upper estimate


def _data_dir(data_cfg, name: str) -> str:
  """`data_cfg.data_dir`; when empty and `data_cfg.smoke_sample` is set (`:smoke`
  configs), a small sample in the source's real format written from the embedded
  corpus (mambaswelu_jax/data/smoke_sample.py)."""
  data_dir = _cfg(data_cfg, "data_dir", "") or ""
  if (not data_dir and _cfg(data_cfg, "smoke_sample", False)
      and not (name == "wikipedia" and _cfg(data_cfg, "try_gcs", False))):
    from mambaswelu_jax.data import smoke_sample  # pylint: disable=g-import-not-at-top
    data_dir = smoke_sample.ensure_sample(name, data_cfg)
  return data_dir


def make_source(data_cfg) -> Source:
  """Builds `data_cfg.source` and checks it (raises DataError when missing)."""
  name = _cfg(data_cfg, "source", "embedded")
  val = _cfg(data_cfg, "validation_fraction", None)
  test = _cfg(data_cfg, "test_fraction", None)
  if name == "embedded":
    source = EmbeddedSource(
        root=_cfg(data_cfg, "embedded_root", "") or None,
        validation_fraction=0.02 if val is None else val,
        test_fraction=0.02 if test is None else test)
  elif name == "slimpajama":
    source = SlimPajamaSource(
        _data_dir(data_cfg, name),
        need_train=not _cfg(data_cfg, "pretokenized_dir", ""))
  elif name == "wikipedia":
    source = WikipediaSource(
        config=_cfg(data_cfg, "wikipedia_config", "20230601.en"),
        data_dir=_data_dir(data_cfg, name),
        try_gcs=_cfg(data_cfg, "try_gcs", False),
        validation_fraction=0.005 if val is None else val,
        test_fraction=0.005 if test is None else test)
  else:
    raise DataError(f"unknown data.source {name!r}; "
                    f"expected embedded, slimpajama or wikipedia")
  source.check()
  types = _cfg(data_cfg, "text_types", "") or ""
  if isinstance(types, str):
    types = [t.strip() for t in types.split(",") if t.strip()]
  if types:
    source = TypeFilteredSource(source, list(types))
  return source


def main(argv=None) -> None:
  """Checks a source and prints its documents, bytes and skips per type."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--source", default="embedded")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--wikipedia_config", default="20230601.en")
  parser.add_argument("--try_gcs", action="store_true")
  parser.add_argument("--text_types", default="")
  parser.add_argument("--smoke_sample", action="store_true",
                      help="no --data_dir: write (once) and read the small sample "
                           "that :smoke configs use")
  parser.add_argument("--splits", default="validation")
  parser.add_argument("--limit", type=int, default=0,
                      help="stop each split after this many documents (0: all)")
  args = parser.parse_args(argv)
  source = make_source(vars(args))
  print(f"{source.name}: text types {source.text_types}")
  for split in args.splits.split(","):
    docs, nbytes = collections.Counter(), collections.Counter()
    for i, doc in enumerate(source.documents(split)):
      docs[doc["text_type"]] += 1
      nbytes[doc["text_type"]] += len(doc["text"].encode("utf-8"))
      if args.limit and i + 1 >= args.limit:
        break
    for t in source.text_types:
      print(f"  {split:10s} {t:24s} {docs[t]:9d} documents "
            f"{nbytes[t] / 1e6:10.2f} MB")
    print(f"  {split:10s} skipped: {dict(source.skipped[split]) or 'none'}")


if __name__ == "__main__":
  main()
