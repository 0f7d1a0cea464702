r"""Train or resume a run: python -m mambaswelu_jax.main --config=configs/X.py --workdir=DIR

Overrides: --config.train.learning_rate=1e-3 ...; a config argument shrinks a real
run: --config=configs/slimpajama_chinchilla.py:smoke.

Multi-host: every host runs the same command; `jax.distributed.initialize` is called
when --coordinator_address (with --num_processes, --process_id) or the environment
(JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a cluster JAX
detects itself, with --distributed) says the run spans processes.

Exit status: 0 done (or stopped at train.stop_at_step), 2 bad config or data,
3 a checkpoint write failed with checkpoint.on_write_error="stop" (earlier checkpoints
intact), 4 diverged (non-finite steps after train.max_nonfinite_reloads reloads),
143 stopped by SIGTERM after saving a checkpoint (rerun the same command to resume).
"""

import os
import sys

# configs/ is a package at the repository root, next to this package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "configs")) and _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# TensorFlow (under CLU's TensorBoard writer) need not announce its CPU kernels.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (created or resumed).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with cluster auto-detection.")
_LIBRARY_INFO = flags.DEFINE_bool("library_info", False,
                                   "Show INFO logs of libraries (Orbax, CLU, JAX) too.")
flags.mark_flags_as_required(["config", "workdir"])


class _OwnInfoOnly:
  """Console filter: our INFO lines, everyone's warnings and errors."""

  def filter(self, record):
    return record.levelno >= 30 or record.name.startswith("mambaswelu_jax")


def maybe_initialize_distributed() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  address = _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num = _NUM_PROCESSES.value or (int(os.environ["JAX_NUM_PROCESSES"])
                                 if "JAX_NUM_PROCESSES" in os.environ else None)
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else (
      int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
  if address or _DISTRIBUTED.value:
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      # Cross-process collectives between CPU devices.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _LIBRARY_INFO.value:
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
  maybe_initialize_distributed()
  from mambaswelu_jax import train  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.config_validation import ConfigError  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.data.sources import DataError  # pylint: disable=import-outside-toplevel
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.TrainingStopped as e:  # write error ("stop") or divergence: see train.py
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  if result.summary and jax_process_index() == 0:
    print(result.summary, flush=True)
  if result.preempted:
    sys.exit(train.PREEMPTED_EXIT_CODE)


def jax_process_index() -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index()


if __name__ == "__main__":
  app.run(main)
