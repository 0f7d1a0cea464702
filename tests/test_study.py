"""The study tooling: launcher, monitor, power-law fit, report builder (issue 7).

Everything here runs on synthetic workdirs and stand-in processes (a few seconds); the
end-to-end toy study, which trains for real, is `test_toy_study_end_to_end` (slow).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

# experiments/ is on the test path (pytest.ini), as for `python experiments/x.py`.
import compare
import launch_study
import monitor
from study_lib import collect
from study_lib import powerlaw
from study_lib import runs as runs_lib
from study_lib import status as status_lib
from study_lib import synthetic

SPEC = runs_lib.RunSpec("toy_mixture_long", "configs/toy_study.py", "mixture_long",
                        role="general_long")


@pytest.fixture
def fake_python(tmp_path):
  """A stand-in interpreter: `fake -m mambaswelu_jax.main ...` sleeps (a long 'run')."""
  path = tmp_path / "fake_python"
  path.write_text("#!/bin/sh\nsleep 60\n")
  path.chmod(0o755)
  return str(path)


def _kill(root, name):
  p = runs_lib.paths(root, name)
  pid = runs_lib.running_pid(p)
  if pid is not None:
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    for _ in range(100):
      if runs_lib.running_pid(p) is None:
        break
      time.sleep(0.05)


# ----------------------------------------------------------------------------
# Launcher.
# ----------------------------------------------------------------------------


def test_launch_detaches_records_pid_and_refuses_double_start(tmp_path, fake_python):
  root = str(tmp_path / "study")
  out = []
  try:
    code = launch_study.launch(root, [SPEC], ["0,1"], python=fake_python, out=out.append)
    assert code == 0 and "started" in out[-1]
    p = runs_lib.paths(root, SPEC.name)
    info = json.load(open(p.pidfile))
    pid = runs_lib.running_pid(p)
    assert pid == info["pid"] and info["devices"] == "0,1"
    assert os.getsid(pid) == pid                      # own session: survives the terminal
    with open(f"/proc/{pid}/environ", "rb") as f:
      assert b"CUDA_VISIBLE_DEVICES=0,1" in f.read().split(b"\0")
    assert os.path.exists(p.log)
    # A second launch is refused, and says why.
    out.clear()
    assert launch_study.launch(root, [SPEC], ["0,1"], python=fake_python, out=out.append) == 1
    assert "refused" in out[0] and str(pid) in out[0]
    assert runs_lib.running_pid(p) == pid              # the first one is untouched
    # Even without its pid file, a live process training the workdir is found.
    os.remove(p.pidfile)
    assert launch_study.launch(root, [SPEC], ["0,1"], python=fake_python,
                               out=out.append) == 1
  finally:
    _kill(root, SPEC.name)


def test_dead_run_restarts_from_its_checkpoint_and_finished_run_is_left(tmp_path, fake_python):
  root = str(tmp_path / "study")
  wd = os.path.join(root, SPEC.name)
  os.makedirs(os.path.join(wd, "checkpoints", "300"))
  os.makedirs(os.path.join(wd, "checkpoints", "200"))
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump({"train": {"num_steps": 1000}}, f)
  plan = launch_study.plan(root, [SPEC], [None])
  assert plan[0][3] == "restart" and "checkpoint 300" in plan[0][4]
  out = []
  try:
    assert launch_study.launch(root, [SPEC], [None], python=fake_python, out=out.append) == 0
    assert "restarted" in out[0]
    hist = runs_lib.read_history(runs_lib.paths(root, SPEC.name))
    assert hist[-1]["event"] == "restart"
  finally:
    _kill(root, SPEC.name)
  os.makedirs(os.path.join(wd, "final", "1000"))
  got = launch_study.plan(root, [SPEC], [None])[0]
  assert got[3] == "skip", got


def test_dry_run_prints_pinned_detached_commands_and_starts_nothing(tmp_path, capsys):
  root = str(tmp_path / "study")
  assert launch_study.main([f"--root={root}", "--dry_run"]) == 0
  text = capsys.readouterr().out
  for spec, dev in zip(runs_lib.STUDY, ("0,1", "2,3", "4,5")):
    line = next(l for l in text.splitlines() if f"--workdir={root}/{spec.name}" in l)
    assert f"CUDA_VISIBLE_DEVICES={dev} setsid nohup" in line and spec.config in line
  assert not os.path.exists(os.path.join(root, "pids"))
  # Runs named individually keep their default pair; extra flags pass through.
  assert launch_study.main([f"--root={root}", "--dry_run", "--runs=wikipedia_llama", "--",
                            "--config.data.data_dir=/d"]) == 0
  text = capsys.readouterr().out
  assert "CUDA_VISIBLE_DEVICES=4,5" in text and "--config.data.data_dir=/d" in text
  assert "slimpajama" not in text
  assert launch_study.main([f"--root={root}", "--dry_run", "--devices=0,1:2,3"]) == 2
  assert "2 device group(s) for 3 run(s)" in capsys.readouterr().err


def _command_lines(text):
  """{run: its command line} from a dry run's output."""
  lines = text.splitlines()
  return {l.split(":")[0]: lines[i + 1] for i, l in enumerate(lines) if ": would " in l}


