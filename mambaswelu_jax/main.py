r"""Train or resume a run: python -m mambaswelu_jax.main --config=configs/X.py --workdir=DIR

Overrides: --config.train.learning_rate=1e-3 ...; a config argument shrinks a real
run: --config=configs/slimpajama_chinchilla.py:smoke.

Multi-host: every host runs the same command; `jax.distributed.initialize` is called
when --coordinator_address (with --num_processes, --process_id) or the environment
(JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a cluster JAX
detects itself, with --distributed) says the run spans processes.

Exit status: 0 done (or stopped at train.stop_at_step); 2 a bad argument, config,
workdir or data, or checkpoints that do not fit the config (one line on stderr,
reported before anything is written or compiled where possible; --traceback shows
the Python traceback too); 3 a checkpoint write failed with
checkpoint.on_write_error="stop" (earlier checkpoints intact); 4 diverged
(non-finite steps after train.max_nonfinite_reloads reloads); 130 stopped by Ctrl-C
and 143 by SIGTERM, each after saving a checkpoint of the current step (rerun the
same command to resume; a second Ctrl-C aborts at once, also 130).
"""

import os
import re
import sys

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
_HEARTBEAT_S = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "Multi-process runs: a process silent this long (killed, "
    "its node lost) ends the others with an error instead of leaving them waiting in a "
    "collective; rerunning resumes from the newest checkpoint.")
_LIBRARY_INFO = flags.DEFINE_bool("library_info", False,
                                   "Show INFO logs of libraries (Orbax, CLU, JAX) too.")
_TRACEBACK = flags.DEFINE_bool("traceback", False,
                               "On an error, print the Python traceback, not one line.")
_TAKE_OVER_LOCK = flags.DEFINE_bool(
    "take_over_lock", False, "Take the workdir even when its lock (DIR/trainer.lock) names a "
    "trainer that looks alive, e.g. a job on another host known to be dead.")
_LOCK_STALE_S = flags.DEFINE_float(
    "lock_stale_s", 120.0, "A lock of another host whose heartbeat is older than this many "
    "seconds is stale and taken over (the holder refreshes it every 15 s).")
flags.mark_flags_as_required(["config", "workdir"])

USAGE_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a process ended by Ctrl-C


def _fail(message: str, code: int = USAGE_EXIT_CODE):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _one_line(error: BaseException, argv) -> str:
  """The useful line of a flag-parsing error (ml_collections and absl nest them)."""
  texts, e = [], error
  while e is not None:
    texts.append(e.args[0] if e.args and isinstance(e.args[0], str) else str(e))
    e = e.__cause__ or e.__context__
  guess = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', "\n".join(texts))
  if guess:
    arg = next((a for a in argv[1:] if guess.group(2) in a), "--config")
    return f"{arg}: unknown config key '{guess.group(2)}' (did you mean '{guess.group(1)}'?)"
  lines = [ln.strip() for ln in texts[0].splitlines() if ln.strip()
           and not ln.strip().startswith(("Pass --help", "Traceback", "File ", "^", "~"))]
  if not lines:
    return type(error).__name__
  first, last = lines[0], re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1])
  if first == lines[-1]:
    return first
  flag = re.match(r"flag (--[^=\s]+=\S+?):", first)
  return f"{flag.group(1)}: {last}" if flag else last


_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")


def _parse_flags(argv):
  """absl's flag parsing, with every bad argument as one line and exit status 2;
  --help prints the usage and exits 0."""
  if any(a in _HELP_FLAGS for a in argv[1:]):
    text = (flags.FLAGS.get_help() if "--helpfull" in argv
            else flags.FLAGS.main_module_help())
    print(f"{__doc__.strip()}\n\nflags:\n{text}", flush=True)
    sys.exit(0)
  from mambaswelu_jax.config_validation import make_configs_importable  # pylint: disable=import-outside-toplevel
  make_configs_importable(argv)
  try:
    parsed = flags.FLAGS(argv)
    _CONFIG.value.items()  # a config file that failed to load raises here
    return parsed
  except Exception as e:  # pylint: disable=broad-except
    if "--traceback" in argv:
      raise
    message = _one_line(e, argv)
    if not message.startswith(("--", "flag --", "Unknown")):  # the config file's own error
      message = f"{next((a for a in argv if a.startswith('--config=')), '--config')}: {message}"
    _fail(f"{message} (see --helpshort)")


