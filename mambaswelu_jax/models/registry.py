"""Building a model from its config, and its parameters without allocating it: the
abstract model, parameter counts, the weight-decay mask, and a Transformer sized to a
Mamba model's count.

`abstract_model(model_cfg)` is the one `nnx.eval_shape` build of a config: every
array a `jax.ShapeDtypeStruct`, so the study model is sized and split (graph
definition, parameters, other variables) on a laptop in well under a second.
"""

import jax
from flax import nnx

from mambaswelu_jax.models.lm import MambaLM
from mambaswelu_jax.models.transformer import TransformerLM, transformer_param_count

ARCHITECTURES = {"mamba": MambaLM, "transformer": TransformerLM}

# Parameters that AdamW decays: matrices and embedding tables. A_log, D, biases, norm
# scales and SWELU scalars are left alone.
_DECAYED = ("kernel", "embedding")


def build_model(model_cfg, rngs: nnx.Rngs) -> MambaLM | TransformerLM:
  """`model.architecture` picks the model; both share one interface."""
  arch = model_cfg.architecture
  if arch not in ARCHITECTURES:
    raise ValueError(f"model.architecture={arch!r}: choose one of {sorted(ARCHITECTURES)}.")
  return ARCHITECTURES[arch](model_cfg, rngs=rngs)


def max_positions(model_cfg) -> int | None:
  """The most tokens the model reads at once, or None when it has no limit: the one
  position rule of training samples, generation and scoring.

  The Transformer has model.max_len positions (its position table or rotary range and
  its KV cache), and so does a Mamba model with learned positions. The selective SSM
  without them has no limit: its recurrent state carries any length."""
  if model_cfg.learned_positions or model_cfg.architecture != "mamba":
    return int(model_cfg.max_len)
  return None


def abstract_model(model_cfg) -> nnx.Module:
  """The model of `model_cfg` with shapes and dtypes only (nothing allocated).

  `nnx.split(abstract_model(cfg), nnx.Param, ...)` gives the graph definition, the
  abstract parameters and the abstract non-parameter variables. The shapes do not
  depend on the seed, so none is taken."""
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


def match_mamba_size(mamba_cfg, *, n_heads: int | None = None, mlp: str = "gelu",
                     learned_positions: bool = False, tolerance: float = 0.05):
  """A Transformer model config with the Mamba config's width, vocabulary, norm and
  dtypes, and its parameter count within `tolerance`.

  Keeps d_model; tries n_layers = the Mamba depth, then more, and for each solves for
  the MLP width that matches (rounded to a multiple of 8), accepting the first depth
  whose MLP width lies in [d, 8 d]. Returns the config (a copy)."""
  target = param_count(mamba_cfg)
  cfg = mamba_cfg.copy_and_resolve_references()
  d = cfg.d_model
  cfg.architecture = "transformer"
  cfg.mlp = mlp
  cfg.learned_positions = learned_positions
  if n_heads is None:
    n_heads = max(1, d // 32) if d >= 64 else max(1, d // 16)
  cfg.n_heads = n_heads
  best = None
  depth = max(1, mamba_cfg.n_layers)
  for n_layers in list(range(depth, 8 * depth + 1)) + list(range(depth - 1, 0, -1)):
    cfg.n_layers = n_layers
    cfg.mlp_hidden = 8
    base = transformer_param_count(cfg)
    cfg.mlp_hidden = 16
    per_unit = (transformer_param_count(cfg) - base) / 8
    hidden = int(round((8 + (target - base) / per_unit) / 8)) * 8
    if hidden < 8:
      continue
    cfg.mlp_hidden = hidden
    err = abs(transformer_param_count(cfg) - target) / target
    if d <= hidden <= 8 * d and err <= tolerance:
      return cfg
    if best is None or err < best[0]:
      best = (err, n_layers, hidden)
  if best is None or best[0] > tolerance:
    raise ValueError(f"no Transformer of width {d} matches {target} parameters within "
                     f"{tolerance:.0%}")
  cfg.n_layers, cfg.mlp_hidden = best[1], best[2]
  return cfg
