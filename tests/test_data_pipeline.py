"""The grain pipeline: packing, resume through Orbax, eval batches, shards."""

import os

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mambaswelu_jax.cli import pretokenize as cli_pretokenize
from mambaswelu_jax.data import pipeline, pretokenize, sources
from mambaswelu_jax.data import tokenizer as tokenizer_lib
from mambaswelu_jax.data.sources import DataError

TYPES = ["prose", "code"]


def _docs(n, prefix):
  rng = np.random.default_rng(len(prefix) + n)
  docs = []
  for i in range(n):
    words = rng.integers(1, 60)
    body = " ".join(f"w{rng.integers(0, 500)}" for _ in range(words))
    text = f"{prefix} {i}: {body}\n  é中😀\t" if i % 3 else body
    docs.append({"text": text, "text_type": TYPES[i % 2], "id": f"{prefix}{i}"})
  return docs


@pytest.fixture(scope="module")
def source():
  return sources.InMemorySource(
      {"train": _docs(120, "train"), "validation": _docs(25, "val"),
       "test": _docs(5, "test")}, TYPES)


def _cfg(**kw):
  cfg = {"seq_len": 32, "num_workers": 0, "pretokenized_dir": ""}
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_pack_loses_and_duplicates_no_token():
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, 100, rng.integers(1, 30)).astype(np.int32)
          for _ in range(50)]
  ds = pipeline.pack_dataset(grain.MapDataset.source(docs).to_iter_dataset(), 7)
  windows = list(ds)
  stream = np.concatenate(docs)
  assert all(w.shape == (7,) for w in windows)
  np.testing.assert_array_equal(np.concatenate(windows),
                                stream[:len(windows) * 7])
  assert len(stream) - len(windows) * 7 < 7


def test_train_batches_are_the_shuffled_token_stream(source, small_tokenizer):
  ds = pipeline.make_train_dataset(_cfg(), small_tokenizer, 4, seed=3,
                                   source=source)
  batches = _take(iter(ds), 12)
  b = batches[0]
  assert b["inputs"].shape == b["targets"].shape == (4, 32)
  assert b["inputs"].dtype == b["targets"].dtype == np.int32
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  assert b["skipped_documents"].tolist() == [0] * 4
  # Windows of 33 tokens, rows in order, are the EOS-joined stream of the
  # documents in the seeded order: nothing lost, nothing repeated.
  windows = [np.concatenate([x["inputs"], x["targets"][:, -1:]], axis=1)
             for x in batches]
  got = np.concatenate([w.reshape(-1) for w in windows])
  texts = [d["text"] for d in source.documents("train")]
  order = grain.MapDataset.source(texts).shuffle(seed=3)
  tokenize = pipeline.Tokenize(small_tokenizer)
  stream = np.concatenate([tokenize(order[i]) for i in range(len(texts))])
  np.testing.assert_array_equal(got, stream[:len(got)])


def test_second_epoch_is_reshuffled(small_tokenizer):
  docs = {"train": [{"text": f"d{i} ", "text_type": "prose", "id": str(i)}
                    for i in range(40)]}
  src = sources.InMemorySource(docs, TYPES)
  tok = small_tokenizer
  ds = pipeline.make_train_dataset(_cfg(seq_len=15), tok, 1, seed=0,
                                   source=src)
  flat = np.concatenate([b["inputs"][0].tolist() + [b["targets"][0, -1]]
                         for b in _take(iter(ds), 80)])
  text = tok.decode([t for t in flat.tolist() if t != tok.eos_id])
  tok_docs = [t for t in text.split(" ") if t]
  first, second = tok_docs[:40], tok_docs[40:80]
  assert sorted(first) == sorted(second) == sorted(f"d{i}" for i in range(40))
  assert first != second


