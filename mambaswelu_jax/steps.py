"""The train state and the step functions: pure, per device, then sharded.

`train_step` is a per-device function; `make_train_step` wraps it in `jax.shard_map`
over the 1-D `data` mesh (every device of the run, across hosts too) and `jax.jit`
with the state donated. Each device takes its slice of the global batch, runs `accum`
micro-batches of `train.micro_batch_per_device` sequences, and the gradients are
averaged across the mesh before one AdamW update, so the same global batch gives the
same trajectory on 1, 2 or 4 devices. `make_eval_step` does the same for the
evaluation sums (`losses.eval_sums`), which the trainer and the evaluator share.

Imports jax, flax, optax, numpy and ml_collections only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mambaswelu_jax.losses import eval_sums, token_nll
from mambaswelu_jax.mesh import DATA_AXIS
from mambaswelu_jax.models import build_model
from mambaswelu_jax.models.params import abstract_model, count_parameters, weight_decay_mask

TrainState = dict  # {"step": int32 scalar, "params": nnx.State, "opt_state": optax state}


# ----------------------------------------------------------------------------
# Optimizer.
# ----------------------------------------------------------------------------


def make_schedule(train_cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then cosine to learning_rate * min_lr_ratio."""
  lr = float(train_cfg.learning_rate)
  warmup = int(train_cfg.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(int(num_steps), warmup + 1), end_value=lr * float(train_cfg.min_lr_ratio))


