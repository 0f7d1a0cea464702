"""A workdir is never damaged by a command that fails or is refused: resumes that
cannot restore are refused before anything is written, a failed start leaves the
workdir as it was, accepted config changes keep the old config, metrics and logs are
only appended, a checkpoint that does not restore is moved aside and saved again,
Ctrl-C is a clean stop, and every bad argument is one line and exit status 2."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax.checkpointing import run_config
from mambaswelu_jax.training import train
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.data.sources import DataError
from mambaswelu_jax.metrics import read_jsonl
from tests.test_train import NUM_STEPS, ROOT, params_of, tiny, wait_for_metrics

pytestmark = pytest.mark.usefixtures("compilation_cache")


@pytest.fixture(scope="module")
def straight(tokenizer_path, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, train.train_and_evaluate(tiny(tokenizer_path), workdir)


def files_of(workdir: str) -> dict[str, str]:
  """{relative path: sha256 of the bytes} of every file under `workdir`."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def copy_run(straight, tmp_path) -> str:
  workdir = str(tmp_path / "w")
  shutil.copytree(straight[0], workdir)
  return workdir


# --- 1. a resume that cannot restore is refused, nothing written ------------------------


def test_model_change_is_refused_even_when_allowed(straight, tokenizer_path, tmp_path):
  workdir = copy_run(straight, tmp_path)
  before = files_of(workdir)
  config = tiny(tokenizer_path, model__d_model=48, checkpoint__allow_config_change=True)
  with pytest.raises(run_config.WorkdirConfigMismatch,
                     match=r"(?s)checkpoints/8 do not fit this config's model.*"
                           r"params/.*stored \(.*32.*\) float32, this config \(.*48.*\).*"
                           r"new --workdir"):
    train.train_and_evaluate(config, workdir)
  assert files_of(workdir) == before


def test_accepted_change_keeps_the_old_config_and_appends(straight, tokenizer_path, tmp_path):
  workdir = copy_run(straight, tmp_path)
  old_config = open(os.path.join(workdir, "config.json"), "rb").read()
  old_metrics = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
  old_log = open(os.path.join(workdir, "train.log"), "rb").read()
  config = tiny(tokenizer_path, train__num_steps=NUM_STEPS + 2, train__learning_rate=1e-3,
                checkpoint__allow_config_change=True, eval__sample_tokens=0)
  result = train.train_and_evaluate(config, workdir)
  assert result.step == NUM_STEPS + 2
  kept = os.listdir(os.path.join(workdir, "config_history"))
  assert len(kept) == 1 and kept[0].startswith(f"config.until_step_{NUM_STEPS}.")
  assert open(os.path.join(workdir, "config_history", kept[0]), "rb").read() == old_config
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["learning_rate"] == 1e-3
  # Only appended: the old bytes are the start of the files.
  assert open(os.path.join(workdir, "metrics.jsonl"), "rb").read().startswith(old_metrics)
  assert open(os.path.join(workdir, "train.log"), "rb").read().startswith(old_log)
  steps = [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)) and steps[-1] == NUM_STEPS + 2


def test_metrics_records_past_the_resumed_step_are_read_as_replaced(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a": 3}\n'
                  '{"resumed_from_step": 2}\n{"step": 3, "a": 30}\n{"step": 4, "a": 4')
  assert [(r["step"], r["a"]) for r in read_jsonl(str(path))] == [(1, 1), (2, 2), (3, 30)]


# --- 3. a run that fails before its first step leaves the workdir as it found it ---------


def test_failed_start_leaves_no_trace_and_the_fix_works(tokenizer_path, tmp_path):
  missing = tiny(tokenizer_path, data__source="slimpajama",
                 data__data_dir=str(tmp_path / "no_data"))
  new = tmp_path / "new"
  with pytest.raises(DataError):
    train.train_and_evaluate(missing, str(new))
  assert not new.exists()
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("mine")
  with pytest.raises(DataError):
    train.train_and_evaluate(missing, str(existing))
  assert sorted(os.listdir(existing)) == ["notes.txt"]
  # The suggested fix (other data settings), same workdir: not "a different config".
  result = train.train_and_evaluate(tiny(tokenizer_path, train__num_steps=3,
                                         eval__sample_tokens=0), str(existing))
  assert result.step == 3
  assert {"config.json", "metrics.jsonl", "train.log", "notes.txt"} <= set(os.listdir(existing))


