"""Study run 3: the study model on English Wikipedia (tfds), 100 tokens per parameter.

  python -m mambaswelu_jax.main --config=configs/wikipedia_llama.py --workdir=runs/wikipedia_llama \
      --config.data.data_dir=/path/to/tensorflow_datasets

Steps = 100 x parameters / 16,384 tokens per step; override with
--config.train.num_steps=N. `:smoke` shrinks it for a laptop (a few minutes on a CPU),
keeping the data source; with no data.data_dir it reads a small prepared tfds
wikipedia/<config> dataset written once from the embedded corpus
(mambaswelu_jax/data/smoke_sample.py):

  python -m mambaswelu_jax.main --config=configs/wikipedia_llama.py:smoke --workdir=/tmp/smoke
"""

from configs import common
from configs import default


def get_config(arg=None):
  arg = common.check_arg(arg)
  config = default.get_config()
  config.data.source = "wikipedia"
  config.data.tokens_per_parameter = 100.0
  if arg == "smoke":
    common.smoke(config)
  return config