def test_run_flag_reaches_only_its_runs_and_wins_over_the_common_flags(tmp_path, capsys):
  root = str(tmp_path / "study")
  assert launch_study.main([
      f"--root={root}", "--dry_run",
      "--run_flag=wikipedia_llama:--config.data.data_dir=/data/tfds",
      "--run_flag=slimpajama_llama,slimpajama_chinchilla:--config.data.data_dir=hf://c/S",
      "--run_flag=wikipedia_llama:--config.data.source=wikipedia",
      "--", "--config.data.tokenizer_path=/t.model", "--config.data.data_dir=/common"]) == 0
  cmds = _command_lines(capsys.readouterr().out)
  assert sorted(cmds) == sorted(s.name for s in runs_lib.STUDY)
  wiki = cmds["wikipedia_llama"].split()
  # The common flags first, then the run's own in the order given: the last one wins.
  i = wiki.index("--config.data.tokenizer_path=/t.model")
  assert wiki[i:i + 4] == ["--config.data.tokenizer_path=/t.model",
                           "--config.data.data_dir=/common", "--config.data.data_dir=/data/tfds",
                           "--config.data.source=wikipedia"]
  for name in ("slimpajama_llama", "slimpajama_chinchilla"):
    assert cmds[name].split()[i + 2] == "--config.data.data_dir=hf://c/S"
    assert "/data/tfds" not in cmds[name] and "source=wikipedia" not in cmds[name]
  # A run left out by --runs ignores its flags; the selected one keeps its own.
  assert launch_study.main([f"--root={root}", "--dry_run", "--runs=slimpajama_llama",
                            "--run_flag=wikipedia_llama:--config.data.data_dir=/data/tfds"]) == 0
  assert "/data/tfds" not in capsys.readouterr().out
  assert not os.path.exists(os.path.join(root, "pids"))


@pytest.mark.parametrize("argv, says", [
    (["--run_flag=wikipedia:--config.data.data_dir=/d"], "unknown run(s) wikipedia"),
    (["--run_flag=wikipedia_llama,nope:--x=1"], "unknown run(s) nope"),
    (["--run_flag=wikipedia_llama:data.data_dir=/d"], "expected RUN[,RUN...]:--FLAG"),
    (["--run_flag=--config.data.data_dir=/d"], "expected RUN[,RUN...]:--FLAG"),
    (["--runs=wikipedia"], "unknown run(s)"),
    (["--scale=toy", "--run_flag=wikipedia_llama:--x=1"], "toy_single_long"),
])
def test_bad_run_names_and_flags_are_usage_errors(tmp_path, capsys, argv, says):
  root = str(tmp_path / "study")
  assert launch_study.main([f"--root={root}", "--dry_run", *argv]) == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert captured.out == "" and len(err.splitlines()) == 1 and says in err, err
  known = [s.name for s in runs_lib.SCALES["toy" if "--scale=toy" in argv else "full"]]
  if "unknown" in says or says in known:
    assert all(n in err for n in known)
  assert not os.path.exists(root)


def test_launch_starts_each_run_with_its_own_flags(tmp_path, fake_python):
  root = str(tmp_path / "study")
  out = []
  try:
    assert launch_study.launch(root, [SPEC], [None], python=fake_python, out=out.append,
                               extra=("--config.a=1",),
                               run_flags={SPEC.name: ("--config.a=2",),
                                          "other": ("--config.a=3",)}) == 0
    p = runs_lib.paths(root, SPEC.name)
    pid = runs_lib.running_pid(p)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      cmdline = f.read().decode()
    assert "--config.a=1 --config.a=2" in cmdline and "--config.a=3" not in cmdline
    assert runs_lib.read_history(p)[-1]["command"][-2:] == ["--config.a=1", "--config.a=2"]
  finally:
    _kill(root, SPEC.name)


