"""Sources: embedded, SlimPajama (.jsonl.zst incl. broken files), Wikipedia (tfds mock)."""

import sys

import pytest

from mambaswelu_jax.cli import check_data
from mambaswelu_jax.data import sources
from mambaswelu_jax.data.sources import DataError
from tests.slimpajama_files import write_slimpajama


def _ids_by_split(source):
  return {s: [d["id"] for d in source.documents(s)] for s in sources.SPLITS}


def _assert_disjoint(ids):
  seen = set()
  for split in sources.SPLITS:
    assert len(set(ids[split])) == len(ids[split]), split
    assert not seen & set(ids[split]), split
    seen |= set(ids[split])


def test_split_of_is_a_fixed_function():
  # Constants pin the hash: a change here would move documents between splits.
  assert [sources.split_of(f"doc{i}", 0.1, 0.1) for i in range(6)] == [
      sources.split_of(f"doc{i}", 0.1, 0.1) for i in range(6)]
  assert sources.split_of("os.py", 0.0, 0.0) == "train"
  assert sources.split_of("os.py", 1.0, 0.0) == "validation"
  assert sources.split_of("os.py", 0.0, 1.0) == "test"
  counts = {s: 0 for s in sources.SPLITS}
  for i in range(10000):
    counts[sources.split_of(str(i), 0.1, 0.2)] += 1
  assert 800 < counts["validation"] < 1200 and 1700 < counts["test"] < 2300


def test_embedded_corpus_size_types_and_splits():
  before = set(sys.modules)
  source = sources.make_source({"source": "embedded"})
  info = source.describe()
  assert info["bytes"] >= 3_000_000
  types = {t for t, _ in info["bytes_by_type_split"]}
  assert types == set(source.text_types) and len(types) >= 2
  ids = _ids_by_split(source)
  assert all(ids[s] for s in sources.SPLITS)
  _assert_disjoint(ids)
  assert ids == _ids_by_split(sources.make_source({"source": "embedded"}))
  # Both documents of a module share its split (no held-out text is trained on).
  module_split = {}
  for split, split_ids in ids.items():
    for doc_id in split_ids:
      module = doc_id.split(":", 1)[1]
      assert module_split.setdefault(module, split) == split
  doc = next(source.documents("validation"))
  assert set(doc) == {"text", "text_type", "id"} and doc["text"]
  # Parsed, never imported: `this` prints a poem when imported.
  assert "this" not in set(sys.modules) - before
  assert "antigravity" not in sys.modules


def test_embedded_missing_stdlib_is_a_data_error(tmp_path):
  with pytest.raises(DataError, match="no Python standard library"):
    sources.make_source({"source": "embedded", "embedded_root": str(tmp_path)})


def test_text_types_filter():
  source = sources.make_source({"source": "embedded", "text_types": "docstring"})
  assert source.text_types == ["docstring"]
  for split in sources.SPLITS:
    docs = list(source.documents(split))
    assert docs and all(d["text_type"] == "docstring" for d in docs)
  assert 1_000_000 < source.estimated_bytes("train") < 3_000_000
  with pytest.raises(DataError, match="unknown"):
    sources.make_source({"source": "embedded", "text_types": "docstring,poetry"})


def test_unknown_source():
  with pytest.raises(DataError, match="unknown data.source"):
    sources.make_source({"source": "c4"})


def test_slimpajama_reads_and_skips_bad_records(tmp_path):
  good = write_slimpajama(str(tmp_path))
  source = sources.make_source({"source": "slimpajama",
                                "data_dir": str(tmp_path)})
  docs = list(source.documents("train"))
  texts = [d["text"] for d in docs]
  # Files in natural order: chunk1/0, chunk2/2 (cut), chunk2/10.
  assert texts[:len(good)] == [g["text"] for g in good]
  assert texts[-2:] == ["kept one", "kept two"]
  cut = texts[len(good):-2]
  assert cut == [f"cut {i}" * 50 for i in range(len(cut))]  # lines before the cut
  assert docs[-1]["text_type"] == "RedPajamaGithub"
  assert all(d["text_type"] in source.text_types for d in docs)
  assert len({d["id"] for d in docs}) == len(docs)
  assert dict(source.skipped["train"]) == {
      "malformed_json": 1, "invalid_utf8": 2, "empty_or_missing_text": 2,
      "unknown_set_name": 1, "truncated_zst_file": 1}
  ids = _ids_by_split(source)
  _assert_disjoint(ids)
  assert len(ids["validation"]) == len(ids["test"]) == 5
  assert ids == _ids_by_split(source)


