"""Generation-quality measures: distinct-n, repetition, cross-run perplexity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax import scoring
from mambaswelu_jax.cli import gen_quality as gq


def test_distinct_and_repetition_by_hand():
  texts = ["a b c a b", "a b d"]
  # unigrams: a b c a b a b d -> {a, b, c, d} = 4 of 8
  assert gq.distinct_n(texts, 1) == pytest.approx(4 / 8)
  # bigrams: ab bc ca ab | ab bd -> {ab, bc, ca, bd} = 4 of 6
  assert gq.distinct_n(texts, 2) == pytest.approx(4 / 6)
  assert gq.repetition_n("x y z w x y z w x", 4) == pytest.approx(2 / 6)
  assert gq.repetition_n("one two three four five", 4) == 0.0
  assert math.isnan(gq.repetition_n("too short", 4))
  m = gq.text_measures(["the the the the the the", "a b c d e f"])
  assert m["repetition_4"] == pytest.approx((2 / 3 + 0) / 2) and m["num_samples"] == 2


def test_score_sequences_and_cross_scores_equal_the_forward(trained_workdir):
  run = restore.load_run(trained_workdir, 8)
  tok = run.tokenizer
  prompt, sample = "def f(", "x, y):\n    return x"
  ctx = [tok.eos_id] + tok.encode(prompt)
  whole = [tok.eos_id] + tok.encode(prompt + sample)
  n = len(whole) - len(ctx)
  logits = run.logits([whole[:-1]])[0].astype(jnp.float32)
  logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
  want = logp[np.arange(len(whole) - 1), whole[1:]][-n:].sum()
  ((got, _),) = scoring.score_sequences(run, [(ctx, whole[len(ctx):])])
  np.testing.assert_allclose(got, want, rtol=2e-5)
  s = gq.cross_scores(run, [prompt], [sample])
  assert s["tokens"] == n and s["bytes"] == len(sample.encode())
  np.testing.assert_allclose(s["perplexity"], math.exp(-want / n), rtol=1e-4)
  np.testing.assert_allclose(s["bits_per_byte"], -want / (math.log(2) * s["bytes"]), rtol=1e-4)


def test_compare_runs(trained_workdir):
  runs = [restore.load_run(trained_workdir, 4), restore.load_run(trained_workdir, 8)]
  result = gq.compare_runs(runs, ["import "], num_samples=3, max_new_tokens=12,
                           temperature=1.0, top_p=0.95, seed=0)
  names = list(result["runs"])
  assert len(names) == 2
  for g in names:
    assert set(result["perplexity"][g]) == set(names)
    assert all(v > 1 for v in result["perplexity"][g].values())
    assert len(result["runs"][g]["samples"]) == 3
  report = gq.format_report(result)
  assert "distinct-2" in report and "scorer" in report
