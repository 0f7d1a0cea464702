r"""The whole study in one command: tokenizer, three runs, evaluation, generations, report.

  python experiments/run_study.py --scale=toy --root=runs/toy --out=docs/toy_study
  python experiments/run_study.py --scale=full --root=runs --out=report --stage=evaluate,generate,benchmarks,report

--scale=toy is the demo of the study on a CPU: the embedded corpus (a mixture of text
types, docstrings + code, and a single type, docstrings only), two token budgets
(configs/toy_study.py), one shared tokenizer, the three runs launched together through
launch_study (detached processes, pid files, logs under ROOT/logs), watched with the
monitor (its table is saved mid-run to ROOT/monitor_during_run.txt), then evaluated,
sampled and compared into OUT/README.md. A rerun resumes: finished runs are kept,
dead ones restart from their checkpoints.

--scale=full drives the real study's post-training stages on ROOT (launch it with
experiments/launch_study.py on the GPU machine; the `train` stage here launches it too
and waits).

Stages (--stage, comma-separated; default all): tokenizer, train, evaluate, benchmarks,
generate, report. Timings go to ROOT/study_timing.json and into the report.

--questions=all (or a subset of ablations,dataset,sweep) runs the study's open questions
instead of its three runs (experiments/study_lib/questions.py): the ablations of a base
run (SiLU, fixed k, gated conv, a same-size Transformer; configs/ablations.py) over
--seeds, the SiLU ablation on a second data set (is SWELU's effect dataset-dependent?),
and the size sweep of both architectures (configs/scaling_sweep.py), --max_parallel runs
at a time (the next starts when one ends), then the questions report (ablation deltas
with seed intervals, the dataset interaction, L(N, D) fits with bootstrap intervals) in
OUT/README.md. Its stages are tokenizer, train and report:

  python experiments/run_study.py --scale=toy --questions=all --root=runs/toy_questions --out=docs/toy_questions
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import compare as compare_lib
import launch_study
import monitor
from study_lib import collect
from study_lib import postprocess
from study_lib import runs as runs_lib
from study_lib.checkout import import_from_checkout

STAGES = ("tokenizer", "train", "evaluate", "benchmarks", "generate", "report")
QUESTION_STAGES = ("tokenizer", "train", "report")
MONITOR_TABLE = "monitor_during_run.txt"   # under ROOT: the monitor on a running study


def log(msg):
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_study_tokenizer(path: str, vocab_size: int = 1024, sample_bytes: int = 2_000_000,
                          log=print) -> str:
  """One tokenizer for the toy study, trained on the mixture's train split (both types),
  so the single-type run is scored in the same units as the mixture runs."""
  if os.path.exists(path):
    log(f"tokenizer: {path} exists, kept")
    return path
  from mambaswelu_jax.data import sources  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  src = sources.make_source({"source": "embedded", "validation_fraction": 0.05,
                             "test_fraction": 0.05})
  size = src.estimated_bytes("train")
  keep = min(1.0, 1.25 * sample_bytes / size) if size else 1.0
  t0 = time.time()
  tok_lib.train_tokenizer(tok_lib.sample_texts(src.documents("train"), sample_bytes,
                                               keep_fraction=keep),
                          vocab_size=vocab_size, output_path=path,
                          description={"sources": ["embedded (docstring + code)"],
                                       "study": "toy"})
  log(f"tokenizer: trained {path} ({vocab_size} pieces) in {time.time() - t0:.0f} s")
  return path


def _monitor_args(root, specs) -> argparse.Namespace:
  return argparse.Namespace(root=root, scale="toy" if specs is runs_lib.TOY else "full",
                            runs=",".join(s.name for s in specs), json=False, stall_minutes=30,
                            window=5, divergence_nats=1.0)


def _save_monitor_table(path, text, code, log) -> None:
  """The 'monitor on a running study' record: one monitor table and its exit status."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + f"\n(exit status {code})\n")
  log(f"monitor table saved to {path}")


