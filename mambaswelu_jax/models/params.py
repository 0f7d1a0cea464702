"""A model's parameters without allocating it: the abstract model, parameter counts and
the weight-decay mask.

`abstract_model(model_cfg)` is the one `nnx.eval_shape` build of a config: every
array a `jax.ShapeDtypeStruct`, so the study model is sized and split (graph
definition, parameters, other variables) on a laptop in well under a second.
"""

import jax
from flax import nnx

# Parameters that AdamW decays: matrices and embedding tables. A_log, D, biases, norm
# scales and SWELU scalars are left alone.
_DECAYED = ("kernel", "embedding")


def abstract_model(model_cfg) -> nnx.Module:
  """The model of `model_cfg` with shapes and dtypes only (nothing allocated).

  `nnx.split(abstract_model(cfg), nnx.Param, ...)` gives the graph definition, the
  abstract parameters and the abstract non-parameter variables. The shapes do not
  depend on the seed, so none is taken."""
  # Imported here: models/__init__.py (build_model) re-exports this module.
  from mambaswelu_jax.models import build_model  # pylint: disable=import-outside-toplevel
  return nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))


def abstract_params(model_cfg) -> nnx.State:
  """The trainable parameters (nnx.Param leaves) of `model_cfg` as shapes and dtypes."""
  return nnx.state(abstract_model(model_cfg), nnx.Param)


def count_parameters(model_or_state) -> int:
  """Number of trainable scalars (nnx.Param leaves) of a model or a params state."""
  state = (nnx.state(model_or_state, nnx.Param)
           if isinstance(model_or_state, nnx.Module) else model_or_state)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def param_count(model_cfg) -> int:
  """Parameter count from the config alone, without allocating the model."""
  return count_parameters(abstract_params(model_cfg))


def _path_key(path) -> str:
  """Name of the parameter a leaf path ends at (past a Variable's `.value`)."""
  names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
  return [n for n in names if n != "value"][-1]


def weight_decay_mask(params):
  """Same structure as `params`: True where weight decay applies."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _path_key(path) in _DECAYED, params)
