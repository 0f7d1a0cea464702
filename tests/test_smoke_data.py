"""`:smoke` study configs with no data: a small sample in the source's real on-disk
format is written from the embedded corpus and read by the real reader (real zstandard,
real tfds, real grain); a rerun finds the same sample; the configs train on it."""

import collections
import glob
import json
import os

import pytest

from configs import slimpajama_chinchilla, slimpajama_llama, wikipedia_llama
from mambaswelu_jax.cli import check_data
from mambaswelu_jax.data import smoke_sample, sources
from mambaswelu_jax.data.sources import DataError

SMOKE_CONFIGS = {"slimpajama_llama": slimpajama_llama,
                 "slimpajama_chinchilla": slimpajama_chinchilla,
                 "wikipedia_llama": wikipedia_llama}


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
  """One sample cache for the module (the Wikipedia one takes seconds to prepare)."""
  return str(tmp_path_factory.mktemp("smoke_cache"))


@pytest.fixture
def cache(smoke_root, monkeypatch):
  monkeypatch.setenv(smoke_sample.SMOKE_DATA_ENV, smoke_root)
  return smoke_root


def _data_cfg(name):
  return SMOKE_CONFIGS[name].get_config("smoke").data


def _counts(source):
  counts = {}
  for split in sources.SPLITS:
    counts[split] = collections.Counter(d["text_type"] for d in source.documents(split))
    assert not source.skipped[split], (split, source.skipped[split])
  return counts


def _mtimes(directory):
  return {p: os.stat(p).st_mtime_ns
          for p in glob.glob(os.path.join(directory, "**"), recursive=True)}


def test_smoke_configs_ask_for_a_sample_and_real_configs_do_not():
  for module in SMOKE_CONFIGS.values():
    assert module.get_config("smoke").data.smoke_sample is True
    assert module.get_config().data.smoke_sample is False
    assert module.get_config("smoke").data.data_dir == ""


def test_slimpajama_sample_real_layout_records_and_reader(cache, caplog):
  caplog.set_level("INFO", logger="mambaswelu_jax.data.smoke_sample")
  source = sources.make_source(_data_cfg("slimpajama_chinchilla"))
  root = source.root
  assert root == smoke_sample.sample_dir("slimpajama", _data_cfg("slimpajama_chinchilla"))
  assert os.path.dirname(root) == cache
  assert "SlimPajama-format sample" in caplog.text and root in caplog.text
  # The published layout: {split}/chunk*/example_{train,holdout}_N.jsonl.zst.
  for split in sources.SPLITS:
    files = sources.slimpajama_files(root, split)
    assert len(files) >= 2 and len({os.path.dirname(f) for f in files}) == 2
  assert [os.path.relpath(f, root) for f in sources.slimpajama_files(root, "train")] == [
      "train/chunk1/example_train_0.jsonl.zst", "train/chunk1/example_train_1.jsonl.zst",
      "train/chunk2/example_train_2.jsonl.zst", "train/chunk2/example_train_3.jsonl.zst"]
  # Each line a SlimPajama record (read here with zstandard directly, not the reader).
  import zstandard
  with open(sources.slimpajama_files(root, "validation")[0], "rb") as f:
    lines = zstandard.ZstdDecompressor().decompress(f.read()).decode().splitlines()
  records = [json.loads(line) for line in lines]
  assert records and all(set(r) == {"text", "meta"} and r["text"] for r in records)
  assert {r["meta"]["redpajama_set_name"] for r in records} <= set(sources.SLIMPAJAMA_SETS)
  # The real reader: both text types in every split, nothing skipped, the manifest agrees.
  counts = _counts(source)
  for split in sources.SPLITS:
    assert set(counts[split]) == {"RedPajamaGithub", "RedPajamaWikipedia"}, split
  assert counts["train"].total() > 10 * counts["validation"].total() > 0
  with open(os.path.join(root, smoke_sample.MANIFEST), encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["documents_by_split_and_set"] == {s: dict(c) for s, c in counts.items()}
  assert 2_000_000 < manifest["text_bytes"] < 4_000_000
  # Text types filter as for real data.
  cfg = _data_cfg("slimpajama_chinchilla")
  cfg.text_types = "RedPajamaGithub"
  only = sources.make_source(cfg)
  assert {d["text_type"] for d in only.documents("validation")} == {"RedPajamaGithub"}


def test_slimpajama_sample_is_reused_and_shared(cache, caplog):
  first = sources.make_source(_data_cfg("slimpajama_llama"))
  before = _mtimes(first.root)
  ids = [d["id"] for d in first.documents("validation")]
  caplog.set_level("INFO", logger="mambaswelu_jax.data.smoke_sample")
  again = sources.make_source(_data_cfg("slimpajama_chinchilla"))  # the other run config
  assert again.root == first.root and _mtimes(again.root) == before
  assert "reading the SlimPajama-format sample" in caplog.text
  assert [d["id"] for d in again.documents("validation")] == ids
  assert not [n for n in os.listdir(cache) if n.startswith(".")]  # no temporary left


def test_wikipedia_sample_is_a_prepared_tfds_dataset(cache, caplog):
  tfds = pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.text import wikipedia as tfds_wikipedia
  caplog.set_level("INFO", logger="mambaswelu_jax.data.smoke_sample")
  cfg = _data_cfg("wikipedia_llama")
  source = sources.make_source(cfg)
  data_dir = source.data_dir
  assert data_dir == smoke_sample.sample_dir("wikipedia", cfg)
  assert "Wikipedia (tfds)-format sample" in caplog.text
  # tfds's own builder (the registered class, not ours) finds it prepared.
  builder = tfds.builder(f"wikipedia/{cfg.wikipedia_config}", data_dir=data_dir)
  assert type(builder) is tfds_wikipedia.Wikipedia and builder.is_prepared()
  assert os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))
  assert list(builder.info.splits) == ["train"]
  n = builder.info.splits["train"].num_examples
  counts = _counts(source)
  assert sum(c["wikipedia"] for c in counts.values()) == n > 300
  assert all(counts[s]["wikipedia"] > 0 for s in sources.SPLITS)
  doc = next(source.documents("validation"))
  title = doc["id"]
  assert doc["text"].startswith(title + "\n\n")  # title: a module's dotted name
  assert title and "/" not in title and not title.endswith(".py")
  # Reused on a rerun: the same files, the same documents.
  before = _mtimes(data_dir)
  caplog.clear()
  again = sources.make_source(cfg)
  assert again.data_dir == data_dir and _mtimes(data_dir) == before
  assert "reading the Wikipedia (tfds)-format sample" in caplog.text
  assert next(again.documents("validation"))["id"] == title