def test_stop_sends_sigterm_to_the_process_group(tmp_path, fake_python):
  root = str(tmp_path / "study")
  launch_study.launch(root, [SPEC], [None], python=fake_python, out=lambda m: None)
  p = runs_lib.paths(root, SPEC.name)
  assert runs_lib.running_pid(p) is not None
  assert runs_lib.stop(p, timeout=10)
  assert runs_lib.running_pid(p) is None


# ----------------------------------------------------------------------------
# Monitor.
# ----------------------------------------------------------------------------


def _pidfile(root, name, pid):
  p = runs_lib.paths(root, name)
  os.makedirs(os.path.dirname(p.pidfile), exist_ok=True)
  with open(p.pidfile, "w") as f:
    json.dump({"pid": pid, "started": time.time() - 100, "devices": None}, f)
  return p


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _args(root, **kw):
  base = ["--root", root, "--scale", "toy"]
  for k, v in kw.items():
    base += [f"--{k}", str(v)]
  return base


def test_monitor_reports_dead_run_and_exits_nonzero(tmp_path, capsys):
  root = str(tmp_path)
  synthetic.write_run(os.path.join(root, "toy_mixture_long"), num_steps=200, upto=120,
                      finished=False)
  p = _pidfile(root, "toy_mixture_long", _dead_pid())
  with open(p.exitfile, "w") as f:
    f.write("1\n")
  st = status_lib.run_status(root, "toy_mixture_long")
  assert st.state == "dead" and "exit status 1" in st.reason and st.problem
  assert st.step == 120 and st.total == 200 and st.checkpoint_step == 100
  assert monitor.main(_args(root)) == 1
  out = capsys.readouterr().out
  assert "dead" in out and "need attention" in out and "GPU" in out


def test_monitor_flags_divergence_and_nonfinite_loss(tmp_path, fake_python):
  root = str(tmp_path)
  synthetic.write_run(os.path.join(root, "toy_mixture_long"), num_steps=200, upto=150,
                      finished=False, diverge_at=100)
  try:
    launch_study.launch(root, [SPEC], [None], python=fake_python, out=lambda m: None)
    st = status_lib.run_status(root, "toy_mixture_long")
    assert st.state == "diverging" and "rose" in st.reason and st.pid is not None
    assert monitor.main(_args(root)) == 1
  finally:
    _kill(root, SPEC.name)
  # A NaN / inf loss (written as null / 1e308 by the trainer) is divergence at once.
  assert status_lib.divergence([3.0, 2.9, None]) is not None
  assert status_lib.divergence([3.0, 2.9, 1e308]) is not None
  # A noisy but falling curve is not.
  rng = np.random.default_rng(0)
  falling = list(4 * np.exp(-np.arange(60) / 20) + 2 + rng.normal(0, 0.05, 60))
  assert status_lib.divergence(falling) is None


