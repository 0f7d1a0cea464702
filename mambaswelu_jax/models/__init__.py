"""MambaSWELU models: build one from a config, count it, and read its SWELU scalars."""

import jax

from flax import nnx

from mambaswelu_jax.models.lm import MambaLM
from mambaswelu_jax.models.swelu import SWELU, swelu
from mambaswelu_jax.models.transformer import TransformerLM, match_mamba_size

# Parameters that AdamW decays: matrices and embedding tables. A_log, D, biases, norm
# scales and SWELU scalars are left alone.
_DECAYED = ("kernel", "embedding")


ARCHITECTURES = {"mamba": MambaLM, "transformer": TransformerLM}


def build_model(model_cfg, rngs: nnx.Rngs) -> MambaLM | TransformerLM:
  """`model.architecture` (default "mamba") picks the model; both share one interface."""
  arch = model_cfg.get("architecture", "mamba")
  if arch not in ARCHITECTURES:
    raise ValueError(f"model.architecture={arch!r}: choose one of {sorted(ARCHITECTURES)}.")
  return ARCHITECTURES[arch](model_cfg, rngs=rngs)


def count_parameters(model_or_state) -> int:
  """Number of trainable scalars (nnx.Param leaves) of a model or a params state."""
  state = (nnx.state(model_or_state, nnx.Param)
           if isinstance(model_or_state, nnx.Module) else model_or_state)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def param_count(model_cfg) -> int:
  """Parameter count from the config alone, without allocating the model."""
  abstract = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
  return count_parameters(abstract)


def _path_key(path) -> str:
  """Name of the parameter a leaf path ends at (past a Variable's `.value`)."""
  names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
  return [n for n in names if n != "value"][-1]


def weight_decay_mask(params):
  """Same structure as `params`: True where weight decay applies."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _path_key(path) in _DECAYED, params)


def swelu_scalars(model: MambaLM) -> dict:
  """{'swelu/<site>/k': value, 'swelu/<site>/lambda': value} for every SWELU site."""
  out = {}
  for path, module in nnx.iter_graph(model):
    if isinstance(module, SWELU):
      site = "/".join(str(p) for p in path)
      out[f"swelu/{site}/k"] = float(module.k)
      out[f"swelu/{site}/lambda"] = float(module.lam[...])
  return out


__all__ = ["ARCHITECTURES", "MambaLM", "SWELU", "TransformerLM", "build_model",
           "count_parameters", "match_mamba_size", "param_count", "swelu",
           "swelu_scalars", "weight_decay_mask"]

