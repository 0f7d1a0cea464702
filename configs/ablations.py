r"""Ablations of a study run: one change each, same data, tokenizer, token budget and optimiser.

  python -m mambaswelu_jax.main --config=configs/ablations.py:silu --workdir=runs/ablate_silu
  python -m mambaswelu_jax.main --config=configs/ablations.py:gated_conv/wikipedia_llama ...
  python -m mambaswelu_jax.main --config=configs/ablations.py:transformer/toy ...

The argument is ABLATION[/BASE]:

  ABLATION   silu          model.activation = "silu" everywhere SWELU was
             fixed_k       SWELU with k held at model.swelu_k_init (model.swelu_learn_k = False)
             gated_conv    model.mixer = "gated_conv" (the original project's as-run block)
             transformer   the Transformer baseline sized to the base model's parameter
                           count within 5% (models.match_mamba_size), same width and vocab
             original_head  model.dense_residual = False: the original's head, dense(x),
                           without the study model's residual x + dense(x)
             fan_in_init   model.init = "fan_in": U(±1/sqrt(fan_in)) Linears, out_proj
                           scaled by 1/sqrt(2·n_layers) (this project's earlier scheme)
             original_dropout  model.dropout = 0.1 (the original's; the study model has none)
             none          the base run itself (for launching it beside its ablations)
  BASE       slimpajama_chinchilla (default), slimpajama_llama, wikipedia_llama,
             wikipedia_chinchilla (Wikipedia at slimpajama_chinchilla's 20 tokens per
             parameter: the second data set of the dataset-dependence question at the
             same budget), toy (configs/toy_study.py:mixture_short, the toy questions'
             base run) or toy_single (the same run on docstrings only, one text type);
             a trailing ":smoke"-style suffix is not taken here: shrink with overrides.

The token budget is pinned: train.num_steps is set to the base run's derived step count,
so an ablation whose parameter count differs a little (SWELU scalars, the gated conv's
projections, the matched Transformer) still sees exactly the base run's tokens. Any
other difference from the base is a bug (tests/test_questions.py diffs the resolved
configs).
"""

import importlib

ABLATIONS = ("none", "silu", "fixed_k", "gated_conv", "transformer", "original_head",
             "fan_in_init", "original_dropout")
BASES = ("slimpajama_chinchilla", "slimpajama_llama", "wikipedia_llama",
         "wikipedia_chinchilla", "toy", "toy_single")
TOY_BASE_ARG = "mixture_short"
# The dataset-dependence question: the same ablation on two data sets at one budget.
DATASET_PAIRS = {"toy": ("toy", "toy_single"),
                 "full": ("slimpajama_chinchilla", "wikipedia_chinchilla")}


def base_config(base: str):
  if base in ("toy", "toy_single"):
    from configs import toy_study  # pylint: disable=import-outside-toplevel
    config = toy_study.get_config(TOY_BASE_ARG)
    if base == "toy_single":
      config.data.text_types = "docstring"
    return config
  if base == "wikipedia_chinchilla":
    config = importlib.import_module("configs.wikipedia_llama").get_config()
    config.data.tokens_per_parameter = (
        importlib.import_module("configs.slimpajama_chinchilla").get_config()
        .data.tokens_per_parameter)
    return config
  return importlib.import_module(f"configs.{base}").get_config()


def apply(config, ablation: str):
  """Applies one ablation to a (base) config in place; returns it."""
  from mambaswelu_jax import config_validation  # pylint: disable=import-outside-toplevel
  if ablation not in ABLATIONS:
    raise ValueError(f"unknown ablation {ablation!r}; choose one of {ABLATIONS}")
  if config.train.num_steps == 0:
    config.train.num_steps = config_validation.derived_num_steps(config)
  m = config.model
  if ablation == "silu":
    m.activation = "silu"
  elif ablation == "fixed_k":
    m.swelu_learn_k = False
  elif ablation == "gated_conv":
    m.mixer = "gated_conv"
  elif ablation == "original_head":
    m.dense_residual = False
  elif ablation == "fan_in_init":
    m.init = "fan_in"
  elif ablation == "original_dropout":
    m.dropout = 0.1
  elif ablation == "transformer":
    from mambaswelu_jax.models import match_mamba_size  # pylint: disable=import-outside-toplevel
    matched = match_mamba_size(m)
    if matched.max_len < config.data.seq_len:
      matched.max_len = config.data.seq_len
    for key in ("architecture", "n_layers", "n_heads", "mlp", "mlp_hidden",
                "learned_positions", "max_len"):
      m[key] = matched[key]
  return config


def get_config(arg=None):
  arg = (arg or "").strip()
  ablation, _, base = arg.partition("/")
  base = base or BASES[0]
  if ablation not in ABLATIONS or base not in BASES:
    raise ValueError(f"configs/ablations.py: argument {arg!r}; expected ABLATION[/BASE] with "
                     f"ABLATION in {ABLATIONS} and BASE in {BASES}, e.g. "
                     f"--config=configs/ablations.py:silu/toy")
  return apply(base_config(base), ablation)