def _save(directory, step, it):
  with ocp.CheckpointManager(directory, item_names=("data",)) as mngr:
    mngr.save(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()


def _restore(directory, it):
  with ocp.CheckpointManager(directory, item_names=("data",)) as mngr:
    mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(it)))


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_through_orbax_continues_with_next_batch(
    source, small_tokenizer, tmp_path, workers):
  make = lambda: pipeline.make_train_dataset(
      _cfg(num_workers=workers), small_tokenizer, 4, seed=1, source=source)
  reference = _take(iter(make()), 14)
  it = iter(make())
  _equal(_take(it, 9), reference[:9])
  _save(str(tmp_path / "ckpt"), 9, it)
  _equal(_take(it, 2), reference[9:11])  # the saved run goes on
  resumed = iter(make())
  _restore(str(tmp_path / "ckpt"), resumed)
  _equal(_take(resumed, 5), reference[9:14])
  for i in (it, resumed):
    if hasattr(i, "close"):
      i.close()


def test_restoring_a_state_for_other_settings_is_refused(source,
                                                         small_tokenizer):
  make = lambda seed: iter(pipeline.make_train_dataset(
      _cfg(), small_tokenizer, 4, seed=seed, source=source))
  it = make(1)
  _take(it, 2)
  other = make(2)
  with pytest.raises(DataError, match="seed"):
    other.set_state(it.get_state())


def test_worker_count_does_not_change_batches(source, small_tokenizer):
  make = lambda w: iter(pipeline.make_train_dataset(
      _cfg(num_workers=w), small_tokenizer, 2, seed=5, source=source))
  _equal(_take(make(0), 10), _take(make(2), 10))


def test_processes_split_the_global_batch(source, small_tokenizer):
  per = [pipeline.make_train_dataset(_cfg(), small_tokenizer, 8, seed=0,
                                     process_index=p, process_count=2,
                                     source=source) for p in range(2)]
  a, b = (next(iter(ds)) for ds in per)
  assert a["inputs"].shape == b["inputs"].shape == (4, 32)
  assert not np.array_equal(a["inputs"], b["inputs"])
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_train_dataset(_cfg(), small_tokenizer, 5, process_count=2,
                                source=source)


def test_empty_source_is_a_data_error(small_tokenizer):
  empty = sources.InMemorySource({}, TYPES)
  with pytest.raises(DataError, match="no usable documents"):
    pipeline.make_train_dataset(_cfg(), small_tokenizer, 2, source=empty)


def test_skipped_records_reach_every_batch(tmp_path, small_tokenizer):
  from tests.slimpajama_files import write_slimpajama
  write_slimpajama(str(tmp_path))
  ds = pipeline.make_train_dataset(
      _cfg(source="slimpajama", data_dir=str(tmp_path)), small_tokenizer, 2)
  batch = next(iter(ds))
  assert batch["skipped_documents"].tolist() == [7, 7]
  assert ds.skipped["truncated_zst_file"] == 1


def test_eval_batches_cover_the_split_bytes_and_types(source, small_tokenizer):
  tok = small_tokenizer
  batches = list(pipeline.make_eval_batches(source, tok, "validation", 4, 16))
  docs = list(source.documents("validation"))
  ids = [tok.encode(d["text"]) + [tok.eos_id] for d in docs]
  n_targets = sum(map(len, ids))
  cat = lambda k: np.concatenate([b[k].reshape(-1) for b in batches])
  weights = cat("weights")
  assert weights.sum() == n_targets
  assert {k: v.dtype for k, v in batches[0].items()} == {
      "inputs": np.int32, "targets": np.int32, "weights": np.float32,
      "target_bytes": np.int32, "text_type": np.int32}
  real = weights > 0
  np.testing.assert_array_equal(cat("targets")[real], np.concatenate(ids))
  assert cat("target_bytes").sum() == sum(len(d["text"].encode()) for d in docs)
  want_types = np.concatenate([[TYPES.index(d["text_type"])] * len(i)
                               for d, i in zip(docs, ids)])
  np.testing.assert_array_equal(cat("text_type")[real], want_types)
  # Inputs are the targets shifted by one, starting from EOS.
  flat_in, flat_t = cat("inputs")[real], cat("targets")[real]
  assert flat_in[0] == tok.eos_id
  np.testing.assert_array_equal(flat_in[1:], flat_t[:-1])
  assert list(pipeline.make_eval_batches(source, tok, "validation", 4, 16))[0][
      "inputs"].tolist() == batches[0]["inputs"].tolist()


