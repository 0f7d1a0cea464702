"""The Transformer baseline: KV-cache decoding equals the full forward, parameter
formula and matching against the Mamba model, FLOPs, and a trained baseline run through
the same train / eval / generate tools as the Mamba model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default, demo
from mambaswelu_jax.models import build_model, match_mamba_size, param_count
from mambaswelu_jax.models.flops import flops_per_token
from mambaswelu_jax.models.handle import split_model
from mambaswelu_jax.models.transformer import TransformerLM, transformer_param_count
from tests.test_model import assert_decoding_equals_forward


def tiny(**overrides):
  cfg = default.model_config()
  cfg.update(vocab_size=97, d_model=24, n_layers=2, n_heads=3, compute_dtype="float32",
             max_len=32, architecture="transformer")
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_kv_cache_decoding_equals_the_full_forward(positions, mlp):
  cfg = tiny(learned_positions=positions, mlp=mlp, n_heads=2 if not positions else 3)
  model = build_model(cfg, nnx.Rngs(1))
  assert isinstance(model, TransformerLM)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 11)))
  cache = assert_decoding_equals_forward(model, tokens)
  np.testing.assert_array_equal(cache["position"], [tokens.shape[1]] * 3)


def test_attention_is_causal():
  model = build_model(tiny(n_heads=2), nnx.Rngs(0))
  a = jnp.asarray([[1, 2, 3, 4, 5, 6]])
  b = a.at[0, 4:].set(9)
  np.testing.assert_allclose(model(a)[:, :4], model(b)[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"mlp": "swiglu"}, {"learned_positions": True},
                                       {"norm": "rmsnorm", "mlp_hidden": 40}])
def test_parameter_formula_equals_the_built_model(overrides):
  cfg = tiny(**overrides)
  assert transformer_param_count(cfg) == param_count(cfg)


@pytest.mark.parametrize("size", [
    dict(vocab_size=1024, d_model=64, n_layers=2, d_state=8, dense_hidden=128),
    dict(vocab_size=1024, d_model=32, n_layers=2, d_state=8, dense_hidden=64),
    dict(vocab_size=1024, d_model=128, n_layers=3, d_state=8, dense_hidden=256),
    {},  # the study model
])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_matched_transformer_is_within_five_percent_of_the_mamba_model(size, mlp):
  mamba = default.model_config()
  mamba.update(size)
  t = match_mamba_size(mamba, mlp=mlp)
  n_mamba, n_t = param_count(mamba), param_count(t)
  assert abs(n_t - n_mamba) / n_mamba <= 0.05, (n_mamba, n_t)
  assert t.architecture == "transformer" and t.d_model == mamba.d_model
  assert t.vocab_size == mamba.vocab_size


def test_flops_count_weights_and_attention():
  cfg = tiny()
  f = flops_per_token(cfg, 16)
  params = param_count(cfg)
  norms = cfg.n_layers * 2 * 2 * cfg.d_model + 2 * cfg.d_model
  assert f["matmul"] == 2 * (params - norms)  # every non-norm parameter is a matmul weight
  assert f["attention"] == cfg.n_layers * 4 * cfg.d_model * 8.5
  assert flops_per_token(cfg, 64)["forward"] > f["forward"]
  assert f["training"] == 3 * f["forward"]


def test_transformer_run_through_train_eval_and_generate(trained_transformer_workdir, tmp_path):
  """The baseline goes through the same tools as the Mamba model: the real
  train_and_evaluate (conftest), `eval` on its checkpoint (equal to the trainer's own
  validation), and KV-cache generation equal to greedy re-forwarding."""
  import functools  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax import evaluation
  from mambaswelu_jax import sampling
  from mambaswelu_jax import sampling
  from mambaswelu_jax.checkpointing import restore  # pylint: disable=import-outside-toplevel
  wd = trained_transformer_workdir
  with open(os.path.join(wd, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  steps = demo.get_config("tiny").train.num_steps
  trainer = [r for r in rows if r["step"] == steps and "validation_loss" in r][-1]
  assert np.isfinite(trainer["validation_loss"])
  assert trainer["validation_loss"] < np.log(demo.get_config("tiny").model.vocab_size)
  (r,) = evaluation.evaluate_run(wd, "latest", splits=("validation",), max_tokens=256,
                                 output_dir=str(tmp_path), log=lambda *_: None)
  run = restore.load_run(wd, "latest")
  assert run.config.model.architecture == "transformer" and r["step"] == steps
  np.testing.assert_allclose(r["splits"]["validation"]["loss"], trainer["validation_loss"],
                             rtol=1e-5)
  np.testing.assert_allclose(r["splits"]["validation"]["bits_per_byte"],
                             trainer["validation_bits_per_byte"], rtol=1e-5)
  g = sampling.Generator(run)
  prompt, new = g.encode_prompt("import os\n"), 12
  (fast,), _, _ = g.generate_ids([prompt], new, temperature=0.0, stop_at_eos=False)
  buf = np.zeros((1, 32), np.int32)
  buf[0, :len(prompt)] = prompt
  slow = jax.jit(functools.partial(sampling.reforward_tokens, max_new_tokens=new))(
      run.params, run.handle, jnp.asarray(buf), jnp.int32(len(prompt)), jax.random.key(0),
      jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
  assert fast == np.asarray(slow)[0].tolist()


def test_generate_tokens_with_prompts_of_different_lengths_equals_greedy_reforward():
  from mambaswelu_jax import sampling  # pylint: disable=import-outside-toplevel
  cfg = tiny(vocab_size=50, n_layers=1, n_heads=2)
  model = build_model(cfg, nnx.Rngs(3))
  handle, params = split_model(model)
  prompts = jnp.asarray([[1, 2, 3, 4], [5, 6, 0, 0]], jnp.int32)
  toks = sampling.generate_tokens(params, handle, prompts, jnp.asarray([4, 2]),
                                  jax.random.key(0), 0.0, 0, 1.0, -1, max_new_tokens=4)
  forward = nnx.jit(lambda m, t: m(t))  # one fixed width: causal, so padding is harmless
  for i, length in enumerate([4, 2]):
    buf = np.zeros((1, 8), np.int32)
    buf[0, :length] = prompts[i, :length]
    for j in range(4):
      buf[0, length + j] = int(jnp.argmax(forward(model, jnp.asarray(buf))[0, length + j - 1]))
    assert buf[0, length:length + 4].tolist() == [int(t) for t in toks[i]]
