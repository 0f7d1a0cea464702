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
