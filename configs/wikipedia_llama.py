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


def get_config(arg=None):
  return common.study_run("wikipedia", 100.0, arg)
