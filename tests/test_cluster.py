"""The study on a real SLURM: jobs submitted through `launch_study.py --cluster=slurm`.

A one-node SLURM (tests/cluster/start_slurm.sh: Debian's slurmctld, slurmd,
slurm-client and munge) runs real batch jobs of a tiny toy run (CPU, JAX processes
that find each other through SLURM's environment): a 2-process run that finishes; the
same run requeued once after its first checkpoint, which finishes with exactly one
resume and the uninterrupted run's parameters; the run continued on 1 process after 2,
and on 2 after 1; pre-tokenization as a 2-task array job. Marked `cluster` (out of the default
selection): `python -m pytest -m cluster tests/test_cluster.py`. Skipped, saying why,
where SLURM cannot be installed or started.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import launch_study
from mambaswelu_jax.checkpointing import restore
from study_lib import runs as runs_lib
from mambaswelu_jax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = os.path.join(ROOT, "tests", "cluster", "start_slurm.sh")
LAUNCH = os.path.join(ROOT, "experiments", "launch_study.py")
RUN = "toy_mixture_short"
NUM_STEPS = 160

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def slurm():
  """A running one-node SLURM, or the tests skip with the reason."""
  try:
    r = subprocess.run(["sh", START], capture_output=True, text=True, timeout=900)
  except (OSError, subprocess.SubprocessError) as e:
    pytest.skip(f"SLURM cannot be started here: {e}")
  if r.returncode != 0:
    pytest.skip(f"SLURM cannot be installed or started here: "
                f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
  return True


@pytest.fixture(scope="module")
def job_env(tmp_path_factory):
  """The environment sbatch exports to the jobs: CPU JAX, the worktree first on the path,
  a compilation cache shared by the jobs (each job compiles the same step)."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def trainer_flags(tokenizer_path, num_steps=NUM_STEPS):
  return ["--", f"--config.data.tokenizer_path={tokenizer_path}",
          "--config.model.vocab_size=512", f"--config.train.num_steps={num_steps}",
          "--config.train.warmup_steps=2", "--config.train.micro_batch_per_device=4",
          "--config.train.log_every_steps=5", "--config.checkpoint.every_steps=20",
          "--config.checkpoint.snapshot_every_steps=0", "--config.eval.every_steps=0",
          "--config.eval.sample_tokens=0"]


def launch(root, env, *args, timeout=900):
  return subprocess.run([sys.executable, LAUNCH, "--cluster=slurm", f"--root={root}",
                         "--scale=toy", f"--runs={RUN}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def final_params(workdir):
  run = restore.load_run(workdir, "final")
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(run.params))]


def history(root):
  path = os.path.join(root, "pids", f"{RUN}.history")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def straight(slurm, tokenizer_path, job_env, tmp_path_factory):
  """The uninterrupted 2-process run, submitted and waited for."""
  root = str(tmp_path_factory.mktemp("straight"))
  t0 = time.time()
  r = launch(root, job_env, "--tasks_per_node=2", "--wait", *trainer_flags(tokenizer_path))
  return root, r, time.time() - t0


def test_two_process_run_finishes(straight):
  root, r, seconds = straight
  log = open(os.path.join(root, "logs", f"{RUN}.log"), encoding="utf-8").read()
  assert r.returncode == 0, r.stdout + r.stderr + log[-3000:]
  assert "submitted job" in r.stdout and "trainer exit status 0" in r.stdout
  assert "jax.distributed: process 0 of 2" in log and "jax.distributed: process 1 of 2" in log
  assert os.path.exists(os.path.join(root, "slurm", f"{RUN}.sbatch"))
  job = json.load(open(os.path.join(root, "slurm", f"{RUN}.json"), encoding="utf-8"))
  assert job["job_id"].isdigit()
  steps = [rec["step"] for rec in read_jsonl(os.path.join(root, RUN, "metrics.jsonl"))]
  assert steps[-1] == NUM_STEPS
  print(f"2-process toy run of {NUM_STEPS} steps through SLURM: {seconds:.0f} s")


def test_finished_run_is_left_alone(straight, job_env, tokenizer_path):
  root = straight[0]
  r = launch(root, job_env, "--tasks_per_node=2", *trainer_flags(tokenizer_path))
  assert r.returncode == 0 and "finished" in r.stdout and "not submitted" in r.stdout, r.stdout


