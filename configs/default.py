"""The study model and the original plan's hyperparameters.

A real selective-SSM MambaSWELU: 6 Mamba blocks + 3 dense SWELU layers, width 1024.
Run configs (slimpajama_*, wikipedia_*) start from this one and set their data and
token budget; `demo.py` shrinks it to an offline CPU run.

The keys and the study's values live in the package, in mambaswelu_jax/config_defaults.py:
it is the reference every run config is checked against (keys and types), so an
installed package validates configs without this checkout. A new key is added there.
"""

import ml_collections

from mambaswelu_jax import config_defaults


def model_config() -> ml_collections.ConfigDict:
  return config_defaults.model_config()


def get_config() -> ml_collections.ConfigDict:
  return config_defaults.get_config()
