"""Property tests (hypothesis): the packer and the command-line config overrides.

(The tokenizer's round trip on arbitrary text is a property test in
tests/test_data_tokenizer.py; here it is checked on whole documents made of
code-like lines, with the byte counts bits-per-byte relies on.)"""

import os

import grain
import hypothesis
from hypothesis import strategies as st
import numpy as np

from mambaswelu_jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

docs_strategy = st.lists(st.lists(st.integers(0, 2**31 - 1), min_size=0, max_size=30),
                         min_size=0, max_size=25)


def _packed(docs, window):
  parent = grain.MapDataset.source([np.asarray(d, np.int32) for d in docs]).to_iter_dataset()
  return iter(pipeline.pack_dataset(parent, window))


def _drain(it):
  out = []
  while True:
    try:
      out.append(next(it))
    except StopIteration:
      return out


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(docs_strategy, st.integers(1, 17))
def test_packer_loses_and_repeats_no_token(docs, window):
  """Joined windows == the documents' tokens, cut to a whole number of windows."""
  windows = _drain(_packed(docs, window))
  stream = np.asarray([t for d in docs for t in d], np.int32)
  n = len(stream) // window
  assert len(windows) == n
  assert all(w.shape == (window,) and w.dtype == np.int32 for w in windows)
  joined = np.concatenate(windows) if windows else np.zeros((0,), np.int32)
  np.testing.assert_array_equal(joined, stream[:n * window])


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(docs_strategy, st.integers(1, 9), st.data())
def test_packer_resumes_exactly_from_any_state(docs, window, data):
  """A fresh packer set to the state taken after k windows yields the same remaining
  windows (what a resumed run's data stream relies on)."""
  it = _packed(docs, window)
  total = sum(len(d) for d in docs) // window
  k = data.draw(st.integers(0, total))
  for _ in range(k):
    next(it)
  state = it.get_state()
  rest = _drain(it)
  fresh = _packed(docs, window)
  fresh.set_state(state)
  again = _drain(fresh)
  assert len(again) == len(rest) == total - k
  for a, b in zip(again, rest):
    np.testing.assert_array_equal(a, b)


# --- command-line overrides -------------------------------------------------------------

_KEYS = {  # key -> strategy of values a user may type
    "train.learning_rate": st.floats(1e-6, 10.0, allow_nan=False),
    "train.num_steps": st.integers(0, 10**9),
    "train.nonfinite_lr_factor": st.floats(0.01, 1.0),
    "checkpoint.async_save": st.booleans(),
    "checkpoint.on_write_error": st.sampled_from(["continue", "stop"]),
    "eval.sample_prompt": st.text(alphabet=st.characters(
        min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=["Cs"]), max_size=20),
    "data.seq_len": st.integers(1, 1 << 16),
}


def _parse(argv):
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  argv = ["prog", *argv]  # the overrides are read from the command line when defined
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def _typed(value):
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float):
    return repr(value)
  return str(value)


@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(st.dictionaries(st.sampled_from(sorted(_KEYS)), st.none(), min_size=1)
                  .flatmap(lambda d: st.fixed_dictionaries({k: _KEYS[k] for k in d})))
def test_config_overrides_parse_to_the_typed_value(overrides):
  """--config.block.key=value sets exactly that key, with the key's type, and the
  result still validates (the values drawn are valid ones)."""
  from configs import demo
  from mambaswelu_jax import config_validation as cv
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    config = _parse(["--config=configs/demo.py:tiny",
                     *[f"--config.{k}={_typed(v)}" for k, v in overrides.items()]])
  finally:
    os.chdir(cwd)
  base = cv.flatten(demo.get_config("tiny"))
  got = cv.flatten(config)
  for key, value in overrides.items():
    if isinstance(value, float):
      assert got[key] == float(value) and isinstance(got[key], float), key
    else:
      assert got[key] == value and type(got[key]) is type(value), key
  for key in base:
    if key not in overrides and key != "data.vocab_size":
      assert got[key] == base[key], key
  cv.check_structure(config)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(st.sampled_from(sorted(_KEYS)), st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
def test_unknown_override_keys_are_refused(key, junk):
  """A misspelt key on the command line is an error naming it (before anything runs)."""
  import pytest
  block, field = key.split(".")
  bad = f"{block}.{field}{junk}"
  with pytest.raises(Exception, match=field):
    _parse(["--config=" + os.path.join(ROOT, "configs/demo.py") + ":tiny",
            f"--config.{bad}=1"])


# --- the tokenizer on code-like documents ------------------------------------------------

_line = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=30)
_indent = st.sampled_from(["", "  ", "    ", "\t"])


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(st.lists(st.tuples(_indent, _line), max_size=12),
                  st.sampled_from(["\n", "\r\n"]))
def test_tokenizer_round_trip_on_documents(small_tokenizer, lines, newline):
  text = newline.join(i + l for i, l in lines)
  ids = small_tokenizer.encode(text)
  assert small_tokenizer.decode(ids) == text
  assert small_tokenizer.count_bytes(ids) == len(text.encode("utf-8"))
