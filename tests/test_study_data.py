"""data.text_types: the toy study's "single type" dataset from the embedded corpus."""

import pytest

from mambaswelu_jax.data import sources


def _memory():
  docs = {s: [{"text": f"{t} {s} {i}", "text_type": t, "id": f"{t}:{s}:{i}"}
              for i in range(3) for t in ("docstring", "code")] for s in sources.SPLITS}
  return sources.InMemorySource(docs, ["docstring", "code"])


def test_type_filter_keeps_only_the_named_types_in_every_split():
  src = sources.TypeFilteredSource(_memory(), ["code"])
  assert src.text_types == ["code"]
  for split in sources.SPLITS:
    docs = list(src.documents(split))
    assert len(docs) == 3 and {d["text_type"] for d in docs} == {"code"}


def test_type_filter_rejects_unknown_types():
  with pytest.raises(sources.DataError, match="unknown"):
    sources.TypeFilteredSource(_memory(), ["wikipedia"])


def test_make_source_reads_text_types_key():
  src = sources.make_source({"source": "embedded", "text_types": "docstring"})
  assert src.text_types == ["docstring"] and "docstring" in src.name
  assert sources.make_source({"source": "embedded", "text_types": ""}).text_types == [
      "docstring", "code"]