def wait_for_runs(root: str, specs, *, poll: float = 15.0, snapshot_path: str = "",
                  snapshot_at: float = 0.5, timeout: float = 0, log=print) -> bool:
  """Polls the monitor until every run is done or one is dead/diverging.

  Saves one monitor table to `snapshot_path` once every run is `snapshot_at` through,
  the 'monitor on a running study' record. Returns True when all finished.
  """
  args = _monitor_args(root, specs)
  saved = False
  start = time.time()
  last_print = 0.0
  while True:
    text, code, statuses = monitor.snapshot(args)
    slowest = min((s.percent or 0.0) for s in statuses) if statuses else 0.0
    if snapshot_path and not saved and slowest >= 100 * snapshot_at and any(
        s.state == "running" for s in statuses):
      _save_monitor_table(snapshot_path, text, code, log)
      saved = True
    if time.time() - last_print > 60:
      log(text)
      last_print = time.time()
    if all(s.state == "done" for s in statuses):
      return True
    bad = [s for s in statuses if s.state in ("dead", "diverging")]
    if bad:
      log(text)
      log(f"stopping the wait: {', '.join(f'{s.name} {s.state} ({s.reason})' for s in bad)}")
      return False
    if timeout and time.time() - start > timeout:
      log("timed out waiting for the runs")
      return False
    time.sleep(poll)


def train_in_pool(root, specs, devices, extra, env, args, log, python=None) -> bool:
  """Keeps `max_parallel` runs training, starting the next queued run as soon as one
  ends (a finished run is skipped by the launch plan, a dead one resumes from its
  checkpoint). A run that stops unfinished is reported, not retried. True when all
  finished."""
  groups = runs_lib.parse_devices(devices, 1 + devices.count(":")) if devices else [None]
  if groups == [None]:   # CPU, unpinned: 6 at a time unless told
    width = min(args.max_parallel or 6, len(specs))
    slots = [None] * width
  else:                  # one run per device group
    width = min(args.max_parallel or len(groups), len(groups), len(specs))
    slots = groups[:width]
  queue, active, failed = list(specs), {}, []      # active: slot -> spec
  snapshot_path, saved, last_print = os.path.join(root, MONITOR_TABLE), False, 0.0
  while queue or active:
    for slot, spec in list(active.items()):
      p = runs_lib.paths(root, spec.name)
      if runs_lib.running_pid(p) is None:
        del active[slot]
        if runs_lib.finished(p.workdir):
          log(f"{spec.name}: finished")
        else:
          failed.append(spec.name)
          log(f"{spec.name}: stopped unfinished (exit status {runs_lib.last_exit(p)}); "
              f"see {p.log}")
    while queue and len(active) < width:
      slot = next(i for i in range(width) if i not in active)
      spec = queue.pop(0)
      launch_study.launch(root, [spec], [slots[slot]], extra=tuple(extra), env_extra=env,
                          python=python, out=log)
      if runs_lib.running_pid(runs_lib.paths(root, spec.name)) is not None:
        active[slot] = spec
    done = len(specs) - len(queue) - len(active)
    if not saved and active and done >= len(specs) // 2:
      # The 'monitor on a running study' record, once half of the runs are through.
      text, code, _ = monitor.snapshot(_monitor_args(root, specs))
      _save_monitor_table(snapshot_path, text, code, log)
      saved = True
    if time.time() - last_print > 60:
      log(f"{done}/{len(specs)} runs ended, running: "
          f"{', '.join(s.name for s in active.values()) or '-'}; {len(queue)} queued")
      last_print = time.time()
    if queue or active:
      time.sleep(args.poll)
  if failed:
    log(f"unfinished runs: {', '.join(failed)} (rerun the same command to resume them)")
  return all(runs_lib.finished(runs_lib.paths(root, s.name).workdir) for s in specs)


