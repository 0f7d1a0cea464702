"""Recurrent sampling: top-k / top-p, determinism, equality with the full re-forward
baseline, mixed prompt lengths in one batch, and the command line."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mambaswelu_jax.cli import generate as gen
from mambaswelu_jax import sampling
from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax import sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEG = float(jnp.finfo(jnp.float32).min)


@pytest.fixture(scope="module")
def run(trained_workdir):
  return restore.load_run(trained_workdir, "latest")


@pytest.fixture(scope="module")
def g(run):
  """One generator (and so one compilation cache): the tests below share two shapes,
  batch 1 or 3, prompts of at most 8 tokens, 16 new tokens."""
  return sampling.Generator(run)


def _kept(logits, top_k, top_p):
  out = sampling.filter_logits(jnp.asarray(logits, jnp.float32), jnp.int32(top_k), jnp.float32(top_p))
  return (np.asarray(out) > NEG).tolist()


def test_top_k_and_top_p_filters():
  logits = np.log(np.array([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.4, 0.1]]))
  assert _kept(logits, 0, 1.0) == [[True] * 4] * 2
  assert _kept(logits, 1, 1.0) == [[False, True, False, False], [False, False, True, False]]
  assert _kept(logits, 2, 1.0) == [[False, True, False, True], [True, True, True, False]]  # a tie
  # top-p: the smallest set, largest first, whose mass reaches p.
  assert _kept(logits, 0, 0.35) == [[False, True, False, False], [False, False, True, False]]
  assert _kept(logits, 0, 0.5) == [[False, True, False, True], [True, True, True, False]]
  assert _kept(logits, 0, 0.75) == [[False, True, True, True], [True, True, True, False]]
  assert _kept(logits, 0, 0.95) == [[True] * 4, [True] * 4]
  # top-k first, then top-p over what is left (renormalised): 0.4 / 0.7 > 0.5.
  assert _kept(logits[:1], 2, 0.5) == [[False, True, False, False]]


def test_sampling_frequencies_follow_the_filtered_distribution():
  probs = np.array([0.05, 0.4, 0.15, 0.3, 0.1])
  logits = jnp.asarray(np.log(probs)[None].repeat(4000, 0), jnp.float32)
  draw = jax.jit(sampling.sample_token)

  def freq(temperature, k, p, seed=0):
    t = np.asarray(draw(logits, jax.random.key(seed), jnp.float32(temperature), jnp.int32(k),
                        jnp.float32(p)))
    return np.bincount(t, minlength=5) / len(t)

  np.testing.assert_allclose(freq(1.0, 0, 1.0), probs, atol=0.03)
  np.testing.assert_allclose(freq(1.0, 2, 1.0), [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0], atol=0.03)
  np.testing.assert_allclose(freq(1.0, 0, 0.8), [0, 0.4 / 0.85, 0.15 / 0.85, 0.3 / 0.85, 0],
                             atol=0.03)
  sharp = probs ** 2 / (probs ** 2).sum()  # temperature 0.5
  np.testing.assert_allclose(freq(0.5, 0, 1.0), sharp, atol=0.03)
  assert freq(0.0, 0, 1.0)[1] == 1.0  # greedy


def test_same_seed_same_text(run, g):
  kw = dict(max_new_tokens=16, num_samples=3, temperature=1.0, top_k=50, top_p=0.9,
            stop_at_eos=False)
  a = g.generate("def ", seed=7, **kw)
  b = sampling.Generator(run).generate("def ", seed=7, **kw)   # a new generator, same text
  c = g.generate("def ", seed=8, **kw)
  assert a.tokens == b.tokens and a.texts == b.texts
  assert a.tokens != c.tokens
  assert len({tuple(t) for t in a.tokens}) > 1     # the samples of one batch differ
  assert all(len(t) == 16 for t in a.tokens)
  assert a.tokens_per_second > 0 and a.new_tokens == 48


def test_recurrent_decoding_equals_full_reforward(run, g):
  """Greedy tokens from the cache equal those from re-running the forward every step."""
  prompt = g.encode_prompt("import os\n")
  new = 16
  (fast,), _, _ = g.generate_ids([prompt], new, temperature=0.0, stop_at_eos=False)
  buf = np.zeros((1, 64), np.int32)
  buf[0, :len(prompt)] = prompt
  fn = jax.jit(functools.partial(sampling.reforward_tokens, max_new_tokens=new))
  slow = fn(run.params, run.handle, jnp.asarray(buf), jnp.int32(len(prompt)), jax.random.key(0),
            jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
  assert fast == np.asarray(slow)[0].tolist()


def test_prompts_of_different_lengths_share_a_batch(g):
  prompts = [g.encode_prompt(p) for p in ("x", "def f(a, b):", "# a")]
  assert len({len(p) for p in prompts}) == 3 and max(map(len, prompts)) <= 8
  together, _, _ = g.generate_ids(prompts, 16, temperature=0.0, stop_at_eos=False)
  alone = [g.generate_ids([p], 16, temperature=0.0, stop_at_eos=False)[0][0] for p in prompts]
  assert together == alone


def test_stop_at_eos(run, g):
  out = g.generate("", max_new_tokens=16, num_samples=3, temperature=3.0, seed=1)
  assert all(run.tokenizer.eos_id not in t for t in out.tokens)


def test_side_by_side():
  text = gen.side_by_side([("run a", "one two\nthree"), ("run b", "x" * 30)], width=43)
  lines = text.split("\n")
  assert lines[0].startswith("run a") and "| run b" in lines[0]
  assert all(len(line) <= 43 for line in lines)
  assert "three" in text and text.count("x") == 30


def test_command_line_two_runs_side_by_side(trained_workdir, tmp_path):
  out_json = tmp_path / "samples.json"
  other = tmp_path / "other_run"
  shutil.copytree(trained_workdir, other)
  cmd = [sys.executable, "-m", "mambaswelu_jax.cli.generate",
         f"--workdir={trained_workdir},{other}", "--step=4", "--prompt=def main(",
         "--max_new_tokens=16", "--num_samples=2", "--seed=3", "--width=120",
         f"--output_json={out_json}"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tokens/s" in proc.stdout and "def main(" in proc.stdout
  with open(out_json, encoding="utf-8") as f:
    data = json.load(f)
  a, b = (data["runs"][name]["def main("] for name in sorted(data["runs"]))
  assert len(a["texts"]) == 2 and a["texts"] == b["texts"]  # same params, same seed
  header = [l for l in proc.stdout.split("\n") if "tokens/s]" in l][0]
  assert "other_run@4" in header and " | " in header
  missing = subprocess.run(cmd[:3] + [f"--workdir={tmp_path / 'none'}"], env=env, capture_output=True,
                           text=True, timeout=300, check=False)
  assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_trainers_end_of_run_sample_is_the_same_sampler(run, g):
  """sampling.sample_text (the trainer's sample in train.log and TensorBoard) is generate's
  sampler: greedy, it gives the Generator's tokens for the same prompt."""
  text = sampling.sample_text(run.handle, run.params, run.tokenizer, "import os\n", 16, 0.0)
  (ids,), _, _ = g.generate_ids([g.encode_prompt("import os\n")], 16, temperature=0.0,
                                stop_at_eos=False)
  assert text == run.tokenizer.decode(ids)
