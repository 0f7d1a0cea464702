"""Small samples of the study data sets, written from the embedded corpus, so that a
`:smoke` run reads its source's real on-disk format through the real reader.

A study config shrunk with `:smoke` sets `data.smoke_sample = True`. When such a
config has no `data.data_dir`, `sources.make_source` asks this module for a sample
directory instead of stopping with a DataError:

  slimpajama  `<dir>/{train,validation,test}/chunk{1,2}/example_{train,holdout}_N.jsonl.zst`,
              one JSON record a line, `{"text": ..., "meta": {"redpajama_set_name": ...}}`;
              the embedded "code" documents become RedPajamaGithub records and the
              "docstring" documents RedPajamaWikipedia records (two text types). Each
              split takes the documents of the embedded corpus's own split.
  wikipedia   a prepared tensorflow-datasets directory `<dir>/wikipedia/<config>/1.0.0/`
              (dataset_info.json, features.json, tfrecord shards) for tfds's own
              `wikipedia/<config>` builder: one article per standard-library module,
              title = the module's dotted name, text = its docstrings. It is written by
              tfds's own preparation code (a builder with the same name, config,
              version and features whose examples come from the embedded corpus instead
              of a Wikipedia dump through apache-beam), so the run reads it exactly as
              it reads a real prepared copy.

Where: `$MAMBASWELU_JAX_SMOKE_DATA`, else `$XDG_CACHE_HOME/mambaswelu_jax/smoke`, else
`~/.cache/mambaswelu_jax/smoke`; one directory per (source, wikipedia config, sample
format, Python version, standard library), e.g. `slimpajama-v1-py3.11.7-1a2b3c`. The
name is a function of those alone, so a rerun, a resume, `eval` or a second smoke
config finds the same sample; the run's recorded config keeps `data.data_dir = ""`.
A sample is written into a temporary directory and renamed into place, so a directory
under its final name is complete; concurrent writers (several processes) agree.

Public names:

  SMOKE_DATA_ENV            "MAMBASWELU_JAX_SMOKE_DATA"
  SLIMPAJAMA_SET_NAMES      embedded text type -> RedPajama set name
  sample_dir(source_name, data_cfg)  where the sample of that source lives
  ensure_sample(source_name, data_cfg) -> data_dir to open (written when missing;
                            logs one line saying so)
  write_slimpajama_sample(root, embedded) / write_wikipedia_sample(data_dir, config, embedded)
                            the writers (into an existing or new directory)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile

from mambaswelu_jax.data import source_base

log = logging.getLogger("mambaswelu_jax.data.smoke_sample")

SMOKE_DATA_ENV = "MAMBASWELU_JAX_SMOKE_DATA"
FORMAT_VERSION = 1           # bump when the samples' content or layout changes
MANIFEST = "smoke_sample.json"

SLIMPAJAMA_SET_NAMES = {"code": "RedPajamaGithub", "docstring": "RedPajamaWikipedia"}
# Text bytes per split and text type (the smoke tokenizer samples 2 MB of train text).
SLIMPAJAMA_BYTES = {"train": 1_500_000, "validation": 150_000, "test": 150_000}
WIKIPEDIA_BYTES = 2_000_000
MAX_DOC_BYTES = 64_000       # leaves out the few very large generated modules
_CHUNKS = 2                  # chunk1, chunk2 per split
_TRAIN_FILES_PER_CHUNK = 2   # example_train_0, _1 per train chunk


def _cfg(data_cfg, key, default):
  return source_base.config_value(data_cfg, key, default)


def cache_root() -> str:
  root = os.environ.get(SMOKE_DATA_ENV)
  if not root:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    root = os.path.join(base, "mambaswelu_jax", "smoke")
  return os.path.abspath(os.path.expanduser(root))


def _embedded(data_cfg) -> source_base.EmbeddedSource:
  # The corpus's own 2% / 2% hash split: the sample's held-out documents are
  # held out of the embedded corpus too.
  source = source_base.EmbeddedSource(root=_cfg(data_cfg, "embedded_root", "") or None)
  source.check()
  return source


def sample_dir(source_name: str, data_cfg) -> str:
  """The directory of `source_name`'s sample (a function of the inputs only)."""
  root = _cfg(data_cfg, "embedded_root", "") or source_base.stdlib_root()
  stdlib = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:6]
  python = ".".join(map(str, sys.version_info[:3]))
  name = source_name
  if source_name == "wikipedia":
    name += "-" + _cfg(data_cfg, "wikipedia_config", "20230601.en")
  return os.path.join(cache_root(), f"{name}-v{FORMAT_VERSION}-py{python}-{stdlib}")