def parse_args(argv) -> tuple[argparse.Namespace, tuple]:
  """The arguments, and the stages asked for (they run in the order of STAGES)."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=__doc__.split("\n\n", 1)[1])
  ap.add_argument("--scale", default="toy", choices=sorted(runs_lib.SCALES))
  ap.add_argument("--root", default="runs/toy")
  ap.add_argument("--out", default="report")
  ap.add_argument("--stage", default="all", help=f"comma-separated subset of {STAGES}")
  ap.add_argument("--devices", default=None, help="device groups (see launch_study.py); "
                  "default: none for the toy, 0,1:2,3:4,5 for the full study")
  ap.add_argument("--eval_tokens", type=int, default=16384,
                  help="targets per split (and per text type) in the evaluation stage")
  ap.add_argument("--gen_tokens", type=int, default=64)
  ap.add_argument("--gen_samples", type=int, default=3)
  ap.add_argument("--poll", type=float, default=15.0)
  ap.add_argument("--questions", default="", help="all, or a comma-separated subset of "
                  "ablations,dataset,sweep: run the open questions instead of the three runs")
  ap.add_argument("--seeds", default="0,1,2", help="--questions: seeds of every ablation run")
  ap.add_argument("--max_parallel", type=int, default=0,
                  help="--questions: runs trained at once (0: 6 for the toy, all for full)")
  ap.add_argument("--note", action="append", default=[],
                  help="a line for the report's notes (repeatable), e.g. how its runs were made")
  ap.add_argument("--override", action="append", default=[],
                  help="extra --config.x=y for every run (repeatable), e.g. a shorter smoke test")
  args = ap.parse_args(argv)
  stages = STAGES if args.stage == "all" else tuple(s.strip() for s in args.stage.split(","))
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    ap.error(f"unknown stage(s) {unknown}; choose from {STAGES}")
  if args.questions:
    stages = tuple(s for s in stages if s in QUESTION_STAGES)
  return args, stages


class Study:
  """What the stages share: the arguments, the runs' specs and trainer flags, the timing
  record (ROOT/study_timing.json), the stages that failed, and the runs once loaded."""

  def __init__(self, args: argparse.Namespace, argv):
    self.args = args
    self.argv = sys.argv[1:] if argv is None else argv
    self.root = os.path.abspath(args.root)
    os.makedirs(self.root, exist_ok=True)
    self.specs = runs_lib.SCALES[args.scale]
    if args.questions:
      from study_lib import questions as questions_lib  # pylint: disable=import-outside-toplevel
      self.specs = questions_lib.specs(
          args.scale, questions_lib.parse_questions(args.questions),
          tuple(int(x) for x in args.seeds.split(",") if x.strip()))
    self.timing_path = os.path.join(self.root, "study_timing.json")
    self.timing = runs_lib.load_json(self.timing_path) or {}
    self.started = time.time()
    self.failures = []
    self.trainer_flags = list(args.override)
    if args.scale == "toy":
      self.tokenizer_path = os.path.join(self.root, "tokenizer", "toy_study.model")
      self.trainer_flags.insert(0, f"--config.data.tokenizer_path={self.tokenizer_path}")
    self._runs = None

  def runs(self):
    """The study's runs, read from ROOT the first time a stage asks (after training)."""
    if self._runs is None:
      self._runs = collect.load_study(self.root, self.specs)
    return self._runs

  def save_timing(self) -> None:
    with open(self.timing_path, "w", encoding="utf-8") as f:
      json.dump(self.timing, f, indent=1)

  def timed(self, stage: str, fn):
    """fn's result, its wall time recorded under `stage`; a stage that raises is logged
    and recorded as a failure (None), so a failed stage does not cost the report."""
    t0 = time.time()
    try:
      out = fn()
    except Exception as e:  # pylint: disable=broad-except
      import traceback  # pylint: disable=import-outside-toplevel
      traceback.print_exc()
      self.failures.append(f"stage {stage} failed: {type(e).__name__}: {str(e)[:300]}")
      log(self.failures[-1])
      out = None
    self.timing[stage] = round(time.time() - t0, 1)
    self.save_timing()
    log(f"stage {stage}: {self.timing[stage]:.0f} s")
    return out


# ----------------------------------------------------------------------------
# The stages, in order.
# ----------------------------------------------------------------------------


def stage_tokenizer(study: Study) -> None:
  if study.args.scale == "toy":
    study.timed("tokenizer", lambda: train_study_tokenizer(study.tokenizer_path, log=log))


def _train(study: Study) -> bool:
  """Trains every run: the three runs launched together and watched, or the questions'
  runs through the pool. True when all finished."""
  args, root, specs = study.args, study.root, study.specs
  devices = args.devices or ("none" if args.scale == "toy" else runs_lib.DEFAULT_DEVICES)
  env = {"JAX_PLATFORMS": "cpu"} if args.scale == "toy" else None
  if args.questions:
    return train_in_pool(root, specs, devices, study.trainer_flags, env, args, log)
  code = launch_study.launch(root, specs, runs_lib.parse_devices(devices, len(specs)),
                             extra=tuple(study.trainer_flags), env_extra=env, out=log)
  if code:
    log("some runs were already running; waiting for them")
  return wait_for_runs(root, specs, poll=args.poll,
                       snapshot_path=os.path.join(root, MONITOR_TABLE), log=log)


