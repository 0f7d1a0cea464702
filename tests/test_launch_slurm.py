"""launch_study.py --cluster=slurm without a cluster: the generated script (--dry_run),
the refusal of a run whose job is queued, and the one-line errors. The real jobs are
in tests/test_cluster.py (-m cluster)."""

import json
import os

import launch_study
from study_lib import runs as runs_lib
from study_lib import slurm as slurm_lib


def test_dry_run_prints_a_resubmittable_script(tmp_path, capsys):
  code = launch_study.main(["--cluster=slurm", f"--root={tmp_path}", "--scale=toy",
                            "--runs=toy_mixture_short", "--nodes=2", "--tasks_per_node=4",
                            "--gpus_per_node=4", "--time=1:00:00", "--partition=gpu",
                            "--sbatch_arg=--account=abc", "--dry_run", "--",
                            "--config.train.log_every_steps=5"])
  out = capsys.readouterr().out
  assert code == 0
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
               "#SBATCH --time=1:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=abc",
               "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
               f"#SBATCH --output={tmp_path}/logs/toy_mixture_short.log",
               "srun --kill-on-bad-exit=1", "--distributed", "--config.train.log_every_steps=5",
               "scontrol requeue", "--config=configs/toy_study.py:mixture_short"):
    assert line in out, line
  assert not os.path.exists(tmp_path / "slurm")  # a dry run writes nothing


def test_active_job_is_refused(tmp_path, monkeypatch, capsys):
  p = runs_lib.paths(str(tmp_path), "toy_mixture_short")
  os.makedirs(os.path.dirname(slurm_lib.job_path(p)))
  with open(slurm_lib.job_path(p), "w", encoding="utf-8") as f:
    json.dump({"job_id": "42"}, f)
  monkeypatch.setattr(slurm_lib, "job_fields",
                      lambda job: {"JobState": "PENDING", "Reason": "Priority",
                                   "NodeList": "", "Restarts": "0", "ExitCode": "0:0"})
  monkeypatch.setattr(slurm_lib, "available", lambda: None)
  code = launch_study.main(["--cluster=slurm", f"--root={tmp_path}", "--scale=toy",
                            "--runs=toy_mixture_short"])
  out = capsys.readouterr().out
  assert code == 1
  assert "refused: job 42 is pending (Priority)" in out


def test_bad_process_counts_are_usage_errors(tmp_path, capsys):
  assert launch_study.main(["--cluster=slurm", f"--root={tmp_path}", "--nodes=0"]) == 2
  assert "--nodes" in capsys.readouterr().err


def test_a_process_count_that_cannot_share_the_streams_is_refused(tmp_path, capsys):
  """A checkpoint holds the state of every data stream: the run resumes on any process
  count that divides its streams (2 -> 1 or 2), and a count that does not (3) is
  refused by the launcher (and by main) before anything is written."""
  from mambaswelu_jax.checkpointing import data_streams
  wd = tmp_path / "toy_mixture_short"
  data = wd / "checkpoints" / "20" / "data"
  data.mkdir(parents=True)
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_text("{}")
  (wd / "config.json").write_text("{}")
  assert data_streams.newest_checkpoint_streams(str(wd)) == (20, 2, 2)
  assert data_streams.mismatch(str(wd), 2) is None
  assert data_streams.mismatch(str(wd), 1) is None
  assert "2 data stream(s)" in data_streams.mismatch(str(wd), 3)
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  code = launch_study.launch_slurm(str(tmp_path), runs_lib.select(runs_lib.TOY,
                                                                   "toy_mixture_short"),
                                   slurm_lib.Resources(tasks_per_node=3), dry_run=True)
  assert code == 1 and "refused" in capsys.readouterr().out
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before
