"""Shared pytest fixtures."""

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
  from mambaswelu_jax import train
  workdir = str(tmp_path_factory.mktemp("trained_run"))
  train.train_and_evaluate(demo.get_config("tiny"), workdir)
  return workdir