class _OwnInfoOnly:
  """Console filter: our INFO lines, everyone's warnings and errors; a library's error
  is its one line, without the traceback it attaches (--library_info keeps them)."""

  def filter(self, record):
    if record.name.startswith("mambaswelu_jax"):
      return True
    if record.levelno < 30:
      return False
    if record.exc_info or record.exc_text:
      record.exc_info = record.exc_text = None
      record.msg, record.args = str(record.getMessage()).split("\n", 1)[0], ()
    return True


def _quiet_closed_loop_errors() -> None:
  """A failed asynchronous Orbax write (a full disk) leaves tensorstore callbacks that
  find their event loop closed; they print a traceback each (as unraisable errors).
  Those say nothing the trainer's own error line does not: drop them."""
  previous, previous_unraisable = sys.excepthook, sys.unraisablehook

  def closed_loop(value) -> bool:
    return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

  def hook(kind, value, tb):
    if not closed_loop(value):
      previous(kind, value, tb)

  def unraisable(info):
    if not closed_loop(info.exc_value):
      previous_unraisable(info)

  sys.excepthook, sys.unraisablehook = hook, unraisable


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
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid,
                               heartbeat_timeout_seconds=_HEARTBEAT_S.value,
                               shutdown_timeout_seconds=_HEARTBEAT_S.value)
    # Printed, not logged: every process's line reaches a cluster job's log (INFO lines
    # of absl's own logger are filtered from the console).
    print(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}",
          flush=True)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}: flags are written --name=value "
          f"(python -m mambaswelu_jax.main --config=configs/X.py --workdir=DIR)")
  if not _LIBRARY_INFO.value:
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    _quiet_closed_loop_errors()
  maybe_initialize_distributed()
  from mambaswelu_jax.checkpointing import data_streams  # pylint: disable=import-outside-toplevel
  refused = data_streams.mismatch(_WORKDIR.value, jax_process_count())
  if refused:
    _fail(refused)
  from mambaswelu_jax.training import compile_cache  # pylint: disable=import-outside-toplevel
  compile_cache.setup(_CONFIG.value)
  from mambaswelu_jax.training import train  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.config_validation import ConfigError  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.data.sources import DataError  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.training.fault_tolerance import TrainingStopped  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.workdir import WorkdirLocked  # pylint: disable=import-outside-toplevel
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                      take_over_lock=_TAKE_OVER_LOCK.value,
                                      lock_stale_s=_LOCK_STALE_S.value)
  except (ConfigError, DataError, WorkdirLocked) as e:
    if _TRACEBACK.value:
      raise
    _fail(str(e))
  except TrainingStopped as e:  # write error ("stop") or divergence: see fault_tolerance.py
    if _TRACEBACK.value:
      raise
    _fail(str(e), e.exit_code)
  except KeyboardInterrupt:  # before the first step, or a second Ctrl-C
    if _TRACEBACK.value:
      raise
    _fail("interrupted (Ctrl-C). Checkpoints already written are intact; rerun the "
          "same command to resume from the newest one.", INTERRUPTED_EXIT_CODE)
  if result.summary and jax_process_index() == 0:
    print(result.summary, flush=True)
  if result.stop_signal:
    print(f"stopped at step {result.step}; rerun the same command to resume", flush=True)
    sys.exit(128 + result.stop_signal)


def jax_process_count() -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_count()


def jax_process_index() -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index()


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-train` console script)."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
