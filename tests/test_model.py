"""The MambaSWELU model: parameter counts, initialisation, decoding, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import default, original_124m
from mambaswelu_jax.models import (build_model, count_parameters, param_count,
                                   swelu_scalars, weight_decay_mask)
from mambaswelu_jax.models.flops import flops_per_token


def tiny(**overrides):
  cfg = default.model_config()
  cfg.update(vocab_size=97, d_model=24, n_layers=2, d_state=5, dense_hidden=40,
             compute_dtype="float32", scan_chunk=4, max_len=32)
  cfg.update(overrides)
  return cfg


def test_original_as_run_model_has_exactly_124_104_719_parameters():
  assert param_count(original_124m.get_config().model) == 124_104_719


def test_parameter_count_formula_of_the_study_model():
  """Independent count from the architecture's formulas."""
  m = default.get_config().model
  d, di, n, r, h, v = m.d_model, 2 * m.d_model, m.d_state, 64, m.dense_hidden, m.vocab_size
  block = (2 * d                        # LayerNorm
           + d * 2 * di                  # in_proj
           + m.d_conv * di + di          # depthwise conv + bias
           + di * (r + 2 * n)            # x_proj
           + r * di + di                 # dt_proj + bias
           + di * n + di                 # A_log, D
           + di * d                      # out_proj
           + 2 * 2)                      # two SWELU sites, k and λ each
  dense = d * h + h + h * h + h + h * d + d + 3 * 2
  assert param_count(m) == v * d + m.n_layers * block + 2 * d + dense


def test_initialisation_follows_the_mamba_paper():
  cfg = tiny(n_layers=3, init="fan_in")
  model = build_model(cfg, nnx.Rngs(0))
  mixer = model.blocks[0].mixer
  di = cfg.expand * cfg.d_model
  np.testing.assert_allclose(mixer.A_log[...],
                             np.log(np.tile(np.arange(1, cfg.d_state + 1), (di, 1))), rtol=1e-6)
  np.testing.assert_array_equal(mixer.D[...], np.ones(di))
  dt = jax.nn.softplus(mixer.dt_proj.bias[...])
  assert float(dt.min()) >= cfg.dt_min * 0.999 and float(dt.max()) <= cfg.dt_max * 1.001
  # out_proj is the torch default init scaled by 1/sqrt(2 n_layers).
  bound = 1 / np.sqrt(di) / np.sqrt(2 * cfg.n_layers)
  assert float(jnp.abs(mixer.out_proj.kernel[...]).max()) <= bound
  assert float(jnp.abs(mixer.out_proj.kernel[...]).max()) > 0.8 * bound


def test_normal_init_is_the_originals_and_keeps_the_ssm_parameters():
  """model.init = "normal": every Linear N(0, 0.02), biases zero; the dt bias, A_log, D
  and the conv keep their own initialisation."""
  cfg = tiny(n_layers=2, d_model=64, init="normal")
  model = build_model(cfg, nnx.Rngs(0))
  mixer = model.blocks[0].mixer
  for lin in (mixer.in_proj, mixer.x_proj, mixer.out_proj, model.dense.layers[1]):
    w = np.asarray(lin.kernel[...])
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
  for lin in model.dense.layers:
    np.testing.assert_array_equal(lin.bias[...], 0.0)
  dt = jax.nn.softplus(mixer.dt_proj.bias[...])
  assert float(dt.min()) >= cfg.dt_min * 0.999 and float(dt.max()) <= cfg.dt_max * 1.001
  np.testing.assert_array_equal(mixer.D[...], 1.0)
  assert float(jnp.abs(mixer.conv.kernel[...]).max()) <= 1 / np.sqrt(cfg.d_conv)


def test_dense_residual_switch_and_dropout_only_with_a_key():
  cfg = tiny(dropout=0.5, dense_residual=False)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)))
  plain = build_model(cfg, nnx.Rngs(0))
  residual = build_model(tiny(dropout=0.5, dense_residual=True), nnx.Rngs(0))
  x = plain.final_norm(plain._blocks(plain._embed(tokens, jnp.arange(9)[None])))
  np.testing.assert_allclose(plain(tokens), plain._tied_logits(plain.dense(x)), rtol=1e-6)
  np.testing.assert_allclose(residual(tokens), plain._tied_logits(x + plain.dense(x)),
                             rtol=1e-5, atol=1e-6)
  # Without a key (evaluation, scoring, generation): deterministic and dropout-free.
  np.testing.assert_array_equal(plain(tokens), plain(tokens))
  key = jax.random.PRNGKey(3)
  a = plain(tokens, dropout_key=key)
  np.testing.assert_array_equal(a, plain(tokens, dropout_key=key))
  assert not np.allclose(a, plain(tokens, dropout_key=jax.random.PRNGKey(4)))
  assert not np.allclose(a, plain(tokens))
  # With model.remat the blocks take the same keys: the same numbers.
  remat = build_model(tiny(dropout=0.5, dense_residual=False, remat=True), nnx.Rngs(0))
  np.testing.assert_allclose(remat(tokens, dropout_key=key), a, rtol=1e-5, atol=1e-6)
  zero = build_model(tiny(dropout=0.0), nnx.Rngs(0))
  np.testing.assert_array_equal(zero(tokens, dropout_key=key), zero(tokens))


