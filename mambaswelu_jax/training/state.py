"""The train state and what makes it: the learning-rate schedule, the optimizer (AdamW
with global-norm clipping and a decay mask), the model's parameters and its handle
(`models.handle.ModelHandle`), replicated over the mesh.

  parts, state, handle = create_train_state(config, mesh)

`state` is {"step", "params", "opt_state"} (what a checkpoint holds); `parts` the
static rest of training (optimizer, parameter count, dropout seed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mambaswelu_jax.models import build_model
from mambaswelu_jax.models.handle import ModelHandle, split_model
from mambaswelu_jax.models.registry import abstract_model, count_parameters, weight_decay_mask

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
  """What the train step needs besides the state and the model handle: the optimizer."""
  tx: optax.GradientTransformation
  num_params: int
  # model.dropout > 0: the seed of the train step's dropout keys (one per step, micro-
  # batch and device); None: no dropout, the model is called without a key.
  dropout_seed: int | None = None


def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh
                       ) -> tuple[ModelParts, TrainState, ModelHandle]:
  """(parts, state, handle), all replicated over `mesh`."""
  abstract_params = nnx.state(abstract_model(config.model), nnx.Param)
  tx = make_optimizer(config.train, config.train.num_steps, weight_decay_mask(abstract_params))

  def init():
    handle, params = split_model(build_model(config.model, nnx.Rngs(config.seed)))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    return state, handle

  state, handle = jax.jit(init, out_shardings=NamedSharding(mesh, P()))()
  return ModelParts(tx, int(count_parameters(abstract_params)), dropout_seed_of(config)), \
      state, handle


def dropout_seed_of(config: ml_collections.ConfigDict) -> int | None:
  """config.seed when the model drops out in training (model.dropout > 0), else None."""
  m = config.model
  if m.architecture != "mamba" or float(m.dropout) <= 0:
    return None
  return int(config.seed)


def abstract_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """The train state's shapes and dtypes from the config alone (nothing allocated or
  compiled): what a resume compares the stored checkpoints with before anything else."""
  abstract_params = nnx.state(abstract_model(config.model), nnx.Param)
  tx = make_optimizer(config.train, config.train.num_steps, weight_decay_mask(abstract_params))

  def init():
    model = build_model(config.model, nnx.Rngs(config.seed))
    params = nnx.split(model, nnx.Param, ...)[1]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  return jax.eval_shape(init)
