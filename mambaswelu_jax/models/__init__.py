"""MambaSWELU models: build one from a config, count it (models/params.py), and read its
SWELU scalars."""

from flax import nnx

from mambaswelu_jax.models.lm import MambaLM
from mambaswelu_jax.models.params import (abstract_model, abstract_params, count_parameters,
                                          param_count, weight_decay_mask)
from mambaswelu_jax.models.swelu import SWELU, swelu
from mambaswelu_jax.models.transformer import TransformerLM, match_mamba_size

ARCHITECTURES = {"mamba": MambaLM, "transformer": TransformerLM}


def build_model(model_cfg, rngs: nnx.Rngs) -> MambaLM | TransformerLM:
  """`model.architecture` (default "mamba") picks the model; both share one interface."""
  arch = model_cfg.get("architecture", "mamba")
  if arch not in ARCHITECTURES:
    raise ValueError(f"model.architecture={arch!r}: choose one of {sorted(ARCHITECTURES)}.")
  return ARCHITECTURES[arch](model_cfg, rngs=rngs)


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

