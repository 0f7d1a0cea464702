"""Pieces the run configs share: the study run itself (`study_run`), the small-model
shrink (`small_model`), the `smoke` shrink and argument parsing.

A real config takes an argument that shrinks it for a laptop while keeping its data
source and structure (big_vision style)::

  python -m mambaswelu_jax.main --config=configs/slimpajama_chinchilla.py:smoke --workdir=/tmp/smoke
"""

import ml_collections

ARGS = ("", "smoke")


def check_arg(arg, allowed=ARGS, name="config"):
  arg = (arg or "").strip()
  if arg not in allowed:
    raise ValueError(f"unknown {name} argument {arg!r}; expected one of "
                     f"{[a for a in allowed if a]} (e.g. --config=configs/X.py:smoke)")
  return arg


def study_run(source: str, tokens_per_parameter: float, arg=None) -> ml_collections.ConfigDict:
  """One of the study's runs: the study model on `source` for `tokens_per_parameter`
  (train.num_steps derived from it); `arg` "smoke" shrinks it (`smoke`)."""
  from configs import default  # pylint: disable=import-outside-toplevel
  arg = check_arg(arg)
  config = default.get_config()
  config.data.source = source
  config.data.tokens_per_parameter = float(tokens_per_parameter)
  if arg == "smoke":
    smoke(config)
  return config


def small_model(config: ml_collections.ConfigDict, *, d_model: int, n_layers: int,
                d_state: int, dense_hidden: int) -> ml_collections.ConfigDict:
  """The study model's structure at a laptop's size, computing in float32 (bf16
  matmuls are slow on CPUs)."""
  m = config.model
  m.d_model, m.n_layers, m.d_state, m.dense_hidden = d_model, n_layers, d_state, dense_hidden
  m.compute_dtype = "float32"
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few minutes on a CPU: small model and sequences, every code path exercised
  (accumulation, evaluation, checkpoints, snapshots, final params)."""
  small_model(config, d_model=64, n_layers=2, d_state=8, dense_hidden=128)
  m = config.model
  # A tokenizer trained in seconds when none is given (data.tokenizer_path overrides;
  # with the study tokenizer also pass --config.model.vocab_size=<its size>).
  m.vocab_size = 4096           # data.vocab_size follows (a reference in default.py)
  config.data.tokenizer_sample_bytes = 2_000_000
  # No data.data_dir: SlimPajama / Wikipedia read a small sample in their real on-disk
  # format, written once from the embedded corpus into ~/.cache/mambaswelu_jax/smoke
  # ($MAMBASWELU_JAX_SMOKE_DATA overrides); --config.data.data_dir=... reads real data.
  config.data.smoke_sample = True
  config.data.seq_len = 128
  m.max_len = max(m.max_len, 128)
  t = config.train
  t.global_batch_size = 4
  t.micro_batch_per_device = 2
  t.num_steps = 20
  t.warmup_steps = 5
  t.log_every_steps = 5
  config.checkpoint.every_steps = 10
  config.checkpoint.snapshot_every_steps = 10
  config.eval.every_steps = 10
  config.eval.max_batches = 2
  config.eval.batch_per_device = 2
  return config
