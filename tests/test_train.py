"""The trainer end to end on `configs/demo.py:tiny` (a 32k-parameter model, 8 steps):
train_and_evaluate, the workdir layout, metrics, resume equality, SIGTERM, and the
same losses on 1, 2 and 4 devices and on two jax.distributed processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from configs import demo
from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax.checkpointing import run_config
from mambaswelu_jax.training import train
from mambaswelu_jax.config_validation import ConfigError
from mambaswelu_jax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 8


pytestmark = pytest.mark.usefixtures("compilation_cache")


def tiny(tokenizer_path, **overrides):
  config = demo.get_config("tiny")
  config.data.tokenizer_path = tokenizer_path
  for key, value in overrides.items():
    block, field = key.split("__")
    config[block][field] = value
  return config


def params_of(result):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(result.state["params"]))]


@pytest.fixture(scope="module")
def straight(tokenizer_path, tmp_path_factory):
  """An uninterrupted run of NUM_STEPS steps."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, train.train_and_evaluate(tiny(tokenizer_path), workdir)


def test_end_to_end(straight):
  workdir, result = straight
  assert result.step == NUM_STEPS and not result.preempted
  m = result.final_metrics
  assert np.isfinite(m["validation_loss"])
  assert m["validation_perplexity"] == pytest.approx(np.exp(m["validation_loss"]))
  assert 0 < m["validation_bits_per_byte"] < 16
  assert m["validation_loss"] < np.log(512)  # it learned something in 8 steps
  assert "first train loss" in result.summary and "sample:" in result.summary