def test_eval_max_tokens_and_processes(source, small_tokenizer):
  ev = pipeline.make_eval_batches(source, small_tokenizer, "validation", 4, 16,
                                  max_tokens=100)
  assert sum(b["weights"].sum() for b in ev) == 112  # whole rows: 7 * 16
  full = list(pipeline.make_eval_batches(source, small_tokenizer, "validation",
                                         4, 16))
  parts = [list(pipeline.make_eval_batches(
      source, small_tokenizer, "validation", 4, 16, process_index=p,
      process_count=2)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(full)
  for whole, a, b in zip(full, *parts):
    for k in whole:
      np.testing.assert_array_equal(whole[k], np.concatenate([a[k], b[k]]))


def test_pretokenize_resumes_and_feeds_training(source, small_tokenizer,
                                                tmp_path, monkeypatch):
  tok = small_tokenizer
  out = str(tmp_path / "tok")
  kw = dict(shard_tokens=300, encode_batch=8)
  full = pretokenize.pretokenize_split(source, tok, "train", str(tmp_path / "ref"),
                                       **kw)
  assert full["complete"] and len(full["shards"]) > 3
  # Interrupt after a few encode batches, then run again: same files.
  calls = {"n": 0}
  real = type(tok).encode_batch

  def flaky(self, texts, num_threads=1):
    calls["n"] += 1
    if calls["n"] == 6:
      raise KeyboardInterrupt
    return real(self, texts, num_threads)

  monkeypatch.setattr(type(tok), "encode_batch", flaky)
  with pytest.raises(KeyboardInterrupt):
    pretokenize.pretokenize_split(source, tok, "train", out, **kw)
  with pytest.raises(DataError, match="incomplete"):
    pretokenize.TokenShards(os.path.join(out, "train"))
  monkeypatch.setattr(type(tok), "encode_batch", real)
  again = pretokenize.pretokenize_split(source, tok, "train", out, **kw)
  assert again == full
  for shard in full["shards"]:
    a = open(os.path.join(out, "train", shard["file"]), "rb").read()
    b = open(os.path.join(tmp_path, "ref", "train", shard["file"]), "rb").read()
    assert a == b
  shards = pretokenize.TokenShards(os.path.join(out, "train"))
  stream = np.concatenate([tok.encode(d["text"]) + [tok.eos_id]
                           for d in source.documents("train")])
  np.testing.assert_array_equal(shards.read(0, shards.num_tokens), stream)
  np.testing.assert_array_equal(shards.read(295, 20), stream[295:315])

  cfg = _cfg(pretokenized_dir=out)
  make = lambda: iter(pipeline.make_train_dataset(cfg, tok, 4, seed=2))
  reference = _take(make(), 8)
  assert reference[0]["inputs"].shape == (4, 32)
  windows = np.concatenate([np.concatenate(
      [b["inputs"], b["targets"][:, -1:]], 1) for b in reference])
  starts = []  # every window is a distinct aligned 33-token slice of the stream
  for w in windows:
    hits = [i for i in range(0, len(stream) - 32, 33)
            if np.array_equal(stream[i:i + 33], w)]
    assert hits
    starts.append(hits[0])
  assert len(set(starts)) == len(starts)
  it = make()
  _take(it, 5)
  _save(str(tmp_path / "ckpt"), 5, it)
  resumed = make()
  _restore(str(tmp_path / "ckpt"), resumed)
  _equal(_take(resumed, 3), reference[5:8])


def test_each_data_stream_reads_only_its_share_of_the_pretokenized_data(
    source, small_tokenizer, tmp_path, monkeypatch):
  """With the global batch split over 2 streams (processes), each stream reads its own
  windows from the shards: the two streams' rows at a step are the 1-stream batch's
  rows, the streams never read a window twice or the other's, and what each reads
  (`TokenShards.bytes_read`) is its windows, half of what one stream reads."""
  from mambaswelu_jax.data import pretokenize as pt  # pylint: disable=import-outside-toplevel
  tok = small_tokenizer
  pt.pretokenize_split(source, tok, "train", str(tmp_path), shard_tokens=300)
  cfg = _cfg(pretokenized_dir=str(tmp_path))
  read = {}  # (stream, window start) per read
  real = pt.TokenShards.read

  def logged(self, start, length):
    read.setdefault(self.stream, []).append(start)
    return real(self, start, length)

  monkeypatch.setattr(pt.TokenShards, "read", logged)
  datasets = {}
  for streams in (1, 2):
    for k in range(streams):
      ds = pipeline.make_train_dataset(cfg, tok, 8, seed=3, process_index=k,
                                       process_count=streams)
      ds.shards.stream = (streams, k)
      datasets[streams, k] = (ds, _take(iter(ds), 4))
  for step in range(4):
    rows = lambda b: {tuple(r) for r in np.asarray(b[step]["inputs"])}  # pylint: disable=cell-var-from-loop
    assert rows(datasets[2, 0][1]) | rows(datasets[2, 1][1]) == rows(datasets[1, 0][1])
    assert not rows(datasets[2, 0][1]) & rows(datasets[2, 1][1])
  # Each stream reads exactly the windows of its own share of the shuffled order (a
  # prefix of it: grain reads ahead in threads, so wait until their buffers are full),
  # never the other stream's.
  import collections  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  import grain  # pylint: disable=import-outside-toplevel
  for _ in range(40):
    before = {key: len(starts) for key, starts in read.items()}
    time.sleep(0.5)
    if before == {key: len(starts) for key, starts in read.items()}:
      break
  shards = datasets[1, 0][0].shards
  n = len(pt.TokenWindows(shards, 33))
  order = grain.MapDataset.range(n).shuffle(seed=3).repeat(None)
  for (streams, k), starts in read.items():
    own = order[k::streams]
    assert collections.Counter(starts) == collections.Counter(
        33 * int(own[i]) for i in range(len(starts))), (streams, k)
    assert datasets[streams, k][0].shards.bytes_read == len(starts) * 33 * shards.itemsize
  first_epoch = [{int(order[k::2][i]) for i in range(n // 2)} for k in range(2)]
  assert not first_epoch[0] & first_epoch[1]


def test_pretokenized_with_another_tokenizer_is_refused(source, small_tokenizer,
                                                         tmp_path):
  pretokenize.pretokenize_split(source, small_tokenizer, "train", str(tmp_path))
  other = tokenizer_lib.train_tokenizer(
      [d["text"] for d in source.documents("train")] * 3, 290,
      str(tmp_path / "other.model"))
  with pytest.raises(DataError, match="another tokenizer"):
    pipeline.make_train_dataset(_cfg(pretokenized_dir=str(tmp_path)), other, 2)


def test_pretokenize_in_parallel_tasks(source, small_tokenizer, tmp_path):
  tok = small_tokenizer
  for i in range(3):
    pretokenize.pretokenize_split(source, tok, "train", str(tmp_path),
                                  shard_tokens=200, task_index=i, num_tasks=3)
  shards = pretokenize.TokenShards(str(tmp_path / "train"))
  docs = [tok.encode(d["text"]) + [tok.eos_id]
          for d in source.documents("train")]
  want = np.concatenate([np.concatenate(docs[i::3]) for i in range(3)])
  np.testing.assert_array_equal(shards.read(0, shards.num_tokens), want)
  from tests.slimpajama_files import write_slimpajama
  write_slimpajama(str(tmp_path / "sp"))
  sp = sources.make_source({"source": "slimpajama",
                            "data_dir": str(tmp_path / "sp")})
  for i in range(2):
    pretokenize.pretokenize_split(sp, tok, "train", str(tmp_path / "sp_tok"),
                                  task_index=i, num_tasks=2)
  both = pretokenize.TokenShards(str(tmp_path / "sp_tok" / "train"))
  assert sum(both.skipped.values()) == 7  # each bad record counted once
  assert sorted(tok.decode(both.read(0, both.num_tokens))) == sorted(
      "".join(d["text"] for d in sp.documents("train")))
  os.rename(tmp_path / "train" / "task_00002-of-00003", tmp_path / "gone")
  with pytest.raises(DataError, match="missing"):
    pretokenize.TokenShards(str(tmp_path / "train"))


def test_pretokenize_command_on_slimpajama(small_tokenizer, tmp_path):
  from tests.slimpajama_files import write_slimpajama
  write_slimpajama(str(tmp_path / "sp"))
  small_tokenizer.save(str(tmp_path / "tok.model"))
  cli_pretokenize.main(["--source=slimpajama", f"--data_dir={tmp_path / 'sp'}",
                    f"--tokenizer={tmp_path / 'tok.model'}",
                    f"--output_dir={tmp_path / 'out'}",
                    "--splits=train,validation"])
  train = pretokenize.TokenShards(str(tmp_path / "out" / "train"))
  assert sum(train.skipped.values()) == 7
  val = pretokenize.TokenShards(str(tmp_path / "out" / "validation"))
  assert small_tokenizer.decode(val.read(0, val.num_tokens)).startswith(
      "validation doc 0")
  ds = pipeline.make_train_dataset(
      _cfg(seq_len=8, pretokenized_dir=str(tmp_path / "out")),
      small_tokenizer, 2)
  assert next(iter(ds))["skipped_documents"].tolist() == [7, 7]
  # Training from shards needs only the raw validation split (for eval).
  import shutil
  shutil.rmtree(tmp_path / "sp" / "train")
  cfg = _cfg(source="slimpajama", data_dir=str(tmp_path / "sp"),
             pretokenized_dir=str(tmp_path / "out"))
  assert sources.make_source(cfg).name == "slimpajama"
  with pytest.raises(DataError, match="tokenizer_path"):
    tokenizer_lib.prepare_tokenizer(cfg, str(tmp_path / "run"))


def test_pretokenize_task_from_a_slurm_array(monkeypatch, capsys):
  """--task_index=-1 and --num_tasks=0 read SLURM's array variables (task ids may start
  above 0); outside an array job they are a usage error naming the variable."""
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser()
  for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(SystemExit) as e:
    cli_pretokenize._task(-1, 4, parser)  # pylint: disable=protected-access
  assert e.value.code == 2 and "SLURM_ARRAY_TASK_ID" in capsys.readouterr().err
  monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
  monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "2")
  monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
  assert cli_pretokenize._task(-1, 0, parser) == (3, 4)  # pylint: disable=protected-access
  assert cli_pretokenize._task(1, 2, parser) == (1, 2)  # pylint: disable=protected-access
  with pytest.raises(SystemExit):
    cli_pretokenize._task(4, 4, parser)  # pylint: disable=protected-access


def test_wikipedia_mock_feeds_train_and_eval(small_tokenizer):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = _cfg(source="wikipedia", wikipedia_config="20230601.en",
             validation_fraction=0.2, test_fraction=0.1)
  with tfds.testing.mock_data(num_examples=40):
    batch = next(iter(pipeline.make_train_dataset(cfg, small_tokenizer, 2)))
    src = sources.make_source(cfg)
    ev = list(pipeline.make_eval_batches(src, small_tokenizer, "validation",
                                         2, 32))
    text_bytes = sum(len(d["text"].encode()) for d in src.documents("validation"))
  assert batch["inputs"].shape == (2, 32)
  assert sum(int(b["target_bytes"].sum()) for b in ev) == text_bytes