def test_workdir_that_is_a_file_is_refused(tokenizer_path, tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x")
  with pytest.raises(run_config.config_validation.ConfigError, match="is a file"):
    train.train_and_evaluate(tiny(tokenizer_path), str(path))
  assert path.read_text() == "x"


# --- 4. a checkpoint that does not restore is moved aside and saved again ----------------


def test_truncated_newest_checkpoint_is_moved_aside_and_rewritten(straight, tokenizer_path,
                                                                   tmp_path):
  workdir = copy_run(straight, tmp_path)
  shutil.rmtree(os.path.join(workdir, "final"))
  state_dir = os.path.join(workdir, "checkpoints", "8", "state")
  data_files = [os.path.join(r, n) for r, _, names in os.walk(state_dir) for n in names
                if "ocdbt.process" in r or r.endswith("/d")]
  biggest = max(data_files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  result = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  assert result.step == NUM_STEPS
  aside = os.listdir(os.path.join(workdir, layout.UNRESTORABLE))
  assert len(aside) == 1 and aside[0].startswith("step_8.")
  assert layout.steps(workdir) == [4, 8]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          straight[1].state["params"])
  step, params = orbax_store.restore_params(workdir, abstract, kind="checkpoints")
  assert step == NUM_STEPS
  for a, b in zip(params_of(straight[1]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  # A rerun now finds a good newest checkpoint: nothing recomputed, nothing moved.
  again = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  assert again.step == NUM_STEPS
  assert len(os.listdir(os.path.join(workdir, layout.UNRESTORABLE))) == 1


# --- 2 and 5. the command line: Ctrl-C, bad arguments ----------------------------------


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "mambaswelu_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("args, says", [
    (["--config.train.learnin_rate=1"],
     "--config.train.learnin_rate=1: unknown config key 'learnin_rate' (did you mean "
     "'learning_rate'?)"),
    (["--config.train.num_steps=abc"], "--config.train.num_steps=abc: invalid literal"),
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["positional"], "unexpected arguments ['positional']"),
])
def test_bad_argument_is_one_line_and_exit_2(tmp_path, args, says):
  proc = _main("--config=configs/demo.py:tiny", f"--workdir={tmp_path / 'w'}", *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
  assert not (tmp_path / "w").exists()


def test_bad_config_argument_and_file_workdir(tmp_path):
  proc = _main("--config=configs/demo.py:huge", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert "unknown demo argument 'huge'" in proc.stderr
  (tmp_path / "f").write_text("")
  proc = _main("--config=configs/demo.py:tiny", f"--workdir={tmp_path / 'f'}")
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "is a file, not a directory" in proc.stderr and "Traceback" not in proc.stderr
  proc = _main("--config=configs/demo.py:huge", f"--workdir={tmp_path / 'w'}", "--traceback")
  assert proc.returncode != 0 and "Traceback" in proc.stderr  # asked for


@pytest.mark.slow
def test_ctrl_c_saves_stops_and_resumes_exactly(straight, tokenizer_path, tmp_path):
  """SIGINT (Ctrl-C) to `main`: a checkpoint of the current step, one line, exit 130; the
  rerun ends with the uninterrupted run's params."""
  workdir = tmp_path / "w"
  args = ["--config=configs/demo.py:tiny", f"--workdir={workdir}",
          f"--config.data.tokenizer_path={tokenizer_path}", "--config.train.log_every_steps=1"]
  proc = subprocess.Popen([sys.executable, "-m", "mambaswelu_jax.main", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_metrics(workdir, 2)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  stopped = int(out.strip().splitlines()[-1].split()[3].rstrip(";"))
  assert out.strip().splitlines()[-1] == (f"stopped at step {stopped}; rerun the same command "
                                          f"to resume")
  assert 2 <= stopped < NUM_STEPS
  assert layout.steps(str(workdir))[-1] == stopped
  proc = subprocess.run([sys.executable, "-m", "mambaswelu_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          straight[1].state["params"])
  _, params = orbax_store.restore_params(str(workdir), abstract, kind="final")
  for a, b in zip(params_of(straight[1]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))