def ensure_sample(source_name: str, data_cfg) -> str:
  """Returns the data_dir of `source_name`'s smoke sample, writing it when missing."""
  if source_name not in ("slimpajama", "wikipedia"):
    raise source_base.DataError(f"no smoke sample for data.source={source_name!r}")
  final = sample_dir(source_name, data_cfg)
  label = {"slimpajama": "SlimPajama", "wikipedia": "Wikipedia (tfds)"}[source_name]
  hint = "set --config.data.data_dir=... to use real data"
  manifest = _read_manifest(final)
  if manifest is not None:
    log.info("smoke: no data.data_dir, reading the %s-format sample (%.1f MB of text "
             "from the embedded corpus) at %s; %s", label, manifest["text_bytes"] / 1e6,
             final, hint)
    return final
  embedded = _embedded(data_cfg)
  parent = os.path.dirname(final)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", dir=parent)
  except OSError as e:
    raise source_base.DataError(
        f"smoke: cannot write the {label} sample under {parent} ({e}); set "
        f"{SMOKE_DATA_ENV}=<a writable directory>, or {hint}") from e
  try:
    if source_name == "slimpajama":
      manifest = write_slimpajama_sample(tmp, embedded)
    else:
      manifest = write_wikipedia_sample(
          tmp, _cfg(data_cfg, "wikipedia_config", "20230601.en"), embedded)
    _write_manifest(tmp, manifest)
    try:
      os.rename(tmp, final)
    except OSError as e:
      if _read_manifest(final) is None:  # not another writer's complete sample
        raise source_base.DataError(
            f"smoke: cannot put the {label} sample at {final} ({e}); if that "
            f"directory is left from something else, delete it and rerun") from e
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  log.info("smoke: no data.data_dir, wrote a %.1f MB %s-format sample (%d documents "
           "from the embedded corpus) to %s; %s", manifest["text_bytes"] / 1e6, label,
           manifest["documents"], final, hint)
  return final


def _read_manifest(directory: str) -> dict | None:
  try:
    with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_manifest(directory: str, manifest: dict) -> None:
  manifest = {"what": "a smoke-test sample written from the embedded corpus (the "
                      "Python standard library) by mambaswelu_jax.data.smoke_sample; "
                      "not real data",
              "format_version": FORMAT_VERSION,
              "python": sys.version.split()[0], **manifest}
  with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")


def _module_key(doc_id: str) -> str:
  return doc_id.split(":", 1)[1]


def _pick(docs, budget_per_type: int) -> list[dict]:
  """Documents in a fixed pseudo-random order (a hash of the id), up to
  `budget_per_type` UTF-8 bytes of each type; oversized documents left out."""
  used, picked = {}, []
  for doc in sorted(docs, key=lambda d: hashlib.sha256(d["id"].encode()).digest()):
    n = len(doc["text"].encode("utf-8"))
    t = doc["text_type"]
    if n > MAX_DOC_BYTES or used.get(t, 0) + n > budget_per_type:
      continue
    used[t] = used.get(t, 0) + n
    picked.append(doc)
  return picked


# --------------------------------------------------------------------------
# SlimPajama: the jsonl.zst layout of cerebras/SlimPajama-627B.