def test_monitor_healthy_running_run_exits_zero(tmp_path, fake_python, capsys):
  root = str(tmp_path)
  synthetic.write_run(os.path.join(root, "toy_mixture_long"), num_steps=200, upto=100,
                      finished=False)
  try:
    launch_study.launch(root, [SPEC], [None], python=fake_python, out=lambda m: None)
    st = status_lib.run_status(root, "toy_mixture_long")
    assert st.state == "running" and not st.problem
    assert st.percent == pytest.approx(50.0) and st.eta_seconds > 0
    assert st.validation_perplexity is not None and st.tokens_per_second > 0
    assert monitor.main(_args(root, runs="toy_mixture_long")) == 0
    assert "all runs healthy" in capsys.readouterr().out
    # A live process that stopped writing metrics is 'stalled'.
    old = time.time() - 7200
    os.utime(os.path.join(root, "toy_mixture_long", "metrics.jsonl"), (old, old))
    info = json.load(open(runs_lib.paths(root, SPEC.name).pidfile))
    info["started"] = old
    json.dump(info, open(runs_lib.paths(root, SPEC.name).pidfile, "w"))
    assert status_lib.run_status(root, "toy_mixture_long", stall_seconds=1800).state == "stalled"
    capsys.readouterr()
    assert monitor.main(_args(root, runs="toy_mixture_long") + ["--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["state"] == "stalled" and doc["runs"][0]["problem"]
  finally:
    _kill(root, SPEC.name)


def test_monitor_done_and_not_started_are_not_problems(tmp_path, capsys):
  root = str(tmp_path)
  synthetic.write_run(os.path.join(root, "toy_mixture_long"), num_steps=100)
  statuses = {n: status_lib.run_status(root, n) for n in
              ("toy_mixture_long", "toy_mixture_short")}
  assert statuses["toy_mixture_long"].state == "done"
  assert statuses["toy_mixture_short"].state == "not started"
  assert not any(s.problem for s in statuses.values())
  # Not a problem, but not healthy either: its own exit status, and no "all healthy".
  assert monitor.main(_args(root)) == monitor.EXIT_NOT_STARTED == 3
  out = capsys.readouterr().out
  assert "all runs healthy" not in out
  assert "2 of 3 run(s) not started: toy_mixture_short, toy_single_long" in out
  # Watching only the runs that were launched: all well.
  assert monitor.main(_args(root, runs="toy_mixture_long")) == 0
  assert "all runs healthy" in capsys.readouterr().out


def test_monitor_before_any_launch_says_not_started_per_run(tmp_path, capsys):
  root = str(tmp_path / "runs")  # the study root itself does not exist yet
  assert monitor.main(_args(root)) == 3
  out = capsys.readouterr().out
  assert "(no such directory)" in out and "all runs healthy" not in out
  for spec in runs_lib.TOY:
    row = next(l for l in out.splitlines() if l.startswith(spec.name + " "))
    assert "not started" in row
    assert f"{spec.name}: not started: no workdir {os.path.join(root, spec.name)}" in out
  assert "3 of 3 run(s) not started" in out
  # An empty workdir (made by hand, or by a copy) is not a start either.
  os.makedirs(os.path.join(root, "toy_single_long"))
  st = status_lib.run_status(root, "toy_single_long")
  assert st.state == "not started" and "holds no metrics" in st.reason and not st.problem
  assert monitor.main(_args(root) + ["--json"]) == 3
  doc = json.loads(capsys.readouterr().out)
  assert doc["exit_status"] == 3 and "not started" in doc["summary"]
  assert [r["state"] for r in doc["runs"]] == ["not started"] * 3


def test_monitor_just_launched_run_is_running_not_not_started(tmp_path, fake_python, capsys):
  root = str(tmp_path)
  try:
    launch_study.launch(root, [SPEC], [None], python=fake_python, out=lambda m: None)
    st = status_lib.run_status(root, SPEC.name)
    assert st.state == "running" and "no metrics yet" in st.reason and st.step is None
    assert monitor.main(_args(root, runs=SPEC.name)) == 0
    assert "all runs healthy" in capsys.readouterr().out
  finally:
    _kill(root, SPEC.name)


def test_monitor_problem_outranks_not_started(tmp_path, capsys):
  root = str(tmp_path)
  # Metrics but no config.json and no pid file: it ran once, so it is dead, not new.
  synthetic.write_run(os.path.join(root, "toy_mixture_long"), num_steps=200, upto=60,
                      finished=False)
  os.remove(os.path.join(root, "toy_mixture_long", "config.json"))
  assert status_lib.run_status(root, "toy_mixture_long").state == "dead"
  assert monitor.main(_args(root)) == 1
  out = capsys.readouterr().out
  assert "1 run(s) need attention: toy_mixture_long" in out
  assert "2 of 3 run(s) not started: toy_mixture_short, toy_single_long" in out


def test_monitor_all_done_is_healthy(tmp_path, capsys):
  root = str(tmp_path)
  for spec in runs_lib.TOY:
    synthetic.write_run(os.path.join(root, spec.name), num_steps=100)
  assert monitor.main(_args(root)) == 0
  out = capsys.readouterr().out
  assert "all runs healthy" in out and "not started" not in out


# ----------------------------------------------------------------------------
# Power law.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("e,b,beta", [(2.0, 400.0, 0.3), (1.7, 50.0, 0.15), (3.0, 1e4, 0.6),
                                      (0.5, 8.0, 0.08)])
def test_power_law_fit_recovers_known_parameters(e, b, beta):
  d = np.geomspace(1e6, 1e9, 25)
  fit = powerlaw.fit_power_law(d, e + b * d ** -beta)
  assert fit.E == pytest.approx(e, rel=1e-4, abs=1e-4)
  assert fit.B == pytest.approx(b, rel=1e-3)
  assert fit.beta == pytest.approx(beta, rel=1e-4)
  assert fit.r2 > 0.999999 and not fit.beta_at_bound


