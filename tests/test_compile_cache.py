"""train.compilation_cache_dir: the config key turns JAX's persistent cache on, the
environment variable wins, an empty key leaves it off."""

import jax
import pytest

from configs import demo
from mambaswelu_jax.training import compile_cache


@pytest.fixture
def restore_jax_config(monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  yield monkeypatch
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def test_config_key_sets_the_cache(restore_jax_config, tmp_path):
  config = demo.get_config("tiny")
  assert config.train.compilation_cache_dir.startswith("~/.cache/")
  config.train.compilation_cache_dir = str(tmp_path / "c")
  assert compile_cache.setup(config) == str(tmp_path / "c")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
  assert (tmp_path / "c").is_dir()


def test_environment_wins_and_empty_disables(restore_jax_config, tmp_path):
  config = demo.get_config("tiny")
  config.train.compilation_cache_dir = ""
  jax.config.update("jax_compilation_cache_dir", None)
  assert compile_cache.setup(config) == ""
  assert jax.config.jax_compilation_cache_dir is None
  restore_jax_config.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert compile_cache.setup(config) == str(tmp_path / "env")
