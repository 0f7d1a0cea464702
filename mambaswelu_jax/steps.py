"""The step functions: pure, per device, then sharded over the mesh.

`train_step` is a per-device function; `make_train_step` wraps it in `jax.shard_map`
over the 1-D `data` mesh (every device of the run, across hosts too) and `jax.jit`
with the state donated. Each device takes its slice of the global batch, runs `accum`
micro-batches of `train.micro_batch_per_device` sequences, and the gradients are
averaged across the mesh before one AdamW update, so the same global batch gives the
same trajectory on 1, 2 or 4 devices. `make_eval_step` does the same for the
evaluation sums (`losses.eval_sums`), which the trainer and the evaluator share.

Every function takes (params or state, handle, batch...): the handle
(`models.handle.ModelHandle`) is the graph and the variables that are not trained.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mambaswelu_jax.losses import eval_sums, token_nll
from mambaswelu_jax.mesh import DATA_AXIS
from mambaswelu_jax.models.handle import ModelHandle

TrainState = dict  # {"step": int32 scalar, "params": nnx.State, "opt_state": optax state}


# ----------------------------------------------------------------------------
# Step functions (per device; wrapped in shard_map below).
# ----------------------------------------------------------------------------


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, handle: ModelHandle, batch: dict,
               lr_scale: jax.Array | None = None,
               *, tx: optax.GradientTransformation, accum_steps: int,
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
      logits = handle.bind(p)(inputs)
    else:
      logits = handle.bind(p)(
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


def make_train_step(mesh: Mesh, parts: Any, accum_steps: int) -> Callable:
  """jit(shard_map(train_step)): state, handle and lr_scale replicated, batch split on
  `data`; the state argument is donated. Called as step(state, handle, batch) or
  step(state, handle, batch, lr_scale) (a float32 scalar, default 1). `parts`:
  `training.state.ModelParts` (the optimizer and the dropout seed)."""
  fn = functools.partial(train_step, tx=parts.tx, accum_steps=accum_steps,
                         dropout_seed=parts.dropout_seed)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P()),
                          out_specs=(P(), P()), check_vma=False)
  jitted = jax.jit(sharded, donate_argnums=(0,))
  one = jax.device_put(jnp.ones((), jnp.float32), NamedSharding(mesh, P()))

  def step(state, handle, batch, lr_scale=None):
    return jitted(state, handle, batch, one if lr_scale is None else lr_scale)

  step.jitted = jitted
  return step


def make_eval_step(mesh: Mesh, num_types: int = 1) -> Callable:
  """jit(shard_map(losses.eval_sums)): called as step(params, handle, batch); params and
  handle replicated, rows split on `data`; returns the (num_types, 3) sums [nll,
  tokens, target bytes] per text type."""
  fn = functools.partial(eval_sums, num_types=num_types)
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)), out_specs=P(),
                          check_vma=False)
  return jax.jit(sharded)