def test_power_law_fit_with_noise_is_within_its_error_bars():
  rng = np.random.default_rng(1)
  e, b, beta = 2.0, 400.0, 0.3
  d = np.geomspace(1e6, 1e9, 30)
  y = e + b * d ** -beta + rng.normal(0, 0.003, d.shape)
  fit = powerlaw.fit_power_law(d, y)
  assert abs(fit.E - e) < max(4 * fit.E_se, 0.02)
  assert abs(fit.beta - beta) < max(4 * fit.beta_se, 0.01)
  assert fit.r2 > 0.999 and fit.rmse < 0.006
  # Prediction inside the data is accurate; beyond it is labelled as extrapolation.
  assert float(fit.predict(1e8)) == pytest.approx(e + b * 1e8 ** -beta, abs=0.01)
  assert fit.extrapolation(5e8) == "inside the fitted range"
  assert fit.extrapolation(1e10).startswith("10.0x beyond")


def test_power_law_fit_refuses_too_few_points():
  with pytest.raises(ValueError, match="at least 4"):
    powerlaw.fit_power_law([1e6, 1e7, 1e8], [3.0, 2.5, 2.2])


# ----------------------------------------------------------------------------
# Report builder.
# ----------------------------------------------------------------------------

SECTIONS = ("## 1. The runs", "## 2. Loss against tokens", "## 3. Perplexity",
            "## 4. Benchmarks", "## 5. Shared-prompt generations", "## 6. Cost",
            "## 7. SWELU", "## 8. The hypotheses", "### H1", "### H2", "### H3",
            "## 9. Power-law fits")


def test_report_on_synthetic_study_has_every_section_and_answers(tmp_path):
  root, out = str(tmp_path / "runs"), str(tmp_path / "report")
  synthetic.write_study(root, runs_lib.TOY)
  path = compare.compare(root, out)
  text = open(path).read()
  for s in SECTIONS:
    assert s in text, s
  # The figures exist and are referenced.
  pytest.importorskip("matplotlib")
  for png in ("loss_vs_tokens.png", "stability.png", "swelu_k_lambda.png", "power_law.png",
              "per_type_bits_per_byte.png"):
    assert os.path.getsize(os.path.join(out, png)) > 1000 and f"({png})" in text
  # H1: the synthetic specific run is better on docstrings, worse on code.
  h1 = text[text.index("### H1"):text.index("### H2")]
  assert "specific run is better on its own text': supported" in h1
  assert "generalises better': supported" in h1
  # H2: equal tokens and end-of-run rows, with the long run ending lower.
  h2 = text[text.index("### H2"):text.index("### H3")]
  assert "at equal tokens" in h2 and "'The 100x run ends better': supported" in h2
  # Power law: the synthetic law of the long run (E=2, beta=0.3) is recovered.
  pl = text[text.index("## 9."):]
  row = next(l for l in pl.splitlines() if l.startswith("| `toy_mixture_long`"))
  assert "2.000" in row and "0.300" in row
  # Published figures carry their sources and verification status.
  assert "arXiv:2312.00752" in text and "not verified" in text
  assert "not run" in text                            # our benchmarks are absent


def test_report_sections_explain_missing_pieces(tmp_path):
  root, out = str(tmp_path / "runs"), str(tmp_path / "report")
  # One unfinished run, no evaluation, no generations.
  synthetic.write_run(os.path.join(root, "toy_mixture_long"), num_steps=200, upto=80,
                      finished=False)
  text = open(compare.compare(root, out, scale="toy")).read()
  for s in SECTIONS:
    assert s in text, s
  assert "Needs the general long run and the specific long run" in text
  assert "No generations.json" in text
  assert "no evaluation found" in text
  # And an empty root still gives a report that says so.
  text = open(compare.compare(str(tmp_path / "empty"), str(tmp_path / "r2"))).read()
  assert "No runs found" in text


