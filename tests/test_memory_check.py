"""The out-of-memory pre-flight (issue 16) and model.remat, on `configs/demo.py:tiny`.

A run whose train step needs more than train.memory_limit_bytes is refused before
step 1 with the micro-batch that fits; that setting then trains in the same workdir.
Rematerialised blocks give the same loss and gradients with fewer compiled
temporaries. The suggestion logic (smaller micro-batch, remat, nothing fits) is
checked against stand-in measurements, without compiling."""

import dataclasses
import os

import jax
import numpy as np
import pytest
from flax import nnx

from configs import demo
from mambaswelu_jax import config_validation
from mambaswelu_jax.training import memory_check
from mambaswelu_jax.training import train
from mambaswelu_jax.losses import token_nll
from mambaswelu_jax.mesh import make_mesh
from mambaswelu_jax.config_validation import ConfigError
from mambaswelu_jax.models import build_model
from tests.test_train import tiny as train_tiny

pytestmark = pytest.mark.usefixtures("compilation_cache")


def tiny(tokenizer_path, **overrides):
  """test_train's tiny run, shortened: 4 steps, no text sample."""
  return train_tiny(tokenizer_path, **{"eval__sample_tokens": 0, "train__num_steps": 4,
                                       "eval__every_steps": 0, **overrides})


def deeper_model():
  """The tiny model with three blocks: enough block activations for remat to matter."""
  config = demo.get_config("tiny")
  config.model.n_layers = 3
  config.model.d_model = 48
  return config


def test_refused_before_step_one_then_the_suggestion_trains(tokenizer_path, tmp_path):
  config = tiny(tokenizer_path)
  assert config.train.micro_batch_per_device == 2  # accumulation 4 of global batch 8
  resolved = config_validation.resolve(config)
  mesh = make_mesh()
  parts, state, rest = memory_check.abstract_state(resolved, mesh)
  one = memory_check.measure(resolved, mesh, parts, state, rest, micro_batch=1)
  assert one.accum == 8 and one.total > one.argument > 0
  limit = one.total + 1024  # micro-batch 1 fits; the configured 2 keeps twice the activations

  workdir = str(tmp_path)
  config.train.memory_limit_bytes = limit
  with pytest.raises(ConfigError) as refused:
    train.train_and_evaluate(config, workdir)
  message = str(refused.value)
  assert "\n" not in message  # main prints it as one line (exit status 2)
  assert f"{limit:,} bytes" in message and "train.memory_limit_bytes" in message
  needed = int(message.split("needs ")[1].split(" bytes")[0].replace(",", ""))
  assert needed > limit
  assert f"Micro-batch 1 fits ({one.total:,} bytes (" in message and "accumulation 8" in message
  assert "--config.train.micro_batch_per_device=1" in message
  # Refused before anything was trained or written beyond the recorded config.
  names = set(os.listdir(workdir))
  assert not names & {"checkpoints", "snapshots", "final", "metrics.jsonl", "tensorboard",
                      "data_order.jsonl"}, names

  config.train.micro_batch_per_device = 1  # the suggested flag, same workdir
  result = train.train_and_evaluate(config, workdir)
  assert result.step == 4 and np.isfinite(result.final_metrics["validation_loss"])
  log = open(os.path.join(workdir, "train.log"), encoding="utf-8").read()
  assert "memory pre-flight: the train step needs" in log


@pytest.mark.slow  # the switch is one `if`; the refusal test keeps the pre-flight itself in CI
def test_memory_check_off_skips_it(tokenizer_path, tmp_path):
  config = tiny(tokenizer_path, train__memory_limit_bytes=1, train__memory_check=False)
  assert train.train_and_evaluate(config, str(tmp_path)).step == 4


def test_negative_limit_is_a_config_error():
  config = demo.get_config("tiny")
  config.train.memory_limit_bytes = -1
  with pytest.raises(ConfigError, match="train.memory_limit_bytes"):
    config_validation.resolve(config)


@pytest.mark.slow  # compiles each model twice (~17 s each on 2 cores)
@pytest.mark.parametrize("architecture", ["mamba", "transformer"])
def test_remat_same_loss_and_grads_fewer_temporaries(architecture):
  config = deeper_model()
  config.model.architecture = architecture
  config.model.n_heads = 2
  config.model.max_len = config.data.seq_len
  tokens = jax.random.randint(jax.random.key(1), (4, config.data.seq_len + 1), 0,
                              config.model.vocab_size)
  results = {}
  for remat in (False, True):
    config.model.remat = remat
    model = build_model(config.model, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, graphdef=graphdef, rest=rest):
      logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
      return token_nll(logits, tokens[:, 1:]).mean()

    compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile()
    loss, grads = compiled(params)
    results[remat] = (float(loss), jax.tree.leaves(grads),
                      compiled.memory_analysis().temp_size_in_bytes)
  (loss0, grads0, temp0), (loss1, grads1, temp1) = results[False], results[True]
  assert loss1 == pytest.approx(loss0, rel=1e-6)
  for a, b in zip(grads0, grads1):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
  # Far fewer, not a few percent: an unrolled jax.checkpoint per block gave ~2% on CPU
  # (XLA scheduled the recomputation back into the forward pass).
  assert temp1 < 0.8 * temp0, (temp0, temp1)


