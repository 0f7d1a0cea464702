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

import collections
import glob
import json
import os
from typing import Iterator

# Re-exported: the source interface and the embedded corpus live in source_base.py.
from mambaswelu_jax.data.source_base import (  # pylint: disable=unused-import
    SPLITS, DataError, EmbeddedSource, InMemorySource, Source, check_fractions, check_split,
    config_value, split_of, stdlib_root)

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
  check_split(split)
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

  def __init__(self, data_dir: str, need_train: bool = True,
               splits: tuple[str, ...] | None = None):
    super().__init__()
    self.splits = tuple(splits) if splits else None  # the splits to check (None: training's)
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
    needed = self.splits or (("train", "validation") if self.need_train else ("validation",))
    for split in needed:
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
    check_split(split)
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
    check_fractions(self.name, self.validation_fraction, self.test_fraction)
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
    check_split(split)
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
  data_dir = config_value(data_cfg, "data_dir", "") or ""
  if (not data_dir and config_value(data_cfg, "smoke_sample", False)
      and not (name == "wikipedia" and config_value(data_cfg, "try_gcs", False))):
    from mambaswelu_jax.data import smoke_sample  # pylint: disable=g-import-not-at-top
    data_dir = smoke_sample.ensure_sample(name, data_cfg)
  return data_dir


def make_source(data_cfg, splits=None) -> Source:
  """Builds `data_cfg.source` and checks it (raises DataError when missing).

  `splits`: the splits the caller reads (default: what training reads), so a download
  of the held-out splits alone serves evaluation."""
  name = config_value(data_cfg, "source", "embedded")
  val = config_value(data_cfg, "validation_fraction", None)
  test = config_value(data_cfg, "test_fraction", None)
  if name == "embedded":
    source = EmbeddedSource(
        root=config_value(data_cfg, "embedded_root", "") or None,
        validation_fraction=0.02 if val is None else val,
        test_fraction=0.02 if test is None else test)
  elif name == "slimpajama":
    source = SlimPajamaSource(
        _data_dir(data_cfg, name),
        need_train=not config_value(data_cfg, "pretokenized_dir", ""), splits=splits)
  elif name == "wikipedia":
    source = WikipediaSource(
        config=config_value(data_cfg, "wikipedia_config", "20230601.en"),
        data_dir=_data_dir(data_cfg, name),
        try_gcs=config_value(data_cfg, "try_gcs", False),
        validation_fraction=0.005 if val is None else val,
        test_fraction=0.005 if test is None else test)
  else:
    raise DataError(f"unknown data.source {name!r}; "
                    f"expected embedded, slimpajama or wikipedia")
  source.check()
  types = config_value(data_cfg, "text_types", "") or ""
  if isinstance(types, str):
    types = [t.strip() for t in types.split(",") if t.strip()]
  if types:
    source = TypeFilteredSource(source, list(types))
  return source