def test_real_data_dir_wins_and_no_sample_without_the_flag(cache, tmp_path):
  # A given data_dir is read (here: missing, so the usual DataError), no sample written.
  cfg = _data_cfg("slimpajama_chinchilla")
  cfg.data_dir = str(tmp_path / "nothing")
  with pytest.raises(DataError, match="no files matching"):
    sources.make_source(cfg)
  # Not a smoke config: no data_dir stays an error naming the key, nothing is written.
  plain = slimpajama_chinchilla.get_config().data
  before = sorted(os.listdir(cache))
  with pytest.raises(DataError, match="data.data_dir is empty"):
    sources.make_source(plain)
  with pytest.raises(DataError, match="wikipedia"):
    sources.make_source(dict(wikipedia_llama.get_config().data.to_dict(),
                             data_dir=str(tmp_path / "nothing")))
  assert sorted(os.listdir(cache)) == before


def test_check_command_reads_the_sample(cache, capsys):
  check_data.main(["--source=slimpajama", "--smoke_sample", "--splits=validation"])
  out = capsys.readouterr().out
  assert "RedPajamaGithub" in out and "RedPajamaWikipedia" in out and "skipped: none" in out


def test_leftovers_do_not_count_as_a_sample(tmp_path, monkeypatch):
  """A writer that died leaves a hidden temporary directory: ignored. A directory
  under the final name without the manifest is not taken for a sample."""
  monkeypatch.setenv(smoke_sample.SMOKE_DATA_ENV, str(tmp_path))
  cfg = _data_cfg("slimpajama_llama")
  final = smoke_sample.sample_dir("slimpajama", cfg)
  os.makedirs(os.path.join(tmp_path, "." + os.path.basename(final) + ".dead", "train"))
  os.makedirs(os.path.join(final, "train"))
  open(os.path.join(final, "train", "stray"), "w").close()
  with pytest.raises(DataError, match="delete it and rerun"):
    sources.make_source(cfg)
  os.remove(os.path.join(final, "train", "stray"))
  os.rmdir(os.path.join(final, "train"))
  source = sources.make_source(cfg)  # an empty directory is replaced
  assert source.root == final and next(source.documents("train"))["text"]


def test_unwritable_cache_is_a_data_error(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  monkeypatch.setenv(smoke_sample.SMOKE_DATA_ENV, str(blocker / "smoke"))
  with pytest.raises(DataError, match=smoke_sample.SMOKE_DATA_ENV):
    sources.make_source(_data_cfg("slimpajama_llama"))


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")
@pytest.mark.parametrize("name", sorted(SMOKE_CONFIGS))
def test_smoke_config_trains_on_its_sample(name, cache, tmp_path):
  """The real trainer on each `:smoke` config and its sample: stopped after one step,
  then the same config again resumes it (the recorded config matches: data_dir stays
  "" and the sample is found again) and finishes step 2."""
  import numpy as np
  from mambaswelu_jax.training import train

  def config(**train_overrides):
    c = SMOKE_CONFIGS[name].get_config("smoke")
    c.train.num_steps = 2
    c.train.warmup_steps = 1
    c.train.log_every_steps = 1
    c.checkpoint.every_steps = 2
    c.checkpoint.snapshot_every_steps = 0
    c.eval.every_steps = 2
    c.eval.max_batches = 1
    c.train.update(train_overrides)
    return c

  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(config(stop_at_step=1), workdir)
  assert first.step == 1
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    data = json.load(f)["data"]
  assert data["data_dir"] == "" and data["smoke_sample"] is True
  result = train.train_and_evaluate(config(), workdir)  # resumes at step 1
  assert result.step == 2
  loss = result.final_metrics["validation_loss"]
  assert np.isfinite(loss) and loss < np.log(4096) + 0.5
