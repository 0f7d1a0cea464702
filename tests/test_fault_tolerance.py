"""Fault tolerance (issue 8) on `configs/demo.py:tiny`: non-finite steps, corrupt
checkpoints, write errors, bad data, kill -9 with a data-order record.

The kill -9 sweep over several seeds is `slow`; one seed runs in the default suite.
`experiments/fault_injection.py` runs every fault N times and prints the table."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax import steps
from mambaswelu_jax.training import state as train_state
from mambaswelu_jax.training import fault_tolerance
from mambaswelu_jax.training import train
from mambaswelu_jax.data.order import read_data_order
from mambaswelu_jax.mesh import make_mesh, to_global
from mambaswelu_jax.metrics import read_jsonl
from tests.test_train import tiny as train_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 8


pytestmark = pytest.mark.usefixtures("compilation_cache")


def tiny(tokenizer_path, **overrides):
  """test_train's tiny run without the end-of-run text sample (not what is tested here)."""
  return train_tiny(tokenizer_path, **{"eval__sample_tokens": 0, **overrides})


def poison_params_at(call: int, leaf: int = 0):
  """A stand-in for train.make_train_step whose step writes NaN into parameter leaf
  number `leaf` (modulo the leaf count) just before its `call`-th call."""
  real_make = train.make_train_step

  def make(*args, **kwargs):
    step_fn = real_make(*args, **kwargs)
    calls = {"n": 0}

    def poisoned(state, handle, batch, lr_scale=None):
      calls["n"] += 1
      if calls["n"] == call:
        params = jax.tree.map(np.array, jax.device_get(state["params"]))
        flat = jax.tree.leaves(params)
        flat[leaf % len(flat)].reshape(-1)[0] = np.nan
        sharding = jax.tree.leaves(state["params"])[0].sharding
        state = dict(state, params=jax.device_put(params, sharding))
      return step_fn(state, handle, batch, lr_scale)
    poisoned.jitted = step_fn.jitted  # what the memory pre-flight compiles
    return poisoned
  return make


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_same(a, b):
  for x, y in zip(leaves(a), leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tokenizer_path, tmp_path_factory):
  """An uninterrupted run of NUM_STEPS steps (checkpoints at 4 and 8)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, train.train_and_evaluate(tiny(tokenizer_path), workdir)


def _log(workdir):
  return open(os.path.join(workdir, "train.log"), encoding="utf-8").read()


# --- 4. non-finite steps ------------------------------------------------------------


def _bad_batch(arrays, vocab):
  """An out-of-range token id: its embedding row is NaN, so loss and gradients are."""
  arrays = {k: np.array(v) for k, v in arrays.items()}
  arrays["inputs"][0, 0] = vocab
  return arrays


def test_nonfinite_step_leaves_state_unchanged(tokenizer_path):
  """NaN in the batch, then NaN in a parameter: the jitted step keeps params and
  optimizer state as they were and reports skipped_update = 1; a good batch updates."""
  config = tiny(tokenizer_path)
  mesh = make_mesh(jax.devices()[:1])
  parts, state, handle = train_state.create_train_state(config, mesh)
  step_fn = steps.make_train_step(mesh, parts, accum_steps=4)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 512, (8, 33), dtype=np.int32)
  good = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

  before = jax.device_get(state)
  state, m = step_fn(state, handle, to_global(_bad_batch(good, 512), mesh))
  assert float(m["skipped_update"]) == 1.0 and not np.isfinite(float(m["train_loss"]))
  assert_same(state["params"], before["params"])
  assert_same(state["opt_state"], before["opt_state"])
  assert int(state["step"]) == 1  # the batch is consumed

  for _ in range(2):  # the warmup's first learning rate is 0: the skip did not advance it
    state, m = step_fn(state, handle, to_global(good, mesh))
    assert float(m["skipped_update"]) == 0.0
  changed = jax.device_get(state)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(changed["params"]),
                                                      leaves(before["params"])))

  # NaN in one parameter: every step from then on is skipped, nothing else moves.
  poisoned = jax.tree.map(np.array, changed)
  first = jax.tree.leaves(poisoned["params"])[0]
  first[(0,) * first.ndim] = np.nan
  state = jax.device_put(poisoned, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  state, m = step_fn(state, handle, to_global(good, mesh))
  assert float(m["skipped_update"]) == 1.0
  assert_same(state["params"], poisoned["params"])


def test_nonfinite_batches_reload_and_scale_lr(tokenizer_path, tmp_path, monkeypatch):
  """Bad batches at steps 5 and 6 with train.max_consecutive_nonfinite=2: two updates
  skipped, the step-4 checkpoint reloaded, the learning rate halved, the run finishes
  with finite checkpoints, and the counters survive in the checkpoint's meta."""
  real_split = train.split_batch
  calls = {"n": 0}

  def split(batch, *args, **kwargs):
    arrays, extra = real_split(batch, *args, **kwargs)
    calls["n"] += 1
    return (_bad_batch(arrays, 512) if calls["n"] in (5, 6) else arrays), extra

  monkeypatch.setattr(train, "split_batch", split)
  workdir = str(tmp_path)
  result = train.train_and_evaluate(
      tiny(tokenizer_path, train__max_consecutive_nonfinite=2, train__nonfinite_lr_factor=0.5),
      workdir)
  assert result.step == NUM_STEPS
  last = read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1]
  assert last["skipped_updates"] == 2 and last["nonfinite_reloads"] == 1
  assert last["lr_scale"] == 0.5 and np.isfinite(last["train_loss"])
  log = _log(workdir)
  assert "2 non-finite steps in a row" in log and "reloaded the params of step 4" in log
  meta = json.load(open(os.path.join(workdir, "checkpoints", "8", "meta", "metadata")))
  assert meta["lr_scale"] == 0.5 and meta["skipped_updates"] == 2
  assert all(np.all(np.isfinite(x)) for x in leaves(result.state["params"]))


