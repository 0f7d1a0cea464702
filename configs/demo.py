"""The demo: a small MambaSWELU on the embedded corpus, minutes on a 2-core CPU.

  python -m mambaswelu_jax.main --config=configs/demo.py --workdir=runs/demo

The corpus is the Python standard library's docstrings and code (read offline from
the running interpreter's files). The run trains its own 1024-piece tokenizer,
trains 400 steps of 16 x 128 tokens, evaluates, checkpoints, and prints a sample.
The validation loss starts near ln(1024) = 6.93 nats per token and ends well below
the validation tokens' unigram entropy (what a model that ignores context gets).

`:tiny` is the test suite's few-second version (same structure, every code path).
"""

from configs import common
from configs import default


def get_config(arg=None):
  arg = common.check_arg(arg, ("", "tiny"), "demo")
  config = default.get_config()
  config.seed = 0

  common.small_model(config, d_model=128, n_layers=2, d_state=8, dense_hidden=256)
  m = config.model
  m.vocab_size = 1024
  # The demo must learn visibly in 400 steps. With the original's head, initialisation
  # and dropout it ended at validation loss 5.83 nats/token, above the unigram entropy
  # (5.57); with a residual around the dense head and no dropout (now the study's
  # defaults) and fan-in initialisation, 3.95 (2026-12-04, same seed).
  m.init = "fan_in"

  d = config.data
  d.source = "embedded"
  d.seq_len = 128
  d.vocab_size = m.vocab_size            # the run's own tokenizer
  d.tokenizer_sample_bytes = 2_000_000

  t = config.train
  t.global_batch_size = 16
  t.micro_batch_per_device = 8           # accumulation 2 on one device
  t.num_steps = 400
  t.learning_rate = 3e-3
  t.warmup_steps = 40
  t.min_lr_ratio = 0.1
  t.log_every_steps = 25

  config.checkpoint.every_steps = 200
  config.checkpoint.snapshot_every_steps = 200
  config.checkpoint.max_to_keep = 2

  e = config.eval
  e.every_steps = 100
  e.max_batches = 16
  e.batch_per_device = 16
  e.sample_tokens = 120
  e.sample_prompt = "def "
  e.sample_temperature = 0.7

  if arg == "tiny":
    common.small_model(config, d_model=32, n_layers=1, d_state=4, dense_hidden=64)
    m.vocab_size = d.vocab_size = 512
    d.seq_len = 32
    d.tokenizer_sample_bytes = 300_000
    t.global_batch_size = 8
    t.micro_batch_per_device = 2         # accumulation 4 on one device
    t.num_steps = 8
    t.warmup_steps = 2
    t.log_every_steps = 2
    config.checkpoint.every_steps = 4
    config.checkpoint.snapshot_every_steps = 4
    e.every_steps = 4
    e.max_batches = 2
    e.batch_per_device = 4
    e.sample_tokens = 8
  return config