def test_slimpajama_garbage_file_is_skipped(tmp_path):
  write_slimpajama(str(tmp_path))
  with open(f"{tmp_path}/train/chunk1/example_train_1.jsonl.zst", "wb") as f:
    f.write(b"not zstd at all" * 10)
  source = sources.make_source({"source": "slimpajama",
                                "data_dir": str(tmp_path)})
  assert len(list(source.documents("train"))) > 0
  assert source.skipped["train"]["corrupt_zst_file"] == 1


def test_slimpajama_missing_data_explains_how_to_get_it(tmp_path):
  with pytest.raises(DataError, match="data_dir is empty"):
    sources.make_source({"source": "slimpajama", "data_dir": ""})
  with pytest.raises(DataError, match="huggingface-cli download"):
    sources.make_source({"source": "slimpajama", "data_dir": str(tmp_path)})


def test_wikipedia_from_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = {"source": "wikipedia", "wikipedia_config": "20230601.en",
         "validation_fraction": 0.2, "test_fraction": 0.2}
  with tfds.testing.mock_data(num_examples=60):
    source = sources.make_source(cfg)
    ids = _ids_by_split(source)
    docs = list(source.documents("train"))
    again = _ids_by_split(sources.make_source(cfg))
    halves = [[d["id"] for d in source.documents("train", i, 2)]
              for i in range(2)]
  _assert_disjoint(ids)
  assert ids == again
  assert all(ids[s] for s in sources.SPLITS)
  assert sum(map(len, ids.values())) + sum(
      source.skipped[s]["empty_or_missing_text"] for s in sources.SPLITS) >= 60
  assert source.text_types == ["wikipedia"]
  # The mock draws fresh examples per tfds sub-split, so only the code path of
  # parallel reading (tfds.even_splits) is checked here, not the partition.
  assert halves[0] and halves[1]
  assert all(d["text"].startswith(d["id"] + "\n\n") for d in docs)


def test_wikipedia_not_prepared_is_a_data_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError, match="tfds build wikipedia"):
    sources.make_source({"source": "wikipedia", "data_dir": str(tmp_path),
                         "wikipedia_config": "20230601.en"})


def test_check_command(tmp_path, capsys):
  write_slimpajama(str(tmp_path))
  check_data.main(["--source=slimpajama", f"--data_dir={tmp_path}",
                "--splits=train,validation"])
  out = capsys.readouterr().out
  assert "RedPajamaBook" in out and "truncated_zst_file" in out


class _FakeStream:
  """Stands in for a streaming Hugging Face dataset (no network in tests)."""

  def __init__(self, records):
    self.records = records

  def shard(self, num_shards, index):
    return _FakeStream(self.records[index::num_shards])

  def __iter__(self):
    return iter(self.records)


def test_slimpajama_hf_streaming_option(monkeypatch):
  import types
  records = [{"text": f"doc {i}", "meta": {"redpajama_set_name": "RedPajamaC4"}}
             for i in range(6)] + [{"text": "", "meta": {}}]
  calls = []

  def load_dataset(repo, split, streaming):
    calls.append((repo, split, streaming))
    return _FakeStream(records)

  monkeypatch.setitem(sys.modules, "datasets",
                      types.SimpleNamespace(load_dataset=load_dataset))
  source = sources.make_source({"source": "slimpajama",
                                "data_dir": "hf://cerebras/SlimPajama-627B"})
  docs = list(source.documents("validation"))
  assert [d["text"] for d in docs] == [f"doc {i}" for i in range(6)]
  assert calls == [("cerebras/SlimPajama-627B", "validation", True)]
  assert source.skipped["validation"]["empty_or_missing_text"] == 1
  half = [d["text"] for d in source.documents("train", 1, 2)]
  assert half == ["doc 1", "doc 3", "doc 5"]
  monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
  with pytest.raises(DataError, match="pip install datasets"):
    sources.make_source({"source": "slimpajama", "data_dir": "hf://x/y"})