@pytest.mark.parametrize("mixer", ["selective", "gated_conv"])
@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("activation", ["swelu", "silu"])
def test_stepwise_decoding_equals_the_full_forward(mixer, positions, activation):
  cfg = tiny(mixer=mixer, learned_positions=positions, activation=activation)
  model = build_model(cfg, nnx.Rngs(1))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 13)))
  cache = assert_decoding_equals_forward(model, tokens)
  assert int(cache["position"]) == tokens.shape[1]


def assert_decoding_equals_forward(model, tokens):
  """Feeds `tokens` one step at a time through the model's cache; every step's logits
  equal the full forward's at that position. Returns the final cache."""
  full = model(tokens)
  step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
  cache = model.init_cache(tokens.shape[0])
  for t in range(tokens.shape[1]):
    logits, cache = step(model, tokens[:, t], cache)
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-4)
  return cache


def test_bfloat16_compute_gives_finite_loss_and_gradients_and_float32_params():
  cfg = tiny(compute_dtype="bfloat16", swelu_k_init=0.39)
  model = build_model(cfg, nnx.Rngs(2))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 17)))

  def loss_fn(m):
    logits = m(tokens[:, :-1])
    assert logits.dtype == jnp.float32
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  assert np.isfinite(float(loss)) and abs(float(loss) - np.log(cfg.vocab_size)) < 1.0
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_weight_decay_mask_spares_ssm_norm_bias_and_swelu_parameters():
  model = build_model(tiny(learned_positions=True), nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  decayed = {jax.tree_util.keystr(p) for p, v in
             jax.tree_util.tree_leaves_with_path(weight_decay_mask(params)) if v}
  assert any("in_proj" in p for p in decayed) and any("embedding" in p for p in decayed)
  for name in ("A_log", "'D'", "bias", "scale", "k_raw", "lam"):
    assert not any(name in p for p in decayed), name
  # Works on plain dicts too (what a train state holds).
  pure = nnx.to_pure_dict(params) if hasattr(nnx, "to_pure_dict") else params.to_pure_dict()
  assert sum(jax.tree.leaves(weight_decay_mask(pure))) == len(decayed)


def test_swelu_scalars_lists_every_site():
  cfg = tiny(n_layers=3)
  scalars = swelu_scalars(build_model(cfg, nnx.Rngs(0)))
  # Two sites per block (after the conv, on the mixer output) and three dense sites.
  assert len(scalars) == 2 * (2 * 3 + 3)
  assert all(v == 1.0 for v in scalars.values())
  assert swelu_scalars(build_model(tiny(activation="silu"), nnx.Rngs(0))) == {}


def test_flops_per_token_matmul_part_is_twice_the_matmul_parameters():
  cfg = tiny()
  model = build_model(cfg, nnx.Rngs(0))
  matmul_params = sum(int(np.prod(x.shape)) for p, x in
                      jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
                      if "kernel" in jax.tree_util.keystr(p) and "conv" not in
                      jax.tree_util.keystr(p))
  matmul_params += cfg.vocab_size * cfg.d_model  # the tied head
  f = flops_per_token(cfg, 64)
  assert f["matmul"] == 2 * matmul_params
  assert f["training"] == 3 * f["forward"] > f["matmul"]


def test_count_parameters_of_model_and_state_agree():
  model = build_model(tiny(), nnx.Rngs(0))
  assert count_parameters(model) == count_parameters(nnx.state(model, nnx.Param))


def test_learned_positions_refuse_sequences_longer_than_the_table():
  model = build_model(tiny(learned_positions=True, max_len=8), nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_len"):
    model(jnp.zeros((1, 9), jnp.int32))


def _dot_operand_types(fn, *args):
  """The operand types of every dot_general in the lowered `fn`."""
  text = jax.jit(fn).lower(*args).as_text()
  return [line.rsplit(":", 1)[-1].split("->")[0].strip() for line in text.splitlines()
          if "stablehlo.dot_general" in line]


def test_logit_products_run_in_the_compute_dtype_forward_and_backward():
  # Plain autodiff multiplies the float32 logit cotangent by the bf16 operands in
  # float32: on an H200 those two products took 32% of the study's train step.
  cfg = tiny(compute_dtype="bfloat16")
  graphdef, params, rest = nnx.split(build_model(cfg, nnx.Rngs(0)), nnx.Param, ...)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 9)), jnp.int32)

  def loss(p):
    logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  head = [t for t in _dot_operand_types(jax.value_and_grad(loss), params) if "x97x" in t
          or "97x24" in t]
  assert len(head) == 3, head  # logits, d(input), d(embedding)
  assert all(t.count("bf16") == 2 for t in head), head


@pytest.mark.parametrize("compute_dtype, tol", [("float32", 1e-6), ("bfloat16", 3e-2)])
def test_tied_logits_gradients_match_a_float64_reference(compute_dtype, tol):
  from mambaswelu_jax.models.layers import tied_logits
  rng = np.random.default_rng(1)
  x, e, w = rng.normal(size=(3, 5, 24)), rng.normal(size=(97, 24)), rng.normal(size=(3, 5, 97))
  f = lambda x, e: jnp.sum(tied_logits(x, e, jnp.dtype(compute_dtype)) * w)
  gx, ge = jax.grad(f, argnums=(0, 1))(jnp.asarray(x, jnp.float32), jnp.asarray(e, jnp.float32))
  want_gx, want_ge = w @ e, np.einsum("bsv,bsd->vd", w, x)
  for got, want in ((gx, want_gx), (ge, want_ge)):
    assert np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)) < tol
