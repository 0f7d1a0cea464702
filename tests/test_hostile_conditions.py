"""A long run's hostile conditions (issue 22) on `configs/demo.py:tiny`: a full disk
(injected ENOSPC at every writer, and a real tmpfs where the machine lets us mount
one), a second trainer on the same workdir, the stop latency, the shapes checked
before anything is built."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mambaswelu_jax.cli import check_data
from mambaswelu_jax.checkpointing import run_config
from mambaswelu_jax.training import train
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.data.order import read_data_order
from mambaswelu_jax.metrics import read_jsonl
from tests.test_train import ROOT, tiny

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _main(workdir, tokenizer_path, *extra, timeout=300):
  return subprocess.run(
      [sys.executable, "-m", "mambaswelu_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={workdir}", f"--config.data.tokenizer_path={tokenizer_path}",
       "--config.eval.sample_tokens=0", *extra],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


def _files(workdir):
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      out[os.path.relpath(path, workdir)] = open(path, "rb").read()
  return out


# --- 1. a full disk ------------------------------------------------------------------


def test_append_file_keeps_what_it_could_not_write(tmp_path, monkeypatch):
  path = str(tmp_path / "m.jsonl")
  said = []
  full = {"on": False}
  real = layout.AppendFile._os_write

  def write(fd, data):
    if full["on"]:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(fd, data[:7])  # short writes: the rest is written by the next call

  monkeypatch.setattr(layout.AppendFile, "_os_write", staticmethod(write))
  f = layout.AppendFile(path, on_error=said.append)
  assert f.append('{"step": 1}\n')
  full["on"] = True
  assert not f.append('{"step": 2}\n') and not f.append('{"step": 3}\n')
  full["on"] = False
  assert f.append('{"step": 4}\n') and f.close()
  assert [r["step"] for r in layout.json_records(path)] == [1, 2, 3, 4]
  assert len(said) == 2 and "cannot write" in said[0] and "again" in said[1]
  # Past max_pending the oldest lines are dropped, and the file stays line-aligned.
  g = layout.AppendFile(path, max_pending=30)
  full["on"] = True
  for step in range(5, 10):
    g.append(json.dumps({"step": step}) + "\n")
  full["on"] = False
  assert g.flush() and g.dropped >= 2
  steps = [r["step"] for r in layout.json_records(path)]
  assert steps[:4] == [1, 2, 3, 4] and steps[-1] == 9


def _fail_orbax_commit(monkeypatch, steps):
  from orbax.checkpoint._src.path import async_path
  real = async_path.rename

  async def rename(src, dst, *args, **kwargs):
    if (os.path.basename(os.fspath(dst)) in {str(s) for s in steps}
        and "checkpoints" in os.fspath(dst)):
      raise OSError(errno.ENOSPC, "No space left on device (injected)", os.fspath(dst))
    return await real(src, dst, *args, **kwargs)

  monkeypatch.setattr(async_path, "rename", rename)


def _hook_train_step(monkeypatch, before_step):
  """The trainer's step calls `before_step(n, batch)` (n counts from 1) first and runs
  on the batch it returns."""
  real_make = train.make_train_step

  def make(*args, **kwargs):
    step_fn = real_make(*args, **kwargs)
    calls = {"n": 0}

    def step(state, handle, batch, lr_scale=None):
      calls["n"] += 1
      return step_fn(state, handle, before_step(calls["n"], batch), lr_scale)
    step.jitted = step_fn.jitted
    return step

  monkeypatch.setattr(train, "make_train_step", make)


def test_full_disk_at_every_writer_keeps_the_run(tokenizer_path, tmp_path, monkeypatch):
  """ENOSPC from steps 3 to 6 at every file the trainer appends to (metrics.jsonl,
  train.log, data_order.jsonl), at TensorBoard's writes and flushes, and at the
  checkpoint of step 4: the run goes on, the appended files end complete once there is
  room again, the checkpoint of step 4 is missing (no temporary directory left) and
  the run ends with step 8 saved."""
  from clu import metric_writers
  full = {"on": False}
  real_write = layout.AppendFile._os_write

  def write(fd, data):
    if full["on"]:
      raise OSError(errno.ENOSPC, "No space left on device (injected)")
    return real_write(fd, data)

  monkeypatch.setattr(layout.AppendFile, "_os_write", staticmethod(write))
  for method in ("write_scalars", "flush", "write_hparams", "write_texts"):
    real = getattr(metric_writers.SummaryWriter, method)

    def failing(self, *args, _real=real, **kwargs):
      if full["on"]:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
      return _real(self, *args, **kwargs)
    monkeypatch.setattr(metric_writers.SummaryWriter, method, failing)
  _fail_orbax_commit(monkeypatch, [4])

  def disk_full_during_steps_3_to_6(n, batch):
    full["on"] = 3 <= n <= 6
    return batch

  _hook_train_step(monkeypatch, disk_full_during_steps_3_to_6)
  workdir = str(tmp_path / "w")
  config = tiny(tokenizer_path, train__log_every_steps=1, eval__sample_tokens=0,
                checkpoint__snapshot_every_steps=0)
  result = train.train_and_evaluate(config, workdir)
  assert result.step == 8
  assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))] == list(
      range(1, 9))
  assert sorted(read_data_order(os.path.join(workdir, "data_order.jsonl"))) == list(range(1, 9))
  log = open(os.path.join(workdir, "train.log"), encoding="utf-8").read()
  assert "step 5/8" in log and "cannot write" in log and "again" in log
  assert layout.steps(workdir) == [8]
  assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in n]
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    pytest.skip(f"mount -t tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): "
                f"{proc.stderr.strip()}; the injected-ENOSPC test covers the writers")


@pytest.mark.slow
def test_full_tmpfs_then_room_again_resumes(tokenizer_path, tmp_path):
  """A real full disk (a 1.1 MB tmpfs: step 4's checkpoint fits, step 8's does not):
  no traceback from the trainer, exit 3 (the last checkpoint matters) with step 4 kept
  and no temporary directory left; a rerun on the still-full disk says the same; with
  room again the rerun resumes from step 4 and ends at 8."""
  mount = str(tmp_path / "disk")
  _mount_tmpfs(mount, "1100k")
  try:
    workdir = os.path.join(mount, "run")
    for _ in range(2):  # the run, then a rerun on the still-full disk
      proc = _main(workdir, tokenizer_path)
      assert proc.returncode in (0, 3), proc.stderr[-3000:]
      assert "/mambaswelu_jax/" not in proc.stderr, proc.stderr[-3000:]  # no traceback of ours
      assert 4 in layout.steps(workdir)
      assert not [n for kind in ("checkpoints", "snapshots", "final")
                  if os.path.isdir(os.path.join(workdir, kind))
                  for n in os.listdir(os.path.join(workdir, kind)) if "tmp" in n]
    assert proc.returncode == 3
    assert any(line.startswith("error: ") for line in proc.stderr.splitlines())
    subprocess.run(["mount", "-o", "remount,size=8m", mount], check=True)
    proc = _main(workdir, tokenizer_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert layout.steps(workdir)[-1] == 8 and 8 in layout.steps(workdir, layout.FINAL)
    assert "resumed from" in open(os.path.join(workdir, "train.log")).read()
  finally:
    subprocess.run(["umount", "-l", mount], check=False)


# --- 2. one workdir, one trainer -----------------------------------------------------


def _lock(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  record = {"host": layout._host(), "pid": os.getpid(), "started": time.time(),  # pylint: disable=protected-access
            "heartbeat": time.time(), "token": "other", **fields}
  path = os.path.join(workdir, layout.LOCK)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f)
  os.utime(path, (record["heartbeat"], record["heartbeat"]))  # the holder's last beat


def test_workdir_lock_refuses_a_live_holder_and_takes_a_stale_one(tmp_path):
  sleeper = subprocess.Popen(["sleep", "60"])
  try:
    w = str(tmp_path / "w")
    _lock(w, pid=sleeper.pid, pid_start=layout._process_start(sleeper.pid))  # pylint: disable=protected-access
    before = _files(w)
    with pytest.raises(layout.WorkdirLocked, match=rf"pid {sleeper.pid} on host "
                                                   rf"{layout._host()}.*--take_over_lock"):  # pylint: disable=protected-access
      layout.WorkdirLock(w).acquire()
    assert _files(w) == before
    taken = layout.WorkdirLock(w, take_over=True)
    taken.acquire()
    assert taken.replaced[1] == "--take_over_lock was given"
    taken.release()
    assert not os.path.exists(os.path.join(w, layout.LOCK))
  finally:
    sleeper.kill()
    sleeper.wait()
  # The same host, the process gone: stale.
  _lock(w, pid=sleeper.pid)
  lock = layout.WorkdirLock(w)
  lock.acquire()
  assert "is gone" in lock.replaced[1]
  lock.release()
  # Another host: stale only once its heartbeat is older than the limit.
  _lock(w, host="elsewhere", heartbeat=time.time() - 5)
  with pytest.raises(layout.WorkdirLocked, match="host elsewhere"):
    layout.WorkdirLock(w, stale_s=60).acquire()
  _lock(w, host="elsewhere", heartbeat=time.time() - 61)
  lock = layout.WorkdirLock(w, stale_s=60)
  lock.acquire()
  assert "heartbeat is 61 s old" in lock.replaced[1]
  lock.release()


def test_workdir_lock_heartbeat_and_takeover_noticed(tmp_path):
  w = str(tmp_path / "w")
  lock = layout.WorkdirLock(w, heartbeat_s=0.05)
  lock.acquire()
  first = layout.read_lock(w)["beat"]
  time.sleep(0.3)
  assert layout.read_lock(w)["beat"] > first and lock.lost is None
  _lock(w, host="elsewhere")  # another trainer took it over
  time.sleep(0.3)
  assert lock.lost is not None and lock.lost["host"] == "elsewhere"
  lock.release()
  assert layout.read_lock(w)["host"] == "elsewhere"  # not ours: left alone


def test_second_trainer_is_refused_in_one_line_and_touches_nothing(tokenizer_path, tmp_path):
  """A trainer runs (SIGTERM-stopped at the end of the test); a second one on its
  workdir exits 2 at once with one line naming the first's pid and host."""
  w = tmp_path / "w"
  first = subprocess.Popen(
      [sys.executable, "-m", "mambaswelu_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={w}", f"--config.data.tokenizer_path={tokenizer_path}",
       "--config.train.num_steps=100000", "--config.train.log_every_steps=1000"],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not os.path.exists(w / "metrics.jsonl") and time.time() < deadline:
      time.sleep(0.2)
    lock = layout.read_lock(str(w))
    assert lock is not None and lock["pid"] == first.pid
    start = time.time()
    second = _main(w, tokenizer_path, "--config.train.num_steps=100000")
    assert second.returncode == 2, second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"pid {first.pid}" in lines[0]
    assert "--take_over_lock" in lines[0], lines
    assert time.time() - start < 60
  finally:
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
  assert first.returncode == 143
  assert not os.path.exists(w / layout.LOCK)
  assert len(os.listdir(w / "tensorboard")) == 1


# --- 3. the stop latency ---------------------------------------------------------------


def test_stop_signal_lands_within_two_steps_of_the_device(tokenizer_path, tmp_path,
                                                           monkeypatch):
  """SIGTERM sent while the *device* runs step 5 (from inside it) stops the run at step
  6 or 7, though the next log line is step 40: the loop runs at most one step ahead of
  the device (JAX dispatches asynchronously; unbounded, it ran to the log step first)."""

  def tick(step):
    time.sleep(0.05)  # a slow device
    if int(step) == 5:
      os.kill(os.getpid(), signal.SIGTERM)
    return np.int32(0)

  @jax.jit
  def gate(batch, step):
    zero = jax.pure_callback(tick, jax.ShapeDtypeStruct((), jnp.int32), step)
    return jax.tree.map(lambda x: x + zero.astype(x.dtype), batch)

  _hook_train_step(monkeypatch, lambda n, batch: gate(batch, jnp.int32(n)))
  config = tiny(tokenizer_path, train__num_steps=40, train__log_every_steps=40,
                eval__every_steps=0, checkpoint__every_steps=1000,
                checkpoint__snapshot_every_steps=0, eval__sample_tokens=0)
  result = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert result.stop_signal == signal.SIGTERM
  assert 5 <= result.step <= 7, result.step
  assert layout.steps(str(tmp_path / "w")) == [result.step]


# --- 6. a changed model shape is refused before anything is built -----------------------


def test_model_change_is_refused_before_the_model_is_built(tokenizer_path, tmp_path,
                                                            monkeypatch):
  workdir = str(tmp_path / "w")
  config = tiny(tokenizer_path, train__num_steps=4, eval__every_steps=0,
                eval__sample_tokens=0, checkpoint__snapshot_every_steps=0)
  train.train_and_evaluate(config, workdir)
  before = _files(workdir)

  def built(*args, **kwargs):
    raise AssertionError("the model was built before the shapes were compared")
  monkeypatch.setattr(train, "create_train_state", built)
  monkeypatch.setattr(train.data_lib, "RunData", built)
  changed = tiny(tokenizer_path, train__num_steps=4, model__d_model=48,
                 checkpoint__allow_config_change=True)
  start = time.perf_counter()
  with pytest.raises(run_config.WorkdirConfigMismatch, match="do not fit this config"):
    train.train_and_evaluate(changed, workdir)
  assert time.perf_counter() - start < 15
  assert _files(workdir) == before


def test_finished_run_says_complete_without_building_anything(tokenizer_path, tmp_path,
                                                             monkeypatch):
  workdir = str(tmp_path / "w")
  config = tiny(tokenizer_path, train__num_steps=4, eval__sample_tokens=0,
                checkpoint__snapshot_every_steps=0)
  first = train.train_and_evaluate(config, workdir)
  before = _files(workdir)

  def built(*args, **kwargs):
    raise AssertionError("a finished run built its model again")
  monkeypatch.setattr(train, "create_train_state", built)
  monkeypatch.setattr(train.data_lib, "RunData", built)
  start = time.perf_counter()
  again = train.train_and_evaluate(config, workdir)
  assert time.perf_counter() - start < 10
  assert again.step == 4 and "already complete" in again.summary
  assert again.final_metrics["validation_loss"] == pytest.approx(
      first.final_metrics["validation_loss"])
  assert _files(workdir) == before


# --- 4, 5. eval: a read-only workdir, benchmarks offline ---------------------------------


def _eval(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "mambaswelu_jax.cli.eval", *args], cwd=ROOT,
                        env=env or _env(), capture_output=True, text=True, timeout=timeout,
                        check=False)


