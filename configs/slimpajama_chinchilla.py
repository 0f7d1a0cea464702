"""Study run 2: the study model on SlimPajama-627B, 20 tokens per parameter (Chinchilla).

  python -m mambaswelu_jax.main --config=configs/slimpajama_chinchilla.py --workdir=runs/slimpajama_chinchilla \
      --config.data.data_dir=/path/to/SlimPajama-627B

Steps = 20 x parameters / 16,384 tokens per step (151,500 for the original's
124,104,719 parameters); override with --config.train.num_steps=N.
`:smoke` shrinks it for a laptop (a few minutes on a CPU), keeping the data source;
with no data.data_dir it reads a small sample in SlimPajama's own jsonl.zst layout,
written once from the embedded corpus (mambaswelu_jax/data/smoke_sample.py):

  python -m mambaswelu_jax.main --config=configs/slimpajama_chinchilla.py:smoke --workdir=/tmp/smoke
"""

from configs import common


def get_config(arg=None):
  return common.study_run("slimpajama", 20.0, arg)