def test_nonfinite_param_is_never_checkpointed(tokenizer_path, tmp_path, monkeypatch):
  """NaN written into a parameter after step 5: every later update is skipped; the
  step-8 checkpoint is refused, the step-4 params come back and are saved instead."""
  monkeypatch.setattr(train, "make_train_step", poison_params_at(6))
  workdir = str(tmp_path)
  result = train.train_and_evaluate(
      tiny(tokenizer_path, train__max_consecutive_nonfinite=0, eval__every_steps=0), workdir)
  assert result.step == NUM_STEPS
  log = _log(workdir)
  assert "non-finite values" in log and "not saved" in log
  assert "reloaded the params of step 4" in log
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          result.state["params"])
  for kind in ("checkpoints", "final"):
    _, params = orbax_store.restore_params(workdir, abstract, step=8, kind=kind)
    assert all(np.all(np.isfinite(x)) for x in leaves(params)), kind
  _, at4 = orbax_store.restore_params(workdir, abstract, step=4, kind="checkpoints")
  _, at8 = orbax_store.restore_params(workdir, abstract, step=8, kind="checkpoints")
  assert_same(at4, at8)  # every update after the NaN was skipped


# --- 3. corrupt checkpoints ----------------------------------------------------------


def _largest_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir)
           for f in fs]
  return max(files, key=os.path.getsize)