def make_optimizer(train_cfg: ml_collections.ConfigDict, num_steps: int,
                   decay_mask: Any) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with the schedule and the decay mask."""
  parts = []
  if train_cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(train_cfg.grad_clip_norm)))
  parts.append(optax.adamw(make_schedule(train_cfg, num_steps), b1=float(train_cfg.b1),
                           b2=float(train_cfg.b2), eps=float(train_cfg.eps),
                           weight_decay=float(train_cfg.weight_decay), mask=decay_mask))
  return optax.chain(*parts)


# ----------------------------------------------------------------------------
# Model and train state.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelParts:
  """What the step functions need besides the state: the static graph and the optimizer."""
  graphdef: Any
  tx: optax.GradientTransformation
  num_params: int
  # model.dropout > 0: the seed of the train step's dropout keys (one per step, micro-
  # batch and device); None: no dropout, the model is called without a key.
  dropout_seed: int | None = None


def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh
                       ) -> tuple[ModelParts, TrainState, Any]:
  """(parts, state, rest): the state replicated over `mesh`; `rest` holds the model's
  non-parameter variables (not trained, not checkpointed: rebuilt from the config)."""
  graphdef, abstract_params, _ = nnx.split(abstract_model(config.model), nnx.Param, ...)
  tx = make_optimizer(config.train, config.train.num_steps, weight_decay_mask(abstract_params))

  def init():
    model = build_model(config.model, nnx.Rngs(config.seed))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    return state, rest

  replicated = NamedSharding(mesh, P())
  state, rest = jax.jit(init, out_shardings=replicated)()
  return ModelParts(graphdef, tx, int(count_parameters(abstract_params)),
                    dropout_seed_of(config)), state, rest


def dropout_seed_of(config: ml_collections.ConfigDict) -> int | None:
  """config.seed when the model drops out in training (model.dropout > 0), else None."""
  m = config.model
  if m.get("architecture", "mamba") != "mamba" or float(m.get("dropout", 0.0)) <= 0:
    return None
  return int(config.seed)


def abstract_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """The train state's shapes and dtypes from the config alone (nothing allocated or
  compiled): what a resume compares the stored checkpoints with before anything else."""
  graphdef, abstract_params, _ = nnx.split(abstract_model(config.model), nnx.Param, ...)
  del graphdef
  tx = make_optimizer(config.train, config.train.num_steps, weight_decay_mask(abstract_params))

  def init():
    model = build_model(config.model, nnx.Rngs(config.seed))
    params = nnx.split(model, nnx.Param, ...)[1]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  return jax.eval_shape(init)


def merge_model(parts: ModelParts, params: Any, rest: Any) -> nnx.Module:
  return nnx.merge(parts.graphdef, params, rest)


# ----------------------------------------------------------------------------
# Step functions (per device; wrapped in shard_map below).
# ----------------------------------------------------------------------------


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, batch: dict, rest: Any, lr_scale: jax.Array | None = None,
               *, graphdef: Any, tx: optax.GradientTransformation, accum_steps: int,
               axis_name: str | None = DATA_AXIS, dropout_seed: int | None = None
               ) -> tuple[TrainState, dict]:
  """One optimizer step on this device's slice of the global batch.

  batch["inputs"], batch["targets"]: int32 (accum_steps * micro, L). Gradients of the
  mean token loss are accumulated in float32 over micro-batches, averaged over the
  mesh, clipped and applied, scaled by `lr_scale` (1 unless non-finite steps made the
  loop lower it). When the loss, the gradient norm or the new parameters are not
  finite the update is dropped inside the step (params and optimizer state stay as
  they were; `step` still advances past the batch) and metrics["skipped_update"] is 1.
  """
  params = state["params"]
  if dropout_seed is None:
    step_key = None
  else:  # dropout: a key per step and device (folded with the micro-batch below)
    step_key = jax.random.fold_in(jax.random.PRNGKey(dropout_seed), state["step"])
    if axis_name is not None:
      step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))

  def loss_fn(p, inputs, targets, micro):
    if step_key is None:
      logits = nnx.merge(graphdef, p, rest)(inputs)
    else:
      logits = nnx.merge(graphdef, p, rest)(
          inputs, dropout_key=jax.random.fold_in(step_key, micro))
    return token_nll(logits, targets).mean()

  grad_fn = jax.value_and_grad(loss_fn)
  inputs, targets = batch["inputs"], batch["targets"]
  if accum_steps == 1:
    loss, grads = grad_fn(params, inputs, targets, 0)
  else:
    def split(x):
      return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

    def micro_step(carry, xs):
      loss_sum, grad_sum = carry
      loss, grads = grad_fn(params, *xs)
      return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss, grads), _ = jax.lax.scan(micro_step, (jnp.zeros((), jnp.float32), zeros),
                                    (split(inputs), split(targets),
                                     jnp.arange(accum_steps)))
    loss = loss / accum_steps
    grads = jax.tree.map(lambda g, p: (g / accum_steps).astype(p.dtype), grads, params)
  if axis_name is not None:
    loss, grads = jax.lax.pmean((loss, grads), axis_name)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state["opt_state"], params)
  if lr_scale is not None:
    updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
  new_params = optax.apply_updates(params, updates)
  # Identical on every device (loss and gradients are averaged over the mesh).
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)

  def keep_if_bad(new, old):
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

  new_state = {"step": state["step"] + 1, "params": keep_if_bad(new_params, params),
               "opt_state": keep_if_bad(opt_state, state["opt_state"])}
  return new_state, {"train_loss": loss, "grad_norm": grad_norm,
                     "skipped_update": 1.0 - ok.astype(jnp.float32)}


def make_train_step(mesh: Mesh, parts: ModelParts, accum_steps: int) -> Callable:
  """jit(shard_map(train_step)): state, rest and lr_scale replicated, batch split on
  `data`; the state argument is donated. Called as step(state, batch, rest) or
  step(state, batch, rest, lr_scale) (a float32 scalar, default 1)."""
  fn = functools.partial(train_step, graphdef=parts.graphdef, tx=parts.tx,
                         accum_steps=accum_steps, dropout_seed=parts.dropout_seed)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()),
                          out_specs=(P(), P()), check_vma=False)
  jitted = jax.jit(sharded, donate_argnums=(0,))
  one = jax.device_put(jnp.ones((), jnp.float32), NamedSharding(mesh, P()))

  def step(state, batch, rest, lr_scale=None):
    return jitted(state, batch, rest, one if lr_scale is None else lr_scale)

  step.jitted = jitted
  return step


def make_eval_step(mesh: Mesh, graphdef: Any, num_types: int = 1) -> Callable:
  """jit(shard_map(losses.eval_sums)): params and rest replicated, rows split on `data`;
  returns the (num_types, 3) sums [nll, tokens, target bytes] per text type."""
  fn = functools.partial(eval_sums, graphdef=graphdef, num_types=num_types)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(),
                          check_vma=False)
  return jax.jit(sharded)
