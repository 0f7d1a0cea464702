"""A model as the compiled functions take it: `ModelHandle` holds the graph definition
and the variables that are not trained (rebuilt from the config, never checkpointed),
so every step, sampler and scorer is `fn(params, handle, ...)`.

The handle is a pytree: `rest` is its data (arrays passed to the compiled function,
not baked in as constants) and `graphdef` its static part (hashable: a new graph is a
new compilation).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from flax import struct


@struct.dataclass
class ModelHandle:
  graphdef: Any = struct.field(pytree_node=False)
  rest: Any = None  # the non-parameter variables (e.g. SWELU's raw k when it is frozen)

  def bind(self, params: Any) -> nnx.Module:
    """The nnx module with these params (inside or outside jit)."""
    return nnx.merge(self.graphdef, params, self.rest)


def split_model(model: nnx.Module) -> tuple[ModelHandle, Any]:
  """(handle, params) of a built model."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return ModelHandle(graphdef, rest), params


def fresh_handle(model_cfg, seed: int, sharding=None) -> ModelHandle:
  """The handle of `model_cfg` with its non-parameter variables built (the params are
  not kept: they come from a checkpoint)."""
  from mambaswelu_jax.models.registry import build_model  # pylint: disable=import-outside-toplevel
  return jax.jit(lambda: split_model(build_model(model_cfg, nnx.Rngs(seed)))[0],
                 out_shardings=sharding)()