def corrupt(step_dir, how, seed=0):
  """Damages the largest array file of a checkpoint step; returns its path."""
  path = _largest_file(step_dir)
  size = os.path.getsize(path)
  if how == "truncate":
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  elif how == "delete":
    os.remove(path)
  elif how == "garbage":
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
      f.seek(size // 3)
      f.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
  else:
    raise ValueError(how)
  return path


@pytest.fixture(scope="module")
def abstract_state(tokenizer_path):
  mesh = make_mesh(jax.devices()[:1])
  _, state, _ = train_state.create_train_state(tiny(tokenizer_path), mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


@pytest.mark.parametrize("how", ["truncate", "delete", "garbage"])
def test_corrupt_latest_checkpoint_falls_back(straight, abstract_state, tmp_path, how, caplog):
  workdir = str(tmp_path / "w")
  shutil.copytree(straight[0], workdir)
  corrupt(os.path.join(workdir, "checkpoints", "8"), how)
  ckpts = orbax_store.Checkpoints(workdir, tiny("").checkpoint)
  with caplog.at_level("WARNING", logger="mambaswelu_jax"):
    step, state = ckpts.restore_latest(abstract_state, None)
  ckpts.close()
  assert step == 4
  assert "checkpoints/8 does not restore, skipping it" in caplog.text
  assert "the newer one(s) 8 were skipped" in caplog.text
  _, reference = straight
  reference4 = orbax_store.restore_params(straight[0], abstract_state["params"], step=4,
                                            kind="checkpoints")[1]
  assert_same(state["params"], reference4)


def test_resume_after_garbage_in_latest_checkpoint(straight, tokenizer_path, tmp_path):
  """End to end: garbage bytes in step 8 (a file that still decodes): the run resumes
  from step 4, says so, and ends with the uninterrupted run's params."""
  workdir = str(tmp_path / "w")
  shutil.copytree(straight[0], workdir)
  shutil.rmtree(os.path.join(workdir, "final"))
  corrupt(os.path.join(workdir, "checkpoints", "8"), "garbage")
  result = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  log = _log(workdir)
  assert "checkpoints/8 does not restore, skipping it" in log
  assert "resumed from" in log and "checkpoints/4" in log
  assert_same(result.state["params"], straight[1].state["params"])


def test_eval_on_corrupt_step_names_the_file(straight, tmp_path):
  from mambaswelu_jax.checkpointing import restore
  workdir = str(tmp_path / "w")
  shutil.copytree(straight[0], workdir)
  # Every array data file of step 8 (a full state's may hold only optimizer arrays,
  # which eval does not read).
  for kind in ("checkpoints", "snapshots", "final"):
    for d, _, fs in os.walk(os.path.join(workdir, kind, "8")):
      for f in fs:
        if os.path.basename(d) == "d" and os.path.getsize(os.path.join(d, f)) > 4096:
          with open(os.path.join(d, f), "r+b") as fh:
            fh.seek(os.path.getsize(os.path.join(d, f)) // 3)
            fh.write(b"\x5a" * 64)
  with pytest.raises(restore.RunError) as e:
    restore.load_run(workdir, 8)
  msg = str(e.value)
  for kind in ("checkpoints", "snapshots", "final"):
    assert f"{kind}/8" in msg
  assert "local file" in msg or "differ from the checksums" in msg


# --- 5. write errors -----------------------------------------------------------------


def _fail_commit_of(monkeypatch, steps):
  """Orbax's final rename of a checkpoint (its commit) fails with ENOSPC for `steps`."""
  from orbax.checkpoint._src.path import async_path
  real = async_path.rename

  async def rename(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) in {str(s) for s in steps} and "checkpoints" in os.fspath(dst):
      raise OSError(errno.ENOSPC, "No space left on device (injected)", os.fspath(dst))
    return await real(src, dst, *args, **kwargs)

  monkeypatch.setattr(async_path, "rename", rename)


@pytest.mark.parametrize("mode", ["continue", "stop"])
def test_write_error_keeps_earlier_checkpoints(tokenizer_path, tmp_path, monkeypatch, mode,
                                               abstract_state):
  _fail_commit_of(monkeypatch, [6])
  workdir = str(tmp_path)
  config = tiny(tokenizer_path, checkpoint__every_steps=2, checkpoint__snapshot_every_steps=0,
                eval__every_steps=0, checkpoint__on_write_error=mode,
                checkpoint__max_to_keep=5)
  if mode == "stop":
    with pytest.raises(fault_tolerance.TrainingStopped) as e:
      train.train_and_evaluate(config, workdir)
    assert e.value.exit_code == fault_tolerance.WRITE_ERROR_EXIT_CODE == 3
    assert "No space left on device" in str(e.value)
  else:
    result = train.train_and_evaluate(config, workdir)
    assert result.step == NUM_STEPS
    meta = json.load(open(os.path.join(workdir, "checkpoints", "8", "meta", "metadata")))
    assert meta["checkpoint_write_errors"] == 1
  log = _log(workdir)
  assert "failed; earlier checkpoints are intact" in log and "No space left" in log
  ckpts = orbax_store.Checkpoints(workdir, config.checkpoint)
  saved = sorted(ckpts.states.all_steps())
  restored = ckpts.restore_latest(abstract_state, None)
  ckpts.close()
  assert 6 not in saved and {2, 4} <= set(saved)
  assert restored is not None and restored[0] == max(saved)
  if mode == "stop":  # rerun (the disk has room again): resumes and finishes
    monkeypatch.undo()
    result = train.train_and_evaluate(config, workdir)
    assert result.step == NUM_STEPS


# --- 6. bad data, end to end -----------------------------------------------------------


def test_bad_data_run_completes(tokenizer_path, tmp_path):
  """SlimPajama files with random byte corruption, invalid JSON and UTF-8, empty and
  very large documents: the run trains, the bad records are skipped and counted."""
  from tests import slimpajama_files
  root = str(tmp_path / "sp")
  slimpajama_files.write_slimpajama(root)
  rng = np.random.default_rng(0)
  big = [slimpajama_files.record("x" * 2_000_000), slimpajama_files.record(""), b"\xff\xfe not json",
         *[slimpajama_files.record(f"more text {i} " * 40) for i in range(60)]]
  slimpajama_files.write_zst(f"{root}/train/chunk1/example_train_7.jsonl.zst", big, frames=4)
  path = f"{root}/train/chunk1/example_train_8.jsonl.zst"
  slimpajama_files.write_zst(path, [slimpajama_files.record(f"flip {i} " * 30) for i in range(200)],
                     frames=5)
  blob = bytearray(open(path, "rb").read())
  for i in rng.integers(len(blob) // 2, len(blob), 20):
    blob[i] ^= 0xFF
  open(path, "wb").write(bytes(blob))
  config = tiny(tokenizer_path, train__num_steps=4, eval__every_steps=0)
  config.data.source = "slimpajama"
  config.data.data_dir = root
  workdir = str(tmp_path / "w")
  result = train.train_and_evaluate(config, workdir)
  assert result.step == 4 and np.isfinite(result.final_metrics["validation_loss"])
  last = read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1]
  skipped = {k: v for k, v in last.items() if k.startswith("skipped_") and k != "skipped_updates"}
  assert sum(skipped.values()) >= 5, last


# --- 1. kill -9 ----------------------------------------------------------------------


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _cli(workdir, tokenizer_path, *extra):
  return [sys.executable, "-m", "mambaswelu_jax.main", "--config=configs/demo.py:tiny",
          f"--workdir={workdir}", f"--config.data.tokenizer_path={tokenizer_path}",
          "--config.eval.sample_tokens=0", "--config.checkpoint.every_steps=1",
          "--config.checkpoint.snapshot_every_steps=0", "--config.eval.every_steps=0",
          "--config.train.log_every_steps=1", *extra]


def kill9_run(workdir, tokenizer_path, seed, kills=1, timeout=300):
  """Runs the tiny demo in a subprocess, kill -9 at random moments (`kills` times: after
  a random number of recorded steps plus a random delay, so during steps and during
  checkpoint writes), then runs it to the end. Returns what happened."""
  rng = np.random.default_rng(seed)
  order = os.path.join(workdir, "data_order.jsonl")
  events = []
  def lines():
    return sum(1 for _ in open(order)) if os.path.exists(order) else 0

  for i in range(kills):
    baseline = lines()  # steps this process records: lines past the ones already there
    proc = subprocess.Popen(_cli(workdir, tokenizer_path), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = int(rng.integers(1, NUM_STEPS)) if i == 0 else int(rng.integers(1, 4))
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
      if lines() - baseline >= target + (1 if baseline else 0):  # (+ the "resumed_at" line)
        break
      time.sleep(0.02)
    time.sleep(float(rng.uniform(0, 0.3)))
    finished = proc.poll() is not None
    if not finished:
      os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt_dir = os.path.join(workdir, "checkpoints")
    partial = ([n for n in os.listdir(ckpt_dir) if "tmp" in n] if os.path.isdir(ckpt_dir)
               else [])  # a checkpoint being written when the kill came
    events.append({"killed": not finished, "partial_checkpoint": bool(partial),
                   "saved": sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
                   if os.path.isdir(ckpt_dir) else []})
  done = subprocess.run(_cli(workdir, tokenizer_path), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  return events


def reference_run(workdir, tokenizer_path, timeout=300):
  done = subprocess.run(_cli(workdir, tokenizer_path), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]


def check_nothing_lost(workdir, reference_workdir, abstract_params):
  """The resumed run's final params equal the reference's, and each step trained on
  the reference's batch for that step (a step recorded twice -- before and after the
  kill -- with the same batch both times)."""
  want = read_data_order(os.path.join(reference_workdir, "data_order.jsonl"))
  got = read_data_order(os.path.join(workdir, "data_order.jsonl"))
  assert sorted(got) == sorted(want) == list(range(1, NUM_STEPS + 1))
  for step, hashes in got.items():
    assert set(hashes) == set(want[step]), f"step {step}: batches {hashes} != {want[step]}"
  _, a = orbax_store.restore_params(workdir, abstract_params, kind="final")
  _, b = orbax_store.restore_params(reference_workdir, abstract_params, kind="final")
  assert_same(a, b)
  return sum(len(h) - 1 for h in got.values())  # steps replayed after kills


@pytest.fixture(scope="module")
def cli_reference(tokenizer_path, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cli_reference"))
  reference_run(workdir, tokenizer_path)
  return workdir


def test_kill9_resume_loses_nothing(cli_reference, tokenizer_path, tmp_path, abstract_state):
  workdir = str(tmp_path)
  events = kill9_run(workdir, tokenizer_path, seed=0)
  assert events[0]["killed"]
  check_nothing_lost(workdir, cli_reference, abstract_state["params"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kill9_sweep(cli_reference, tokenizer_path, tmp_path, abstract_state, seed):
  workdir = str(tmp_path)
  kill9_run(workdir, tokenizer_path, seed=seed, kills=3)
  check_nothing_lost(workdir, cli_reference, abstract_state["params"])



def kill9_during_a_checkpoint_write(workdir, tokenizer_path, timeout=300):
  """kill -9 the moment an Orbax temporary checkpoint directory appears (after at least
  one finished checkpoint), then run to the end. Returns whether the half-written
  checkpoint was still there after the kill, i.e. the kill landed inside the write."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  names = lambda: os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
  proc = subprocess.Popen(_cli(workdir, tokenizer_path), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    current = names()
    if any(n.isdigit() for n in current) and any("tmp" in n for n in current):
      os.kill(proc.pid, signal.SIGKILL)
      break
    time.sleep(0.001)
  proc.wait()
  partial = any("tmp" in n for n in names())
  done = subprocess.run(_cli(workdir, tokenizer_path), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  return partial


@pytest.mark.slow
@pytest.mark.parametrize("repeat", [0, 1, 2])
def test_kill9_inside_a_checkpoint_write_loses_nothing(cli_reference, tokenizer_path,
                                                       tmp_path, abstract_state, repeat):
  landed = False
  for attempt in range(3):  # a write can finish between the poll and the kill
    workdir = str(tmp_path / f"attempt{attempt}")
    landed = kill9_during_a_checkpoint_write(workdir, tokenizer_path)
    check_nothing_lost(workdir, cli_reference, abstract_state["params"])
    if landed:
      print(f"repeat {repeat}: the kill landed inside a write at attempt {attempt + 1}")
      break
  assert landed, "no kill landed inside a checkpoint write in 3 attempts"
