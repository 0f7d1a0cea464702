"""Shared pytest fixtures."""

import os

import jax
import pytest


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
  """A 1024-piece lossless tokenizer trained on ~1 MB of the embedded corpus."""
  from mambaswelu_jax.data import sources, tokenizer
  path = str(tmp_path_factory.mktemp("tokenizer") / "tok.model")
  docs = sources.make_source({"source": "embedded"}).documents("train")
  return tokenizer.train_tokenizer(tokenizer.sample_texts(docs, 1_000_000),
                                   vocab_size=1024, output_path=path)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A small trained run: the real `train_and_evaluate` on configs/demo.py:tiny (8 steps;
  full checkpoints and params-only snapshots at steps 4 and 8, final params at 8).
  Shared by the eval, generate and lm-eval tests; treat it as read-only."""
  from configs import demo
  from mambaswelu_jax.training import train
  workdir = str(tmp_path_factory.mktemp("trained_run"))
  train.train_and_evaluate(demo.get_config("tiny"), workdir)
  return workdir


@pytest.fixture(scope="session")
def trained_transformer_workdir(tmp_path_factory):
  """The same small run with the Transformer baseline (configs/demo.py:tiny, two heads):
  the eval, generation and lm-eval tests run on both architectures. Read-only."""
  from configs import demo
  from mambaswelu_jax.training import train
  config = demo.get_config("tiny")
  config.model.architecture = "transformer"
  config.model.n_heads = 2
  config.model.max_len = max(config.model.max_len, config.data.seq_len)
  workdir = str(tmp_path_factory.mktemp("trained_transformer_run"))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """Runs of one config compile once: later runs (and subprocesses) read the cache.
  Modules that start many runs opt in with `pytestmark = usefixtures(...)`."""
  path = str(tmp_path_factory.mktemp("jax_cache"))
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  yield path
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
  os.environ.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  """The tiny demo's tokenizer, trained once per module."""
  from configs import demo
  from mambaswelu_jax.data import tokenizer
  workdir = str(tmp_path_factory.mktemp("tok"))
  return tokenizer.prepare_tokenizer(demo.get_config("tiny").data, workdir)