def test_requeued_once_equals_uninterrupted(straight, slurm, tokenizer_path, job_env,
                                            tmp_path):
  """`scontrol requeue` after the first checkpoint: SIGTERM reaches every process, they
  save the current step and exit 143; SLURM starts the job again, which resumes once
  and ends with the uninterrupted run's parameters."""
  root = str(tmp_path)
  r = launch(root, job_env, "--tasks_per_node=2", *trainer_flags(tokenizer_path))
  assert r.returncode == 0, r.stdout + r.stderr
  job_id = json.load(open(os.path.join(root, "slurm", f"{RUN}.json"), encoding="utf-8"))["job_id"]
  # A second launch while the job is queued or running is refused.
  again = launch(root, job_env, "--tasks_per_node=2", *trainer_flags(tokenizer_path))
  assert again.returncode == 1 and "refused" in again.stdout, again.stdout
  first_ckpt = os.path.join(root, RUN, "checkpoints", "20")
  deadline = time.time() + 600
  while not os.path.isdir(first_ckpt) and time.time() < deadline:
    time.sleep(0.2)
  assert os.path.isdir(first_ckpt), open(os.path.join(root, "logs", f"{RUN}.log")).read()[-3000:]
  t_requeue = time.time()
  subprocess.run(["scontrol", "requeue", job_id], check=True)
  lines = []
  code = launch_study.wait_jobs([runs_lib.paths(root, RUN)], out=lines.append, poll=1,
                                timeout=900)
  log = open(os.path.join(root, "logs", f"{RUN}.log"), encoding="utf-8").read()
  assert code == 0, "\n".join(lines) + log[-4000:]
  assert "requeued 1x" in lines[-1], lines
  events = [e["event"] for e in history(root)]
  assert events.count("start") == 2, events      # the first run and exactly one restart
  assert log.count("resumed from") == 2, log[-3000:]   # once per process, one resume
  assert "stopped by SIGTERM" in log
  stopped = sorted(int(s) for s in os.listdir(os.path.join(root, RUN, "checkpoints")))
  print(f"requeue -> finished in {time.time() - t_requeue:.0f} s; checkpoints {stopped}")
  # The resumed run equals the uninterrupted one. (A logged train_loss is the mean over
  # the steps since the last log line: the first line after a resume mid-interval
  # averages fewer steps, so it is left out.)
  resumed_at = int(log.split("resumed from ")[1].split("/checkpoints/")[1].split()[0])
  partial = -(-resumed_at // 5) * 5 if resumed_at % 5 else None
  a = read_jsonl(os.path.join(straight[0], RUN, "metrics.jsonl"))
  b = read_jsonl(os.path.join(root, RUN, "metrics.jsonl"))
  la = {rec["step"]: rec["train_loss"] for rec in a if "train_loss" in rec}
  lb = {rec["step"]: rec["train_loss"] for rec in b if "train_loss" in rec}
  common = sorted((set(la) & set(lb)) - {partial})
  assert common[-1] == NUM_STEPS
  np.testing.assert_allclose([lb[s] for s in common], [la[s] for s in common], rtol=1e-6)
  for x, y in zip(final_params(os.path.join(root, RUN)),
                  final_params(os.path.join(straight[0], RUN))):
    np.testing.assert_array_equal(x, y)


def test_resume_on_another_process_count(straight, tokenizer_path, job_env, tmp_path):
  """A run checkpointed by a 2-process job continues as a 1-process job, and one of 1
  process (train.data_streams=2) as a 2-process job: every data stream feeds every step
  what it fed the uninterrupted 2-process run, which the losses and final parameters
  equal within float32 reduction-order noise."""
  from mambaswelu_jax.data.order import read_stream_order  # pylint: disable=import-outside-toplevel
  stop = ["--config.train.stop_at_step=40"]
  for name, first, then, extra in (("two_one", 2, 1, []),
                                   ("one_two", 1, 2, ["--config.train.data_streams=2"])):
    root = str(tmp_path / name)
    for tasks, more in ((first, stop), (then, [])):
      r = launch(root, job_env, f"--tasks_per_node={tasks}", "--wait",
                 *trainer_flags(tokenizer_path), *extra, *more)
      log = open(os.path.join(root, "logs", f"{RUN}.log"), encoding="utf-8").read()
      assert r.returncode == 0, r.stdout + r.stderr + log[-3000:]
    assert "written by another process count" in log
    want = read_stream_order(os.path.join(straight[0], RUN))
    got = read_stream_order(os.path.join(root, RUN))
    assert sorted(got) == list(range(1, NUM_STEPS + 1))
    for step, streams in got.items():
      assert set(streams) == {"0", "1"}
      assert all(set(h) == set(want[step][s]) for s, h in streams.items()), (name, step)
    a = {rec["step"]: rec["train_loss"]
         for rec in read_jsonl(os.path.join(straight[0], RUN, "metrics.jsonl"))}
    b = {rec["step"]: rec["train_loss"] for rec in read_jsonl(os.path.join(root, RUN,
                                                                           "metrics.jsonl"))}
    assert sorted(b) == sorted(a)
    np.testing.assert_allclose([b[s] for s in sorted(a)], [a[s] for s in sorted(a)],
                               rtol=1e-4)
    # 120 AdamW steps after the switch grow the summation-order differences (the
    # accumulation count changes): single elements whose gradients are near zero move
    # by up to a fraction of a step (measured, deterministically: 7.9e-5 for 2 -> 1 and
    # 6.8e-4 for 1 -> 2, the learning rate being 3e-3; per tensor 1.6e-4 and 4.4e-3
    # relative, the largest in a small tensor). The same batches are proved by the
    # streams' hashes and the losses above; this bounds the parameters at one step.
    pairs = list(zip(final_params(os.path.join(root, RUN)),
                     final_params(os.path.join(straight[0], RUN))))
    element = max(float(np.max(np.abs(x - y))) for x, y in pairs)
    tensor = max(float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12))
                 for x, y in pairs)
    print(f"{name}: parameters differ from the uninterrupted run's by at most {element:.2e} "
          f"per element, {tensor:.2e} relative per tensor")
    assert tensor < 2e-2 and element < 3e-3, (tensor, element)