def test_workdir_layout(straight):
  workdir, _ = straight
  names = set(os.listdir(workdir))
  assert {"config.json", "tokenizer.model", "metrics.jsonl", "train.log", "tensorboard",
          "checkpoints", "snapshots", "final"} <= names
  assert not [n for n in names if n.endswith((".pkl", ".pickle"))]
  # Full states every checkpoint.every_steps (4), with the data iterator.
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [4, 8]
  step_dir = os.path.join(workdir, "checkpoints", "8")
  assert {"state", "data"} <= set(os.listdir(step_dir))
  data_state = json.loads(open(os.path.join(step_dir, "data", "process_0-of-1.json")).read())
  assert isinstance(data_state, dict) and data_state
  # Params-only snapshots kept forever, and the final params.
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "snapshots"))) == [4, 8]
  assert os.listdir(os.path.join(workdir, "snapshots", "4")).count("params") == 1
  assert os.listdir(os.path.join(workdir, "final")) == ["8"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  config = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert config["train"]["num_steps"] == NUM_STEPS


def test_max_to_keep(tokenizer_path, tmp_path):
  config = tiny(tokenizer_path, checkpoint__every_steps=2, checkpoint__max_to_keep=2,
                checkpoint__snapshot_every_steps=0, eval__every_steps=0, eval__sample_tokens=0)
  train.train_and_evaluate(config, str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [6, 8]
  assert os.listdir(tmp_path / "snapshots") == []


def test_metrics(straight):
  workdir, _ = straight
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == [2, 4, 6, 8]  # one object per written step
  for name in ("train_loss", "learning_rate", "grad_norm", "tokens_per_second", "step_time",
               "tflops_per_device", "mfu", "skipped_documents"):
    assert all(name in r for r in records), name
  for r in records[1:]:
    assert r["tokens_per_second"] > 0 and r["mfu"] > 0
  sites = [k for k in records[0] if k.startswith("swelu/")]
  assert sites and all(k.endswith(("/k", "/lambda")) for k in sites)
  evals = [r for r in records if "validation_loss" in r]
  assert [r["step"] for r in evals] == [4, 8]
  for name in ("validation_perplexity", "validation_bits_per_byte"):
    assert all(name in r for r in evals)
  # The warmup-cosine schedule: peak after 2 warmup steps, lower at the end.
  lrs = [r["learning_rate"] for r in records]
  assert lrs[0] == pytest.approx(3e-3 / 2, rel=1e-5) and lrs[-1] < lrs[1]
  log = open(os.path.join(workdir, "train.log")).read()
  assert "step 8/8" in log and "tokens/s" in log and "ETA" in log and "validation loss" in log


def test_resume_equals_straight(straight, tokenizer_path, tmp_path):
  """N steps, stop, resume, N steps == 2N steps straight: identical parameters."""
  _, reference = straight
  workdir = str(tmp_path)
  first = train.train_and_evaluate(tiny(tokenizer_path, train__stop_at_step=NUM_STEPS // 2),
                                   workdir)
  assert first.step == NUM_STEPS // 2
  assert not os.path.exists(os.path.join(workdir, "final"))
  second = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  assert second.step == NUM_STEPS
  for a, b in zip(params_of(reference), params_of(second)):
    np.testing.assert_array_equal(a, b)
  # The metrics file continues where it stopped: one record per step, same losses.
  ref = read_jsonl(os.path.join(straight[0], "metrics.jsonl"))
  got = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in got] == [r["step"] for r in ref]
  assert [r["train_loss"] for r in got] == [r["train_loss"] for r in ref]
  # A finished run resumed does nothing more.
  again = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  assert again.step == NUM_STEPS


def test_sigterm_saves_and_resumes(straight, tokenizer_path, tmp_path, monkeypatch):
  """SIGTERM in the middle of step 3: a checkpoint of step 3, a clean stop, an exact resume."""
  _, reference = straight
  calls = {"n": 0}
  real_split = train.split_batch

  def split_and_signal(batch, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_split(batch, *args, **kwargs)

  monkeypatch.setattr(train, "split_batch", split_and_signal)
  workdir = str(tmp_path)
  stopped = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  assert stopped.preempted and stopped.step == 3
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  monkeypatch.setattr(train, "split_batch", real_split)
  assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
  resumed = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  assert resumed.step == NUM_STEPS and not resumed.preempted
  for a, b in zip(params_of(reference), params_of(resumed)):
    np.testing.assert_array_equal(a, b)


def test_data_streams_checkpoint_round_trip(tmp_path):
  """A process's data streams as one iterator (run_data.Streams) through Orbax and
  grain's handler; the same checkpoint read as two processes would read it (each its
  own stream, out of `data_streams.stream_states`); a bare one-iterator state."""
  import grain
  import orbax.checkpoint as ocp
  from mambaswelu_jax.checkpointing import data_streams
  from mambaswelu_jax.data import run_data

  def stream(start):
    return iter(grain.MapDataset.range(start, start + 100).map(
        lambda i: {"inputs": np.full((2, 3), i, np.int32)}).to_iter_dataset())

  it = run_data.Streams([stream(0), stream(1000)], 0, 2)
  for _ in range(3):
    next(it)
  mngr = ocp.CheckpointManager(str(tmp_path), item_names=("data",))
  mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  want = next(it)
  fresh = run_data.Streams([stream(0), stream(1000)], 0, 2)
  mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  got = next(fresh)
  np.testing.assert_array_equal(got["inputs"], want["inputs"])
  assert got["inputs"].shape == (4, 3) and list(got["inputs"][:, 0]) == [3, 3, 1003, 1003]
  mngr.close()
  # As the second of two processes: stream 1 alone.
  states = data_streams.stream_states(str(tmp_path / "3" / "data"))
  assert len(states) == 2
  second = run_data.Streams([stream(1000)], 1, 2)
  second.set_stream_states(states)
  assert list(next(second)["inputs"][:, 0]) == [1003, 1003]
  with pytest.raises(ValueError, match="holds 2 data stream"):
    run_data.Streams([stream(0)], 0, 3).set_stream_states(states)
  # A checkpoint of one bare iterator (written before streams were saved as a list).
  bare = run_data.Streams([stream(0)], 0, 1)
  bare.set_state(json.dumps(states[0]).encode())
  assert list(next(bare)["inputs"][:, 0]) == [3, 3]


@pytest.mark.slow
def test_resume_with_two_data_streams(tokenizer_path, tmp_path):
  """Two data streams in one process (the two-process layout's data): the combined
  iterator checkpoints and resumes exactly."""
  straight_run = train.train_and_evaluate(
      tiny(tokenizer_path, train__data_streams=2, eval__sample_tokens=0), str(tmp_path / "a"))
  workdir = str(tmp_path / "b")
  train.train_and_evaluate(tiny(tokenizer_path, train__data_streams=2, eval__sample_tokens=0,
                                train__stop_at_step=NUM_STEPS // 2), workdir)
  data_state = json.loads(open(os.path.join(workdir, "checkpoints", "4", "data",
                                            "process_0-of-1.json")).read())
  assert len(data_state["streams"]) == 2
  resumed = train.train_and_evaluate(
      tiny(tokenizer_path, train__data_streams=2, eval__sample_tokens=0), workdir)
  for a, b in zip(params_of(straight_run), params_of(resumed)):
    np.testing.assert_array_equal(a, b)


def test_restore_skips_a_broken_checkpoint(straight, tokenizer_path, tmp_path):
  """The newest checkpoint does not restore: the one before it is used, with a warning."""
  import shutil
  workdir = str(tmp_path / "w")
  shutil.copytree(straight[0], workdir)
  shutil.rmtree(os.path.join(workdir, "final"))
  state_dir = os.path.join(workdir, "checkpoints", "8", "state")
  for name in os.listdir(state_dir):
    if name.startswith(("manifest", "_METADATA")):
      os.remove(os.path.join(state_dir, name))
  result = train.train_and_evaluate(tiny(tokenizer_path), workdir)
  assert result.step == NUM_STEPS
  log = open(os.path.join(workdir, "train.log")).read()
  assert "checkpoints/8 does not restore, skipping it" in log
  assert "resumed from" in log and "checkpoints/4" in log


def test_workdir_of_another_config_is_refused(straight, tokenizer_path):
  workdir, _ = straight
  with pytest.raises(run_config.WorkdirConfigMismatch, match="allow_config_change"):
    train.train_and_evaluate(tiny(tokenizer_path, train__learning_rate=1e-2), workdir)


def test_vocab_mismatch_names_the_key(tokenizer_path, tmp_path):
  config = tiny(tokenizer_path)
  config.model.vocab_size = 600
  with pytest.raises(ConfigError, match=r"'model.vocab_size' = 600 .* \(512 tokens\).*"
                     r"--config.model.vocab_size=512"):
    train.train_and_evaluate(config, str(tmp_path))


def test_restore_params_for_tools(straight):
  workdir, result = straight
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          result.state["params"])
  for kind, want in (("final", 8), ("snapshots", 8), ("checkpoints", 8), ("auto", 8)):
    step, params = orbax_store.restore_params(workdir, abstract, kind=kind)
    assert step == want
    for a, b in zip(jax.tree.leaves(params), params_of(result)):
      np.testing.assert_array_equal(np.asarray(a), b)
  step, _ = orbax_store.restore_params(workdir, abstract, step=4, kind="snapshots")
  assert step == 4


# --- devices and processes ---------------------------------------------------------

_DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from configs import demo
    from mambaswelu_jax.training import train
    from mambaswelu_jax.metrics import read_jsonl
    tokenizer_path, out = sys.argv[1], sys.argv[2]
    losses = {}
    for n in (2, 4):
      config = demo.get_config("tiny")
      config.data.tokenizer_path = tokenizer_path
      config.eval.sample_tokens = 0
      config.eval.batch_per_device = 4 // n   # the same validation batches everywhere
      result = train.train_and_evaluate(config, f"{out}/{n}", devices=jax.devices()[:n])
      losses[n] = {"train": [r["train_loss"] for r in read_jsonl(f"{out}/{n}/metrics.jsonl")],
                   "validation": result.final_metrics["validation_loss"]}
    json.dump(losses, open(f"{out}/losses.json", "w"))
""")


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


@pytest.mark.slow  # three runs (~48 s on 2 cores); the CUDA lowering test keeps a 2-device step in CI
def test_one_two_four_devices_same_losses(straight, tokenizer_path, tmp_path):
  """Global batch 8 as 1x(2x4 accumulation) (this process), 2x(2x2) and 4x(2x1) (a
  subprocess with 4 CPU devices): the same trajectory."""
  workdir, one = straight
  r = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, tokenizer_path, str(tmp_path)],
                     cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=400)
  assert r.returncode == 0, r.stderr[-4000:]
  losses = json.load(open(tmp_path / "losses.json"))
  train_one = [r["train_loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  for n in ("2", "4"):
    np.testing.assert_allclose(losses[n]["train"], train_one, rtol=2e-5)
    np.testing.assert_allclose(losses[n]["validation"], one.final_metrics["validation_loss"],
                               rtol=2e-5)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tokenizer_path, tmp_path):
  """Two jax.distributed processes (one CPU device each) on localhost train exactly
  like one process with two devices. Both read the data as two streams
  (train.data_streams=2), so they see the same batches."""
  common = ["--config=configs/demo.py:tiny", f"--config.data.tokenizer_path={tokenizer_path}",
            "--config.eval.sample_tokens=0", "--config.train.data_streams=2"]
  one = subprocess.run([sys.executable, "-m", "mambaswelu_jax.main", *common,
                        f"--workdir={tmp_path / 'one'}"], cwd=ROOT, env=_env(2),
                       capture_output=True, text=True, timeout=400)
  assert one.returncode == 0, one.stderr[-4000:]
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "mambaswelu_jax.main", *common,
                             f"--workdir={tmp_path / 'two'}",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=ROOT, env=_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  a = read_jsonl(str(tmp_path / "one" / "metrics.jsonl"))
  b = read_jsonl(str(tmp_path / "two" / "metrics.jsonl"))
  assert [r["step"] for r in a] == [r["step"] for r in b]
  np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a],
                             rtol=2e-5)
  va = [r["validation_loss"] for r in a if "validation_loss" in r]
  vb = [r["validation_loss"] for r in b if "validation_loss" in r]
  np.testing.assert_allclose(vb, va, rtol=2e-5)
  assert os.listdir(tmp_path / "two" / "checkpoints" / "8" / "data") and sorted(
      n for n in os.listdir(tmp_path / "two" / "checkpoints" / "8" / "data")
      if n.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]


def _main(workdir, processes: int, devices: int, *flags):
  """`python -m mambaswelu_jax.main` on the tiny demo as `processes` jax.distributed
  processes (one when 1) of `devices` CPU devices each; returns their stderr."""
  common = ["--config=configs/demo.py:tiny", "--config.eval.sample_tokens=0",
            f"--workdir={workdir}", *flags]
  port = _free_port()
  extra = (lambda i: [f"--coordinator_address=localhost:{port}",
                      f"--num_processes={processes}", f"--process_id={i}"]
           ) if processes > 1 else (lambda i: [])
  procs = [subprocess.Popen([sys.executable, "-m", "mambaswelu_jax.main", *common, *extra(i)],
                            cwd=ROOT, env=_env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(processes)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return outs[0][1]


def _final_params(workdir):
  from mambaswelu_jax.checkpointing import restore  # pylint: disable=import-outside-toplevel
  run = restore.load_run(workdir, "final", devices=jax.devices()[:1])
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(run.params))]


@pytest.mark.slow
def test_resume_on_another_process_count(tokenizer_path, tmp_path):
  """A run checkpointed by 2 processes continues on 1 (one device: the gradient
  accumulation doubles), and one of 1 process with train.data_streams=2 continues on
  2: the same batches (every data stream's hashes in the data-order logs), and the
  uninterrupted 2-process run's losses and final parameters within float32
  reduction-order noise. A run of 1 stream cannot go to 2 processes: refused, nothing
  written."""
  from mambaswelu_jax.data.order import read_stream_order  # pylint: disable=import-outside-toplevel
  tok = f"--config.data.tokenizer_path={tokenizer_path}"
  straight, two_one, one_two = (str(tmp_path / n) for n in ("straight", "two_one", "one_two"))
  _main(straight, 2, 1, tok)                                 # data_streams 0: 2 streams
  _main(two_one, 2, 1, tok, "--config.train.stop_at_step=4")
  err = _main(two_one, 1, 1, tok)
  assert "written by another process count" in err
  _main(one_two, 1, 2, tok, "--config.train.data_streams=2", "--config.train.stop_at_step=4")
  _main(one_two, 2, 1, tok, "--config.train.data_streams=2")
  want_order = read_stream_order(straight)
  want_loss = [r["train_loss"] for r in read_jsonl(os.path.join(straight, "metrics.jsonl"))]
  for workdir in (two_one, one_two):
    order = read_stream_order(workdir)
    assert sorted(order) == list(range(1, NUM_STEPS + 1))
    for step, streams in order.items():
      assert set(streams) == {"0", "1"}
      assert all(set(h) == set(want_order[step][s]) for s, h in streams.items()), step
    loss = [r["train_loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    for a, b in zip(_final_params(workdir), _final_params(straight)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # One stream (a 1-process run's default) cannot be shared by 2 processes.
  single = str(tmp_path / "single")
  _main(single, 1, 1, tok, "--config.train.stop_at_step=4")
  before = sorted(os.listdir(single))
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "mambaswelu_jax.main",
                             "--config=configs/demo.py:tiny", tok, f"--workdir={single}",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=ROOT, env=_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [2, 2], outs
  assert "1 data stream(s)" in outs[0][1] and "resume it on 1 process(es)" in outs[0][1]
  assert sorted(os.listdir(single)) == before


@pytest.mark.slow
def test_a_killed_process_ends_the_other_and_the_rerun_resumes(tokenizer_path, tmp_path):
  """SIGKILL one of two jax.distributed processes after a checkpoint: the other does not
  wait in a collective forever but exits with an error within --heartbeat_timeout_s
  (and a margin); running the job again resumes from the newest checkpoint."""
  workdir = str(tmp_path / "w")
  flags = [f"--config.data.tokenizer_path={tokenizer_path}", "--config.eval.sample_tokens=0",
           "--config.train.num_steps=400", "--config.checkpoint.every_steps=10",
           "--config.checkpoint.snapshot_every_steps=0", "--config.eval.every_steps=0",
           "--heartbeat_timeout_s=10"]
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "mambaswelu_jax.main",
                             "--config=configs/demo.py:tiny", f"--workdir={workdir}", *flags,
                             f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=ROOT, env=_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  deadline = time.time() + 400
  while not _saved_steps(workdir) and time.time() < deadline:
    time.sleep(0.1)
  assert _saved_steps(workdir), procs[0].stderr.read()[-3000:] if procs[0].poll() else ""
  procs[1].kill()
  killed = time.time()
  _, err = procs[0].communicate(timeout=300)
  ended = time.time() - killed
  assert procs[0].returncode != 0, err[-3000:]
  assert ended < 120, ended
  print(f"the surviving process exited {procs[0].returncode} {ended:.1f} s after the kill")
  newest = _saved_steps(workdir)[-1]
  err = _main(workdir, 2, 1, *flags, f"--config.train.stop_at_step={newest + 10}")
  assert f"resumed from {workdir}/checkpoints/" in err, err[-3000:]
  assert _saved_steps(workdir)[-1] == newest + 10


def _saved_steps(workdir):
  from mambaswelu_jax import workdir as layout  # pylint: disable=import-outside-toplevel
  return layout.steps(workdir)


def wait_for_metrics(workdir, records: int, timeout: float = 300) -> None:
  """Until a running trainer's metrics.jsonl holds `records` step records (or timeout)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path) and len(read_jsonl(path)) >= records:
      return
    time.sleep(0.2)


@pytest.mark.slow
def test_cli_sigterm_exit_status(tokenizer_path, tmp_path):
  """`main` on SIGTERM: a checkpoint of the current step, exit status 143, then resume."""
  workdir = tmp_path / "w"
  args = [sys.executable, "-m", "mambaswelu_jax.main", "--config=configs/demo.py:tiny",
          f"--workdir={workdir}", f"--config.data.tokenizer_path={tokenizer_path}",
          "--config.train.num_steps=100000", "--config.train.log_every_steps=1",
          "--config.eval.every_steps=0", "--config.eval.sample_tokens=0"]
  proc = subprocess.Popen(args, cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  wait_for_metrics(workdir, 3)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == train.PREEMPTED_EXIT_CODE, err[-3000:]
  assert "stopped by SIGTERM" in out
  saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
  last = read_jsonl(str(workdir / "metrics.jsonl"))[-1]["step"]
  assert saved[-1] == last >= 3  # the step it was on when the signal came


def test_peak_flops_by_device_kind():
  from types import SimpleNamespace
  from mambaswelu_jax.training import throughput
  kinds = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H200": 989.0,
           "NVIDIA A100-SXM4-80GB": 312.0, "TPU v5 lite": 197.0, "TPU v4": 275.0}
  for kind, want in kinds.items():
    assert throughput.peak_tflops(SimpleNamespace(device_kind=kind, platform="gpu"))[0] == want
  assert throughput.peak_tflops(SimpleNamespace(device_kind="NVIDIA H100", platform="gpu"),
                             override=500.0) == (500.0, "train.peak_tflops_per_device")
  cpu, source = throughput.peak_tflops(SimpleNamespace(device_kind="cpu", platform="cpu"))
  assert cpu > 0 and "CPU" in source
  unknown, source = throughput.peak_tflops(SimpleNamespace(device_kind="Mystery", platform="gpu"))
  assert np.isnan(unknown) and "peak_tflops_per_device" in source


def _fake_slimpajama(root):
  """A SlimPajama-shaped directory (train / validation / test .jsonl.zst) of stdlib text."""
  import zstandard
  from mambaswelu_jax.data import sources
  docs = list(sources.make_source({"source": "embedded"}).documents("train"))
  n, sets = len(docs), ["RedPajamaWikipedia", "RedPajamaGithub", "RedPajamaBook"]
  for split, lo, hi, name in (("train", 0, n - 200, "example_train_0"),
                              ("validation", n - 200, n - 100, "example_holdout_0"),
                              ("test", n - 100, n, "example_holdout_0")):
    d = os.path.join(root, split, "chunk1")
    os.makedirs(d)
    lines = "".join(json.dumps({"text": x["text"], "meta": {"redpajama_set_name": sets[i % 3]}})
                    + "\n" for i, x in enumerate(docs[lo:hi]))
    with open(os.path.join(d, name + ".jsonl.zst"), "wb") as f:
      f.write(zstandard.ZstdCompressor().compress(lines.encode()))


@pytest.mark.slow
def test_run_config_smoke_trains(tmp_path):
  """`configs/slimpajama_chinchilla.py:smoke` on a SlimPajama-shaped directory: its own
  tokenizer, accumulation, evaluation, checkpoints, snapshots and final params."""
  from configs import slimpajama_chinchilla
  _fake_slimpajama(str(tmp_path / "sp"))
  config = slimpajama_chinchilla.get_config("smoke")
  config.data.data_dir = str(tmp_path / "sp")
  result = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert result.step == 20 and result.final_metrics["validation_loss"] < np.log(4096)
  assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["10", "20"]
  assert sorted(os.listdir(tmp_path / "w" / "snapshots")) == ["10", "20"]


def test_bench_train_times_the_trainers_step():
  """`python -m mambaswelu_jax.cli.bench_train`'s measurement runs (the trainer's own step on
  synthetic tokens) and its figures agree with each other."""
  from mambaswelu_jax.cli import bench_train  # pylint: disable=import-outside-toplevel
  config = demo.get_config("tiny")
  r = bench_train.benchmark(config, 2)
  assert r["parameters"] > 0 and r["accumulation"] == 4 and np.isfinite(r["loss"])
  assert r["tokens_per_second"] == pytest.approx(8 * 32 / r["step_s"])
  assert r["mfu"] == pytest.approx(r["tflops_per_device"] / r["peak_tflops_per_device"])