@pytest.mark.slow  # compiles the train step twice (~29 s on 2 cores)
def test_remat_train_step_fewer_temporaries():
  """memory_check.measure swaps in the remat graph; the compiled step keeps less."""
  config = config_validation.resolve(deeper_model())
  mesh = make_mesh()
  parts, state, rest = memory_check.abstract_state(config, mesh)
  off = memory_check.measure(config, mesh, parts, state, rest, micro_batch=8, remat=False)
  on = memory_check.measure(config, mesh, parts, state, rest, micro_batch=8, remat=True)
  assert (off.remat, on.remat) == (False, True) and off.accum == on.accum == 1
  assert on.argument == off.argument and on.temp < 0.8 * off.temp, (off, on)


# ----------------------------------------------------------------------------
# The suggestion, against stand-in measurements.
# ----------------------------------------------------------------------------


def _fake(total_of):
  """A stand-in for memory_check.measure: total bytes from total_of(micro, remat)."""
  calls = []

  def measure(config, mesh, parts, state, rest, micro_batch, remat=None):
    calls.append((micro_batch, remat))
    return memory_check.StepMemory(micro_batch, 16 // micro_batch, bool(remat), argument=100,
                                   output=100, alias=100, temp=total_of(micro_batch, remat) - 100)
  return measure, calls


class _Mesh:
  class devices:  # pylint: disable=invalid-name
    size = 1


def _suggest(monkeypatch, total_of, micro=8, remat=False):
  config = demo.get_config()          # global batch 16
  config.train.micro_batch_per_device = micro
  config.model.remat = remat
  measure, calls = _fake(total_of)
  monkeypatch.setattr(memory_check, "measure", measure)
  needed = memory_check.StepMemory(micro, 16 // micro, remat, 100, 100, 100,
                                   total_of(micro, remat) - 100)
  return memory_check._suggestion(config, _Mesh, None, None, None, needed, 1000,
                                  "train.memory_limit_bytes"), calls


def test_suggests_the_largest_micro_batch_that_fits(monkeypatch):
  text, calls = _suggest(monkeypatch, lambda m, r: 300 * m)
  assert calls == [(4, False), (2, False)]  # 4 needs 1200: too much; 2 needs 600
  assert "needs 2,400 bytes" in text and "1,000 bytes" in text
  assert "Micro-batch 2 fits (600 bytes, accumulation 8, global_batch_size 16" in text
  assert text.endswith("--config.train.micro_batch_per_device=2.")


def test_suggests_remat_when_micro_batch_one_does_not_fit(monkeypatch):
  text, calls = _suggest(monkeypatch, lambda m, r: (200 if r else 1100) * m)
  assert calls[:3] == [(4, False), (2, False), (1, False)]
  assert calls[3:] == [(8, True), (4, True)]  # remat at 8 needs 1600, at 4 800
  assert "Even micro-batch 1 does not fit" in text
  assert text.endswith("--config.model.remat=True --config.train.micro_batch_per_device=4.")


def test_says_when_nothing_fits(monkeypatch):
  text, _ = _suggest(monkeypatch, lambda m, r: 5000, micro=2, remat=True)
  assert "No micro-batch fits" in text and "data.seq_len" in text


def test_micro_batch_choices():
  assert memory_check.micro_batch_choices(16, 1) == [16, 8, 4, 2, 1]
  assert memory_check.micro_batch_choices(24, 2) == [12, 6, 4, 3, 2, 1]


def test_available_bytes():
  cpu = jax.devices()[:1]
  assert memory_check.available_bytes(cpu, 12345) == (12345, "train.memory_limit_bytes")
  host, source = memory_check.available_bytes(cpu)
  assert host > 0 and "MemAvailable" in source

  @dataclasses.dataclass
  class Gpu:
    platform: str = "gpu"

    def memory_stats(self):
      return {"bytes_limit": 80 << 30, "bytes_in_use": 1 << 30}

  assert memory_check.available_bytes([Gpu(), Gpu()]) == (80 << 30, "gpu bytes_limit")
