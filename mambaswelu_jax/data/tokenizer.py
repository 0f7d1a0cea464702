"""One lossless SentencePiece tokenizer per study.

Public names:

  train_tokenizer(texts, vocab_size, output_path, **options) -> Tokenizer
      trains a byte-fallback BPE model on an iterable of strings (split into lines,
      capped at `sample_bytes`) and writes `output_path` (+ `output_path.json`,
      a small description of how it was trained).
  load_tokenizer(path) -> Tokenizer
      any SentencePiece .model file.
  Tokenizer
      .encode(str) -> list[int]      .encode_batch(list[str]) -> list[list[int]]
      .decode(list[int]) -> str      .vocab_size .bos_id .eos_id .unk_id
      .token_bytes: int32 array (vocab_size,), the UTF-8 bytes each id stands for
        (0 for control ids), so a document's ids sum to len(text.encode()) and
        bits-per-byte is tokenizer independent.
  prepare_tokenizer(data_cfg, workdir, source=None) -> path
      puts the run's tokenizer at `workdir/tokenizer.model`: reuses it when present,
      else copies `data_cfg.tokenizer_path`, else trains one on a sample of the
      source's train split.

Lossless: `decode(encode(s)) == s` for every string that is valid Unicode
(identity normalisation, no dummy prefix, whitespace kept, byte fallback). The one
character SentencePiece cannot keep is its own space marker U+2581 ("▁"), which it
decodes as a space; we encode a literal U+2581 as its three UTF-8 byte pieces.

The command trains the shared study tokenizer from several sources:

  python -m mambaswelu_jax.cli.train_tokenizer --sources=slimpajama,wikipedia \\
      --slimpajama_dir=/data/SlimPajama-627B --wikipedia_data_dir=/data/tfds \\
      --vocab_size=50257 --sample_bytes=300000000 --output=/data/study_tokenizer.model
"""

from __future__ import annotations

import json
import os
import time
from typing import Iterable, Iterator

import numpy as np

from mambaswelu_jax.workdir import atomic_write

SPACE_MARK = "\u2581"
_LINE_CHUNK = 4096  # characters; SentencePiece skips longer training sentences


class Tokenizer:
  """A SentencePiece model with lossless encode / decode and per-id byte counts."""

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.vocab_size = int(self._sp.get_piece_size())
    self.bos_id = int(self._sp.bos_id())
    self.eos_id = int(self._sp.eos_id())
    self.unk_id = int(self._sp.unk_id())
    self.pad_id = int(self._sp.pad_id())
    self._space_mark_ids = self._byte_ids(SPACE_MARK.encode("utf-8"))
    self.token_bytes = self._token_byte_lengths()

  # Grain sends the pipeline to worker processes; rebuild from the model bytes.
  def __getstate__(self):
    return {"model_proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])

  @property
  def model_proto(self) -> bytes:
    return self._proto

  def _byte_ids(self, data: bytes) -> list[int] | None:
    ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in data]
    return None if self.unk_id in ids else ids

  def _token_byte_lengths(self) -> np.ndarray:
    sp = self._sp
    lengths = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if sp.is_control(i) or sp.is_unknown(i):
        continue
      if sp.is_byte(i):
        lengths[i] = 1
      else:
        lengths[i] = len(sp.id_to_piece(i).replace(SPACE_MARK, " ").encode())
    return lengths

  def encode(self, text: str) -> list[int]:
    if SPACE_MARK not in text or self._space_mark_ids is None:
      return self._sp.encode(text)
    ids = []
    for i, part in enumerate(text.split(SPACE_MARK)):
      if i:
        ids.extend(self._space_mark_ids)
      ids.extend(self._sp.encode(part))
    return ids

  def encode_batch(self, texts: list[str], num_threads: int = 1
                   ) -> list[list[int]]:
    plain = [SPACE_MARK not in t for t in texts]
    bulk = iter(self._sp.encode([t for t, p in zip(texts, plain) if p],
                                num_threads=num_threads))
    return [next(bulk) if p else self.encode(t) for t, p in zip(texts, plain)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def count_bytes(self, ids) -> int:
    """UTF-8 bytes the ids stand for (control ids such as EOS count 0)."""
    return int(self.token_bytes[np.asarray(ids, np.int64)].sum())

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, self._proto)


_PROBE = " two  spaces\ttab\r\nline\x00 \u2581 e\u0301 中文 😀 end "


def load_tokenizer(path: str, require_lossless: bool = True) -> Tokenizer:
  """Loads a SentencePiece .model; by default refuses one that loses text.

  A model trained elsewhere (e.g. with NFKC or a dummy prefix) would make
  decode(encode(s)) != s and the per-token byte counts (bits per byte) wrong.
  """
  with open(os.path.expanduser(path), "rb") as f:
    tokenizer = Tokenizer(f.read())
  if require_lossless:
    ids = tokenizer.encode(_PROBE)
    if (tokenizer.decode(ids) != _PROBE or
        tokenizer.count_bytes(ids) != len(_PROBE.encode("utf-8"))):
      from mambaswelu_jax.data.sources import DataError  # pylint: disable=g-import-not-at-top
      raise DataError(
          f"tokenizer {path} does not round-trip text losslessly (it needs "
          f"byte_fallback, identity normalisation, no dummy prefix, whitespace "
          f"kept); train one with python -m mambaswelu_jax.cli.train_tokenizer")
  return tokenizer