def stage_train(study: Study) -> None:
  ok = study.timed("train", lambda: _train(study))
  # The load the training ran under (its own runs included), for the report.
  study.timing["load_average"] = {"after train, 15 min": round(os.getloadavg()[2], 1)}
  study.save_timing()
  if not ok:
    log("not every run finished; later stages use what exists")


def stage_evaluate(study: Study) -> None:
  runs = study.runs()
  if runs:
    study.timed("evaluate", lambda: postprocess.evaluate_study(
        runs, max_tokens=study.args.eval_tokens, log=log))


def stage_benchmarks(study: Study) -> None:
  runs = study.runs()
  if runs:
    study.timing["benchmarks_note"] = study.timed(
        "benchmarks", lambda: postprocess.benchmarks_study(runs, log=log))


def stage_generate(study: Study) -> None:
  runs = study.runs()
  if runs:
    study.timed("generate", lambda: postprocess.generate_study(
        runs, max_new_tokens=study.args.gen_tokens, num_samples=study.args.gen_samples,
        log=log, root=study.root))


def _toy_note() -> str:
  toy_study = import_from_checkout("configs.toy_study")
  long_r, short_r = toy_study.LONG_TOKENS_PER_PARAMETER, toy_study.SHORT_TOKENS_PER_PARAMETER
  return ("Toy scale: a small MambaSWELU (configs/toy_study.py) on the Python standard library's "
          "docstrings and code (no download). 'SlimPajama' is the mixture of both text types, "
          "'Wikipedia' the docstrings alone, and the 100x/20x token ratios are scaled to "
          f"{long_r:g}x/{short_r:g}x (the same {long_r / short_r:g}:1 ratio) so the study runs "
          "in minutes on a CPU. The numbers demonstrate the pipeline and how the report reads; "
          "they say nothing about the 124M study's outcome.")


def _timing_note(timing: dict) -> str:
  seconds = {k: v for k, v in timing.items() if isinstance(v, (int, float))}
  stage_times = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
  return (f"Wall time of the stages that produced this report: {stage_times} "
          f"(total {sum(seconds.values()) / 60:.1f} min, on {os.cpu_count()} CPU core(s)"
          + "".join(f"; load average {k} {v:g}" for k, v in
                    timing.get("load_average", {}).items())
          + ").")


def _monitor_note(path: str) -> list[str]:
  """The monitor table saved during training, quoted; none when there is none."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    table = f.read().rstrip().splitlines()
  return ["The monitor during training (`python experiments/monitor.py --root=ROOT "
          "--scale=toy`):\n>\n> ```\n" + "\n".join("> " + line for line in table) + "\n> ```"]


def stage_report(study: Study) -> None:
  args, root = study.args, study.root
  # The toy note describes the three-run study; the questions report has its own.
  notes = [_toy_note()] if args.scale == "toy" and not args.questions else []
  notes.append(_timing_note(study.timing))
  notes += _monitor_note(os.path.join(root, MONITOR_TABLE))
  notes += list(args.note) + study.failures
  command = "python experiments/run_study.py " + shlex.join(
      a for a in study.argv if not a.startswith("--note"))
  if args.questions:
    from study_lib import questions as questions_lib  # pylint: disable=import-outside-toplevel
    path = study.timed("report", lambda: questions_lib.build_report(
        collect.load_study(root, study.specs), args.out, scale=args.scale, notes=notes,
        command=command))
  else:
    benchmark_note = study.timing.get("benchmarks_note", "")
    path = study.timed("report", lambda: compare_lib.compare(
        root, args.out, scale=args.scale, notes=notes, benchmark_note=benchmark_note,
        command=command))
  log(f"report: {path}")


STAGE_RUNNERS = {"tokenizer": stage_tokenizer, "train": stage_train,
                 "evaluate": stage_evaluate, "benchmarks": stage_benchmarks,
                 "generate": stage_generate, "report": stage_report}


def main(argv=None) -> int:
  args, stages = parse_args(argv)
  study = Study(args, argv)
  for stage in STAGES:
    if stage in stages:
      STAGE_RUNNERS[stage](study)
  log(f"done in {(time.time() - study.started) / 60:.1f} min")
  return 1 if study.failures else 0


if __name__ == "__main__":
  sys.exit(main())