def test_train_log_segments_give_wall_clock_and_device_hours(tmp_path):
  log = tmp_path / "train.log"
  log.write_text(
      "2026-01-01 10:00:00 I run /w: 2 device(s) NVIDIA H100 over 1 process(es); x\n"
      "2026-01-01 11:00:00 I step 10/20\n"
      "2026-01-01 12:00:00 I run /w: 2 device(s) NVIDIA H100 over 1 process(es); x\n"
      "2026-01-01 12:30:00 I done at step 20 in 30m\n")
  segs = collect.parse_train_log(str(log))
  assert [s.seconds for s in segs] == [3600, 1800] and segs[-1].finished
  run = collect.RunRecord(name="w", workdir=str(tmp_path), config={}, segments=segs)
  assert run.wall_seconds == 5400 and run.device_hours == pytest.approx(3.0)
  assert run.devices == 2 and run.device_kind == "NVIDIA H100"


def test_interpolation_and_spikes():
  xs, ys = [1e3, 1e4, 1e5], [5.0, 4.0, 3.0]
  assert collect.interpolate(xs, ys, math.sqrt(1e3 * 1e4)) == pytest.approx(4.5)
  assert collect.interpolate(xs, ys, 1e6) is None
  losses = [3.0 - 0.01 * i for i in range(30)]
  losses[20] = 6.0
  assert collect.spikes(losses) == [20]


# ----------------------------------------------------------------------------
# The toy study, end to end (trains three models: ~15 minutes on 2 cores).
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_toy_study_end_to_end(tmp_path):
  import run_study  # pylint: disable=import-outside-toplevel
  root, out = str(tmp_path / "toy"), str(tmp_path / "report")
  assert run_study.main([f"--root={root}", f"--out={out}", "--poll=5"]) == 0
  text = open(os.path.join(out, "README.md")).read()
  for s in SECTIONS:
    assert s in text, s
  for name in ("toy_mixture_long", "toy_mixture_short", "toy_single_long"):
    st = status_lib.run_status(root, name)
    assert st.state == "done", (name, st.state, st.reason)
    assert os.path.exists(os.path.join(root, name, "generations.json"))
  assert "cross-evaluated on embedded" in text
  assert os.path.exists(os.path.join(root, "monitor_during_run.txt"))


def test_pool_starts_the_next_run_when_one_ends_and_reports_failures(tmp_path):
  """run_study's pool keeps `max_parallel` runs going: a short run's slot is refilled
  at once, not when its slowest neighbour ends (as waves would); a run that exits
  unfinished is reported and the pool still returns."""
  import argparse  # pylint: disable=import-outside-toplevel
  import run_study  # pylint: disable=import-outside-toplevel
  events = tmp_path / "events"
  fake = tmp_path / "fake_python"
  fake.write_text(
      "#!/bin/sh\n"
      'for a in "$@"; do case "$a" in --workdir=*) wd="${a#--workdir=}";; '
      '--sleep=*) s="${a#--sleep=}";; --fail) fail=1;; esac; done\n'
      f'echo "start $(basename $wd) $(date +%s.%N)" >> {events}\n'
      'sleep "$s"\n'
      '[ -n "$fail" ] && exit 1\n'
      'mkdir -p "$wd/final/1"\n'
      f'echo "end $(basename $wd) $(date +%s.%N)" >> {events}\n')
  fake.chmod(0o755)
  specs = [runs_lib.RunSpec(name, "configs/demo.py", "", overrides=(f"--sleep={t}",) + extra)
           for name, t, extra in (("a_short", 0.2, ()), ("b_long", 4, ()),
                                  ("c_short", 0.2, ()), ("d_fails", 0.2, ("--fail",)))]
  root = str(tmp_path / "pool")
  args = argparse.Namespace(max_parallel=2, scale="toy", poll=0.1)
  ok = run_study.train_in_pool(root, specs, "none", [], None, args, lambda m: None,
                               python=str(fake))
  assert not ok                                    # d_fails did not finish
  times = {}
  for line in events.read_text().split("\n"):
    if line:
      kind, name, t = line.split()
      times[(kind, name)] = float(t)
  assert {n for k, n in times if k == "start"} == {s.name for s in specs}
  assert ("end", "d_fails") not in times
  ends = {n: times.get(("end", n), times[("start", n)] + 0.2) for k, n in times if k == "start"}
  for k, n in times:
    if k == "start":
      t = times[(k, n)]
      assert sum(times[("start", m)] <= t < ends[m] for m in ends) <= 2   # max_parallel
  # c_short took a_short's slot while b_long was still running.
  assert times[("start", "c_short")] < times[("end", "b_long")] - 1.0
  for s in specs[:3]:
    assert runs_lib.finished(runs_lib.paths(root, s.name).workdir)
