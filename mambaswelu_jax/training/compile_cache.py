"""JAX's persistent compilation cache for a run (config key train.compilation_cache_dir).

A restart (a requeued SLURM job, a resumed run, a second run of the same config) reads
the compiled train and eval steps from the cache instead of compiling them again.
`JAX_COMPILATION_CACHE_DIR` in the environment wins over the config; an empty key (and
no variable) leaves the cache off. Standard library and jax only.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("mambaswelu_jax.training.compile_cache")


def setup(config) -> str:
  """Turns the cache on before anything compiles; returns its folder ("" when off)."""
  import jax  # pylint: disable=import-outside-toplevel
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
      config.train.compilation_cache_dir or "")
  if not path:
    return ""
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # an unwritable cache costs compile time, never the run
    log.warning("compilation cache %s cannot be made (%s): compiling without it", path, e)
    return ""
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    # Only compiles that took at least this long are stored (JAX's default is 1 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path
