"""The study tokenizer: lossless on hostile strings, byte counts, preparation."""

import copy
import os
import random

import hypothesis
from hypothesis import strategies as st
import ml_collections
import pytest

from mambaswelu_jax.cli import train_tokenizer
from mambaswelu_jax.data import tokenizer as tokenizer_lib
from mambaswelu_jax.data.sources import DataError

HOSTILE = [
    "", " ", "  ", "\t", "\n", "\r\n", "a\x00b\x00", "\x00",
    "  leading", "trailing  ", "repeated    spaces   inside", " \t \n ",
    "line one\r\nline two\r\n\r\n", "tab\there\t\t", "\u2581", "a\u2581b \u2581",
    "emoji 😀👩‍👩‍👧 🏳️‍🌈", "中文文本，日本語のテキスト、한국어", "e\u0301 a\u0308 \u0915\u094d\u0937",
    "\ufeffBOM", "zero\u200bwidth\u200djoiner", "<s></s><unk><pad>", "<0x41>",
    "\U0010ffff\ue000", "ﬁ ＡＢＣ ①", "mixed\vform\ffeed", "\x7f\x1b[0m",
    "def f(x):\n    return x  # comment\n",
]


def test_round_trip_on_hostile_strings(small_tokenizer):
  for s in HOSTILE:
    ids = small_tokenizer.encode(s)
    assert small_tokenizer.decode(ids) == s, repr(s)
    assert small_tokenizer.unk_id not in ids, repr(s)
    assert small_tokenizer.count_bytes(ids) == len(s.encode("utf-8")), repr(s)


def test_round_trip_on_random_unicode(small_tokenizer):
  rng = random.Random(0)
  pools = [range(0, 0x80), range(0x80, 0x800), range(0x3000, 0x9fff),
           range(0x1f300, 0x1faff), range(0x300, 0x370)]
  texts = []
  for _ in range(300):
    chars = [chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(0, 40))]
    texts.append("".join(chars))
  for s, ids in zip(texts, small_tokenizer.encode_batch(texts, num_threads=2)):
    assert ids == small_tokenizer.encode(s)
    assert small_tokenizer.decode(ids) == s, repr(s)
    assert small_tokenizer.count_bytes(ids) == len(s.encode("utf-8"))


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_round_trip_property(small_tokenizer, text):
  ids = small_tokenizer.encode(text)
  assert small_tokenizer.decode(ids) == text
  assert small_tokenizer.count_bytes(ids) == len(text.encode("utf-8"))


def test_special_ids_and_reload(small_tokenizer, tmp_path):
  tok = small_tokenizer
  assert tok.vocab_size == 1024
  assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.token_bytes.shape == (1024,) and tok.token_bytes[tok.eos_id] == 0
  assert tok.decode([tok.eos_id]) == ""
  path = str(tmp_path / "t.model")
  tok.save(path)
  again = tokenizer_lib.load_tokenizer(path)
  assert again.encode("hello  world") == tok.encode("hello  world")
  # Grain copies the pipeline into workers; the copy is rebuilt from bytes.
  assert copy.deepcopy(tok).encode("x\ty") == tok.encode("x\ty")


def test_lossy_model_is_refused(tmp_path):
  import sentencepiece as spm
  texts = ["the quick brown fox jumps over the lazy dog"] * 50
  prefix = str(tmp_path / "lossy")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts),
                                 model_prefix=prefix, vocab_size=30,
                                 minloglevel=2)  # NFKC, dummy prefix, no bytes
  with pytest.raises(DataError, match="losslessly"):
    tokenizer_lib.load_tokenizer(prefix + ".model")
  assert tokenizer_lib.load_tokenizer(prefix + ".model",
                                      require_lossless=False).vocab_size == 30


def test_train_tokenizer_is_deterministic(tmp_path):
  texts = ["the quick brown fox jumps over the lazy dog " * 20,
           "pack my box with five dozen liquor jugs\n" * 20] * 5
  a = tokenizer_lib.train_tokenizer(texts, 300, str(tmp_path / "a.model"))
  b = tokenizer_lib.train_tokenizer(texts, 300, str(tmp_path / "b.model"))
  assert a.model_proto == b.model_proto
  assert os.path.exists(str(tmp_path / "a.model.json"))


def test_prepare_tokenizer_copies_reuses_and_trains(small_tokenizer, tmp_path):
  given = str(tmp_path / "study.model")
  small_tokenizer.save(given)
  cfg = ml_collections.ConfigDict({"source": "embedded", "tokenizer_path": given,
                                   "vocab_size": 512,
                                   "tokenizer_sample_bytes": 300_000})
  path = tokenizer_lib.prepare_tokenizer(cfg, str(tmp_path / "run"))
  assert open(path, "rb").read() == small_tokenizer.model_proto
  cfg.tokenizer_path = str(tmp_path / "missing.model")
  # Reused: an existing workdir tokenizer wins over the config.
  assert tokenizer_lib.prepare_tokenizer(cfg, str(tmp_path / "run")) == path
  with pytest.raises(DataError, match="does not exist"):
    tokenizer_lib.prepare_tokenizer(cfg, str(tmp_path / "run2"))
  cfg.tokenizer_path = ""
  trained = tokenizer_lib.prepare_tokenizer(cfg, str(tmp_path / "run3"))
  assert tokenizer_lib.load_tokenizer(trained).vocab_size == 512


def test_command_trains_from_several_sources(tmp_path):
  from tests.slimpajama_files import write_slimpajama
  write_slimpajama(str(tmp_path / "sp"))
  out = str(tmp_path / "study.model")
  train_tokenizer.main(["--sources=embedded,slimpajama",
                      f"--slimpajama_dir={tmp_path / 'sp'}", "--vocab_size=400",
                      "--sample_bytes=400000", f"--output={out}"])
  tok = tokenizer_lib.load_tokenizer(out)
  assert tok.vocab_size == 400
  assert tok.decode(tok.encode("train doc 1 é 中")) == "train doc 1 é 中"