def training_lines(texts: Iterable[str], sample_bytes: int) -> Iterator[str]:
  """Lines of the texts (SentencePiece's unit), chunked, until sample_bytes."""
  used = 0
  for text in texts:
    for line in text.split("\n"):
      for start in range(0, len(line), _LINE_CHUNK):
        chunk = line[start:start + _LINE_CHUNK]
        used += len(chunk.encode("utf-8", "replace")) + 1
        yield chunk
      if used >= sample_bytes:
        return


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_path: str, *,
                    model_type: str = "bpe", sample_bytes: int = 100_000_000,
                    num_threads: int | None = None,
                    character_coverage: float = 0.9995,
                    description: dict | None = None,
                    **spm_options) -> Tokenizer:
  """Trains a lossless SentencePiece model; extra options go to SentencePiece."""
  import io  # pylint: disable=g-import-not-at-top
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  stats = {"lines": 0, "bytes": 0}

  def counted(lines):
    for line in lines:
      stats["lines"] += 1
      stats["bytes"] += len(line.encode("utf-8", "replace")) + 1
      yield line

  options = dict(
      model_type=model_type, vocab_size=vocab_size,
      byte_fallback=True,                 # any byte is representable: no <unk>
      normalization_rule_name="identity",  # no NFKC: the text is kept as is
      add_dummy_prefix=False, remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True,  # indentation becomes few tokens
      split_digits=True, character_coverage=character_coverage,
      user_defined_symbols=["\n"],        # newlines get one id, not a byte piece
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      max_sentence_length=4 * _LINE_CHUNK + 16,
      num_threads=num_threads or os.cpu_count() or 1,
      minloglevel=2)
  options.update(spm_options)
  model = io.BytesIO()
  start = time.time()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=counted(training_lines(texts, sample_bytes)),
        model_writer=model, **options)
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training failed ({e}); with "
                     f"{stats['bytes']} bytes of text, vocab_size={vocab_size} "
                     f"may not fit the sample") from e
  tokenizer = Tokenizer(model.getvalue())
  tokenizer.save(output_path)
  meta = {"vocab_size": vocab_size, "model_type": model_type,
          "sample_lines": stats["lines"], "sample_bytes": stats["bytes"],
          "train_seconds": round(time.time() - start, 2),
          **(description or {})}
  atomic_write(output_path + ".json", json.dumps(meta, indent=2))
  return tokenizer


def sample_texts(documents: Iterable[dict], max_bytes: int,
                 max_doc_chars: int = 100_000,
                 keep_fraction: float = 1.0) -> Iterator[str]:
  """Document texts up to max_bytes: each capped so none dominates, and kept
  with probability keep_fraction (a stable hash of the id) to spread the sample
  over a bounded source instead of taking its first files."""
  from mambaswelu_jax.data.sources import split_of  # pylint: disable=g-import-not-at-top
  used = 0
  for doc in documents:
    if keep_fraction < 1 and split_of("sample:" + doc["id"], keep_fraction,
                                      0.0) != "validation":
      continue
    text = doc["text"][:max_doc_chars]
    yield text
    used += len(text.encode("utf-8"))
    if used >= max_bytes:
      return


def prepare_tokenizer(data_cfg, workdir: str, source=None) -> str:
  """Makes `workdir/tokenizer.model` for a run and returns its path.

  Reuses an existing one (a resumed run keeps its tokenizer), else copies
  `data_cfg.tokenizer_path`, else trains one on the source's train split with
  `data_cfg.vocab_size` and `data_cfg.tokenizer_sample_bytes`.
  """
  from mambaswelu_jax.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(path):
    return path
  given = data_cfg.get("tokenizer_path", "") if hasattr(data_cfg, "get") else ""
  if given:
    given = os.path.expanduser(given)
    if not os.path.exists(given):
      raise sources_lib.DataError(
          f"config.data.tokenizer_path={given!r} does not exist. Train the "
          f"study tokenizer with `python -m mambaswelu_jax.cli.train_tokenizer "
          f"--sources=slimpajama,wikipedia ... --output={given}` or leave "
          f"tokenizer_path empty to train one from the run's source.")
    load_tokenizer(given)  # fail now on a corrupt file, not mid-run
    os.makedirs(workdir, exist_ok=True)
    with open(given, "rb") as f:
      atomic_write(path, f.read())
    return path
  if data_cfg.get("pretokenized_dir", ""):
    raise sources_lib.DataError(
        "config.data.pretokenized_dir is set but config.data.tokenizer_path is "
        "empty: set it to the tokenizer the shards were written with")
  source = source or sources_lib.make_source(data_cfg)
  budget = data_cfg.get("tokenizer_sample_bytes", 8_000_000)
  size = source.estimated_bytes("train")
  # Spread the sample over a source that is at most a few times the budget;
  # larger ones would be read through for a thin sample, so take their start.
  keep = min(1.0, 1.25 * budget / size) if size and size < 20 * budget else 1.0
  train_tokenizer(
      sample_texts(source.documents("train"), budget, keep_fraction=keep),
      vocab_size=data_cfg.vocab_size, output_path=path,
      description={"sources": [source.name]})
  return path
