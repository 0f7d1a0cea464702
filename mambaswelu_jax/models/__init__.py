"""MambaSWELU models: build one from a config and count it (models/registry.py), and read
its SWELU scalars."""

from flax import nnx

from mambaswelu_jax.models.lm import MambaLM
from mambaswelu_jax.models.registry import (ARCHITECTURES, abstract_model, abstract_params,
                                          build_model, count_parameters, match_mamba_size,
                                          param_count, weight_decay_mask)
from mambaswelu_jax.models.swelu import SWELU, swelu
from mambaswelu_jax.models.transformer import TransformerLM


def swelu_scalars(model: MambaLM) -> dict:
  """{'swelu/<site>/k': value, 'swelu/<site>/lambda': value} for every SWELU site."""
  out = {}
  for path, module in nnx.iter_graph(model):
    if isinstance(module, SWELU):
      site = "/".join(str(p) for p in path)
      out[f"swelu/{site}/k"] = float(module.k)
      out[f"swelu/{site}/lambda"] = float(module.lam[...])
  return out


__all__ = ["ARCHITECTURES", "MambaLM", "SWELU", "TransformerLM", "abstract_model",
           "abstract_params", "build_model", "count_parameters", "match_mamba_size",
           "param_count", "swelu", "swelu_scalars", "weight_decay_mask"]