def write_slimpajama_sample(root: str, embedded: source_base.Source) -> dict:
  """Writes the three splits under `root`; returns counts for the manifest."""
  import zstandard  # pylint: disable=g-import-not-at-top
  compressor = zstandard.ZstdCompressor(level=3)
  counts, text_bytes, files = {}, 0, 0
  for split in source_base.SPLITS:
    docs = _pick(embedded.documents(split), SLIMPAJAMA_BYTES[split])
    if not docs:
      raise source_base.DataError(f"smoke: the embedded corpus has no {split} documents")
    if split == "train":
      names = [(c, f"example_train_{(c - 1) * _TRAIN_FILES_PER_CHUNK + k}")
               for c in range(1, _CHUNKS + 1) for k in range(_TRAIN_FILES_PER_CHUNK)]
    else:
      names = [(c, "example_holdout_0") for c in range(1, _CHUNKS + 1)]
    for i, (chunk, name) in enumerate(names):
      mine = docs[i::len(names)]
      if not mine:
        continue
      lines = []
      for doc in mine:
        set_name = SLIMPAJAMA_SET_NAMES[doc["text_type"]]
        lines.append(json.dumps({"text": doc["text"],
                                 "meta": {"redpajama_set_name": set_name}}))
        counts.setdefault(split, {}).setdefault(set_name, 0)
        counts[split][set_name] += 1
        text_bytes += len(doc["text"].encode("utf-8"))
      directory = os.path.join(root, split, f"chunk{chunk}")
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, name + ".jsonl.zst"), "wb") as f:
        f.write(compressor.compress(("\n".join(lines) + "\n").encode("utf-8")))
      files += 1
  return {"source": "slimpajama", "documents": sum(sum(c.values()) for c in counts.values()),
          "documents_by_split_and_set": counts, "text_bytes": text_bytes, "files": files}


# --------------------------------------------------------------------------
# Wikipedia: a prepared tfds `wikipedia/<config>` directory.


def write_wikipedia_sample(data_dir: str, config: str,
                           embedded: source_base.Source) -> dict:
  """Prepares tfds `wikipedia/<config>` under `data_dir` from the embedded docstrings."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.text import wikipedia as tfds_wikipedia  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise source_base.DataError(f"smoke: the Wikipedia sample is a tfds dataset; pip "
                                f"install tensorflow-datasets ({e})") from e

  docs = []
  for split in source_base.SPLITS:  # every article; the reader carves its own splits
    docs += [d for d in embedded.documents(split) if d["text_type"] == "docstring"]
  articles = {}
  for doc in _pick(docs, WIKIPEDIA_BYTES):
    key = _module_key(doc["id"])
    title = key[:-len(".py")].replace("/", ".")
    if title.endswith(".__init__"):
      title = title[:-len(".__init__")]
    articles[key] = {"title": title, "text": doc["text"]}

  class SmokeWikipedia(tfds_wikipedia.Wikipedia, skip_registration=True):
    """tfds's Wikipedia builder with its examples taken from `articles`."""
    name = "wikipedia"
    code_path = None  # no checksums file to look up (and nothing is downloaded)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._smoke_examples()}

    def _smoke_examples(self):
      yield from sorted(articles.items())

  try:
    builder = SmokeWikipedia(config=config, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises several types)
    raise source_base.DataError(
        f"smoke: tfds has no dataset wikipedia/{config} to write a sample of ({e}); "
        f"set data.wikipedia_config to one of its configs, e.g. 20230601.en") from e
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  shown = getattr(tqdm_utils, "_active", True)
  tqdm_utils.display_progress_bar(False)   # a one-line message instead of bars
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # tfds prints the temporary path
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  finally:
    tqdm_utils.display_progress_bar(shown)
  shutil.rmtree(os.path.join(data_dir, "downloads"), ignore_errors=True)
  return {"source": "wikipedia", "tfds_name": f"wikipedia/{config}",
          "tfds_version": str(builder.version), "documents": len(articles),
          "text_bytes": sum(len(a["text"].encode("utf-8")) for a in articles.values())}
