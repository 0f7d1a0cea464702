"""The commands over a workdir or a config (the trainer's is `mambaswelu_jax.main`):
each module's `run()` is both `python -m mambaswelu_jax.cli.<name>` and the
`mambaswelu-<name>` console script. None imports `mambaswelu_jax.training`'s loop."""

import os


def run_with_flags(main, define_flags) -> None:
  """Quiets TensorFlow's start-up lines, defines the command's flags (only when it runs,
  so importing a command defines none) and runs `main` under absl."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  define_flags()
  from absl import app  # pylint: disable=import-outside-toplevel
  app.run(main)
