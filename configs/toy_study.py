"""The toy study: the three-run study shrunk to minutes on a CPU, on the embedded corpus.

  python experiments/run_study.py --scale=toy --root=runs/toy --out=docs/toy_study

Three runs mirror the real ones (configs/slimpajama_llama.py, slimpajama_chinchilla.py,
wikipedia_llama.py), one argument each:

  mixture_long   "SlimPajama LLaMA":      docstrings + code (a mixture of types), long budget
  mixture_short  "SlimPajama Chinchilla": the same data, a budget 5x smaller
  single_long    "Wikipedia LLaMA":       docstrings only (one type of prose), long budget

The long:short token ratio is the real study's 100:20, but the absolute tokens per
parameter are 10x smaller (10 and 2) so a run takes minutes; the report says so.
All three share one tokenizer (data.tokenizer_path, trained once by run_study.py)
so their perplexities compare, and evaluation holds out 5% of modules per split so the
per-type figures rest on more than a handful of documents.
"""

from configs import common
from configs import default

RUNS = ("mixture_long", "mixture_short", "single_long")
LONG_TOKENS_PER_PARAMETER = 10.0
SHORT_TOKENS_PER_PARAMETER = 2.0


def get_config(arg=None):
  arg = common.check_arg(arg, RUNS, "toy_study")
  config = default.get_config()
  config.seed = 0

  common.small_model(config, d_model=64, n_layers=2, d_state=8, dense_hidden=128)
  m = config.model
  m.vocab_size = 1024

  d = config.data
  d.source = "embedded"
  d.text_types = "docstring" if arg == "single_long" else ""
  d.seq_len = 128
  d.vocab_size = m.vocab_size
  d.validation_fraction = 0.05
  d.test_fraction = 0.05
  d.tokenizer_sample_bytes = 2_000_000   # only when tokenizer_path is empty
  d.tokens_per_parameter = (SHORT_TOKENS_PER_PARAMETER if arg == "mixture_short"
                            else LONG_TOKENS_PER_PARAMETER)

  t = config.train
  t.global_batch_size = 16
  t.micro_batch_per_device = 16
  t.num_steps = 0                 # from tokens_per_parameter
  t.learning_rate = 3e-3
  t.warmup_steps = 20
  t.min_lr_ratio = 0.1
  t.log_every_steps = 10

  c = config.checkpoint
  c.every_steps = 100
  c.snapshot_every_steps = 25     # the loss-versus-tokens curve (power-law fits)
  c.max_to_keep = 2

  e = config.eval
  e.every_steps = 25
  e.max_batches = 8
  e.batch_per_device = 16
  e.sample_tokens = 0
  return config