@pytest.fixture(scope="module")
def finished(tokenizer_path, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished"))
  train.train_and_evaluate(tiny(tokenizer_path, train__num_steps=4, eval__sample_tokens=0,
                                checkpoint__snapshot_every_steps=0), workdir)
  return workdir


def test_eval_on_a_read_only_workdir_prints_first_then_one_line(finished, tmp_path,
                                                                monkeypatch, capsys):
  """The result file cannot be written (EROFS injected at the write): the table is
  printed, then one line naming the file, the reason and --output_dir; exit 3. A real
  read-only bind mount gives the same where mounting is permitted."""
  from mambaswelu_jax.cli import eval as eval_cmd
  from mambaswelu_jax import evaluation

  def read_only(path, data):
    raise OSError(errno.EROFS, "Read-only file system", path)
  monkeypatch.setattr(evaluation.layout, "atomic_write", read_only)
  from absl import flags
  eval_cmd.define_flags() if "benchmark_tasks_dir" not in flags.FLAGS else None
  # Each flag parsed alone: a whole-command parse would also validate the required
  # flags of any other command line this process has imported (main's --config).
  for name, value in (("workdir", finished), ("splits", "validation"), ("max_tokens", "200")):
    flags.FLAGS[name].parse(value)
  flags.FLAGS.mark_as_parsed()
  try:
    with pytest.raises(SystemExit) as e:
      eval_cmd.main(["eval"])
  finally:
    flags.FLAGS.unparse_flags()
  out, err = capsys.readouterr()
  assert e.value.code == 3
  assert "validation" in out and "loss" in out  # the table came first
  assert err.count("\n") == 1 and "eval/4.json: Read-only file system" in err
  assert "--output_dir" in err
  assert not os.path.exists(os.path.join(finished, "eval", "4.json"))
  # A real read-only mount, where this machine allows it.
  ro = str(tmp_path / "ro")
  os.makedirs(ro)
  mounted = subprocess.run(["mount", "--bind", "-o", "ro", finished, ro], capture_output=True,
                           check=False).returncode == 0
  if mounted:
    subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=False)
    try:
      proc = _eval(f"--workdir={ro}", "--splits=validation", "--max_tokens=200")
      assert proc.returncode == 3, proc.stderr[-2000:]
      assert "validation" in proc.stdout and "Read-only file system" in proc.stderr
      assert "Given directory is read only" not in proc.stderr
      written = tmp_path / "out"
      proc = _eval(f"--workdir={ro}", "--splits=validation", "--max_tokens=200",
                   f"--output_dir={written}")
      assert proc.returncode == 0 and (written / "4.json").exists(), proc.stderr[-2000:]
    finally:
      subprocess.run(["umount", "-l", ro], check=False)