def test_pretokenize_as_a_slurm_array(slurm, small_tokenizer, job_env, tmp_path):
  """Pre-tokenization spread over a 2-task SLURM array (each task its SlimPajama files,
  `--task_index=-1 --num_tasks=0`): the readers join the tasks, and the tokens are
  those of a 2-task run made here."""
  from mambaswelu_jax.cli import pretokenize as cli_pretokenize  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.data import pretokenize  # pylint: disable=import-outside-toplevel
  from tests.slimpajama_files import write_slimpajama  # pylint: disable=import-outside-toplevel
  write_slimpajama(str(tmp_path / "sp"))
  small_tokenizer.save(str(tmp_path / "tok.model"))
  args = ["--source=slimpajama", f"--data_dir={tmp_path / 'sp'}",
          f"--tokenizer={tmp_path / 'tok.model'}", "--splits=train"]
  command = " ".join([sys.executable, "-m", "mambaswelu_jax.cli.pretokenize", *args,
                      f"--output_dir={tmp_path / 'array'}", "--num_tasks=0",
                      "--task_index=-1"])
  r = subprocess.run(["sbatch", "--wait", "--array=0-1", f"--chdir={ROOT}",
                      f"--output={tmp_path}/array_%a.log", f"--wrap={command}"],
                     env=job_env, capture_output=True, text=True, timeout=600)
  logs = "".join(open(p, encoding="utf-8").read() for p in tmp_path.glob("array_*.log"))
  assert r.returncode == 0, r.stdout + r.stderr + logs
  assert sorted(os.listdir(tmp_path / "array" / "train")) == [
      "task_00000-of-00002", "task_00001-of-00002"]
  for i in range(2):
    cli_pretokenize.main([*args, f"--output_dir={tmp_path / 'here'}", "--num_tasks=2",
                      f"--task_index={i}"])
  a = pretokenize.TokenShards(str(tmp_path / "array" / "train"))
  b = pretokenize.TokenShards(str(tmp_path / "here" / "train"))
  assert a.num_tokens == b.num_tokens > 0 and a.skipped == b.skipped
  np.testing.assert_array_equal(a.read(0, a.num_tokens), b.read(0, b.num_tokens))
