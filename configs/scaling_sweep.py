r"""The model-size sweep for scaling laws: a geometric ladder of widths per architecture,
token budgets at a fixed tokens-per-parameter ratio.

  python -m mambaswelu_jax.main --config=configs/scaling_sweep.py:mamba/2 --workdir=runs/sweep_mamba_2
  python -m mambaswelu_jax.main --config=configs/scaling_sweep.py:transformer/0/toy ...

The argument is ARCH/RUNG[/toy][/tpp=R]: ARCH mamba or transformer, RUNG
0..len(WIDTHS)-1, R a tokens-per-parameter ratio other than the default (the sweep runs
every rung at each of RATIOS / TOY_RATIOS: two ratios break the collinearity of N and D
that one fixed ratio would leave in the fit).
Rung r of the Mamba family has d_model = WIDTHS[r] (each 1.5x the last) and the base
depth; the Transformer of rung r is sized to the Mamba model of rung r
(models.match_mamba_size: same width and vocabulary, parameters within 5%). The
budget is tokens_per_parameter x parameters (train.num_steps derived as in every
run). Evaluation runs about EVALS_PER_RUN times per run, so each run gives several
(N, D, validation loss) points for the L(N, D) fit (experiments/study_lib/scaling.py).

full: the study model's family (6 blocks, dense_hidden = 2 d) on SlimPajama at 20
      tokens per parameter (Chinchilla), data.data_dir to be given as for the study.
toy:  configs/toy_study.py's data, tokenizer and optimiser (embedded corpus, 1024
      pieces, seq_len 128), 2 blocks, widths 16..54, TOY_TOKENS_PER_PARAMETER.
"""

from configs import default

ARCHS = ("mamba", "transformer")
WIDTHS = (256, 384, 576, 864)
TOY_WIDTHS = (16, 24, 36, 54)
TOKENS_PER_PARAMETER = 20.0
TOY_TOKENS_PER_PARAMETER = 8.0
RATIOS = (TOKENS_PER_PARAMETER, 5.0)
TOY_RATIOS = (TOY_TOKENS_PER_PARAMETER, 2.0)
EVALS_PER_RUN = 6


def _toy_base():
  from configs import toy_study  # pylint: disable=import-outside-toplevel
  config = toy_study.get_config("mixture_long")
  config.data.tokens_per_parameter = TOY_TOKENS_PER_PARAMETER
  config.train.warmup_steps = 10
  config.eval.max_batches = 4
  return config


def get_config(arg=None):
  parts = (arg or "").strip().split("/")
  ratio = None
  if parts[-1].startswith("tpp="):
    ratio = float(parts[-1][4:])
    parts = parts[:-1]
  toy = parts[-1] == "toy"
  if toy:
    parts = parts[:-1]
  widths = TOY_WIDTHS if toy else WIDTHS
  if len(parts) != 2 or parts[0] not in ARCHS or not parts[1].isdigit() or not (
      0 <= int(parts[1]) < len(widths)):
    raise ValueError(f"configs/scaling_sweep.py: argument {arg!r}; expected ARCH/RUNG[/toy] "
                     f"with ARCH in {ARCHS} and RUNG in 0..{len(widths) - 1}, e.g. "
                     f"--config=configs/scaling_sweep.py:mamba/0/toy")
  arch, rung = parts[0], int(parts[1])
  if toy:
    config = _toy_base()
  else:
    config = default.get_config()
    config.data.source = "slimpajama"
    config.data.tokens_per_parameter = TOKENS_PER_PARAMETER
  if ratio is not None:
    if ratio <= 0:
      raise ValueError(f"configs/scaling_sweep.py: tpp={ratio} must be > 0")
    config.data.tokens_per_parameter = ratio
  m = config.model
  m.d_model = widths[rung]
  m.dense_hidden = 2 * widths[rung]
  if arch == "transformer":
    from mambaswelu_jax.models import match_mamba_size  # pylint: disable=import-outside-toplevel
    matched = match_mamba_size(m)
    for key in ("architecture", "n_layers", "n_heads", "mlp", "mlp_hidden",
                "learned_positions"):
      m[key] = matched[key]
    m.max_len = max(m.max_len, config.data.seq_len)
  # Evaluations (and full checkpoints) spread over the derived number of steps.
  from mambaswelu_jax import config_validation  # pylint: disable=import-outside-toplevel
  steps = config_validation.derived_num_steps(config)
  config.eval.every_steps = max(1, steps // EVALS_PER_RUN)
  config.checkpoint.every_steps = max(1, steps // 2)
  config.checkpoint.snapshot_every_steps = 0
  return config