def test_benchmarks_offline_fail_fast_naming_the_data_set(finished, tmp_path, monkeypatch):
  pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")
  import datasets.config
  from mambaswelu_jax import lm_eval_adapter
  from mambaswelu_jax.checkpointing import restore
  from mambaswelu_jax.data.sources import DataError
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # test_lm_eval_adapter sets it
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty_cache")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  run = restore.load_run(finished)
  start = time.perf_counter()
  with pytest.raises(DataError) as e:
    lm_eval_adapter.run_benchmarks(run, ["lambada_openai"], limit=2)
  assert time.perf_counter() - start < 60
  message = str(e.value)
  assert "EleutherAI/lambada_openai" in message and "HF_DATASETS_OFFLINE is set" in message
  assert "--benchmark_tasks_dir" in message and "datasets cache" in message
  assert "\n" not in message


# --- 7, 8. a validation-only download, a config from anywhere, --help --------------------


def test_validation_only_download_is_accepted(tmp_path, capsys):
  from tests import slimpajama_files
  root = str(tmp_path / "sp")
  slimpajama_files.write_slimpajama(root)
  import shutil
  shutil.rmtree(os.path.join(root, "train"))
  check_data.main(["--source=slimpajama", f"--data_dir={root}", "--splits=validation"])
  assert "validation" in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:
    check_data.main(["--source=slimpajama", f"--data_dir={root}", "--splits=train,validation"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "train split" in err


def test_config_from_anywhere_and_help(tmp_path):
  outside = tmp_path / "elsewhere.py"
  outside.write_text("from configs import demo\n\ndef get_config(arg=None):\n"
                     "  return demo.get_config(arg)\n")
  proc = subprocess.run([sys.executable, "-m", "mambaswelu_jax.cli.summary",
                         f"--config={outside}:tiny"], cwd=str(tmp_path), env=_env(),
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0 and "total_parameters" in proc.stdout, proc.stderr[-2000:]
  proc = subprocess.run([sys.executable, "-m", "mambaswelu_jax.main", "--help"],
                        cwd=str(tmp_path), env=_env(), capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0 and "--workdir" in proc.stdout and "take_over_lock" in proc.stdout


def test_lock_is_checked_before_the_config(finished, tokenizer_path, tmp_path):
  """A second trainer with another config hears about the lock, not the config."""
  import shutil
  w = str(tmp_path / "w")
  shutil.copytree(finished, w)
  sleeper = subprocess.Popen(["sleep", "60"])
  try:
    _lock(w, pid=sleeper.pid, pid_start=layout._process_start(sleeper.pid))  # pylint: disable=protected-access
    before = _files(w)
    with pytest.raises(layout.WorkdirLocked, match=f"pid {sleeper.pid}"):
      train.train_and_evaluate(tiny(tokenizer_path, train__num_steps=16), w)
    assert _files(w) == before
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_trainer_whose_lock_was_taken_over_stops_writing(tokenizer_path, tmp_path,
                                                           monkeypatch):
  """Another trainer takes the lock over mid-run (--take_over_lock elsewhere): this one
  notices at its next heartbeat and stops at the next step, exit 5, saving nothing."""
  from mambaswelu_jax.training import fault_tolerance
  monkeypatch.setattr(layout, "LOCK_HEARTBEAT_S", 0.05)
  workdir = str(tmp_path / "w")
  def taken_over_at_step_3(n, batch):
    if n == 3:
      _lock(workdir, host="elsewhere")
    if n >= 3:
      time.sleep(0.2)
    return batch

  _hook_train_step(monkeypatch, taken_over_at_step_3)
  config = tiny(tokenizer_path, train__num_steps=40, train__log_every_steps=1,
                checkpoint__every_steps=20, checkpoint__snapshot_every_steps=0,
                eval__every_steps=0, eval__sample_tokens=0)
  with pytest.raises(fault_tolerance.TrainingStopped, match="took this workdir over") as e:
    train.train_and_evaluate(config, workdir)
  assert e.value.exit_code == train.LOCK_LOST_EXIT_CODE == 5
  assert layout.steps(workdir) == []
  assert layout.read_lock(workdir)["host"] == "elsewhere"  # the new holder's lock stays
