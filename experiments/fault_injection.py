r"""Injects each fault N times (over seeds) into the tiny demo and prints the table.

  python experiments/fault_injection.py --n=3 [--faults=kill9,sigterm,...] [--out=DIR]

Every injection is checked against an uninterrupted reference run of the same config
(run once, in a subprocess like the others): a run "survived" when it finished (after
any restarts) with the checks of its fault passing; "data lost" counts training steps
whose batch differs from the reference's or is missing (data_order.jsonl), plus, for
the faults that must not change the result, a final-params mismatch. Faults:

  kill9      kill -9 at random moments (checkpoint every step: many land mid-write),
             then rerun; 3 kills per injection
  sigterm    SIGTERM at a random step: exit status 143, a checkpoint of that step,
             rerun resumes from it
  corrupt    truncate / delete / garbage-overwrite a file of the newest checkpoint,
             then resume: falls back to the one before (and says so)
  nonfinite  NaN (an out-of-range token) in 3 batches in a row: skipped, reload, finish
  nan_param  NaN written into a parameter: never checkpointed, reload, finish
  disk_full  ENOSPC on a checkpoint's commit: earlier checkpoints intact, run goes on
  bad_data   SlimPajama files with byte flips, bad JSON/UTF-8, empty and 2 MB documents

The in-process faults (nonfinite, nan_param, disk_full, bad_data) run through the
same functions the tests use (tests/test_fault_tolerance.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax.training import train
from mambaswelu_jax.data.order import read_data_order
from mambaswelu_jax.mesh import make_mesh
from mambaswelu_jax.training.state import create_train_state
from study_lib.checkout import ROOT, import_from_checkout

ft = import_from_checkout("tests.test_fault_tolerance")

FAULTS = ("corrupt", "nonfinite", "nan_param", "disk_full", "bad_data", "sigterm", "kill9")


def _lost_steps(workdir, reference):
  want = read_data_order(os.path.join(reference, "data_order.jsonl"))
  path = os.path.join(workdir, "data_order.jsonl")
  got = read_data_order(path) if os.path.exists(path) else {}
  return sum(1 for s, h in want.items() if s not in got or set(got[s]) != set(h))


def _params_equal(workdir, reference, abstract):
  _, a = orbax_store.restore_params(workdir, abstract, kind="final")
  _, b = orbax_store.restore_params(reference, abstract, kind="final")
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_fault(fault, seed, work, tok, reference, abstract):
  """(survived, data_lost_steps, note)."""
  workdir = os.path.join(work, f"{fault}_{seed}")
  rng = np.random.default_rng(seed)
  if fault == "kill9":
    events = ft.kill9_run(workdir, tok, seed=seed, kills=3)
    lost = _lost_steps(workdir, reference)
    same = _params_equal(workdir, reference, abstract)
    mid = sum(e["partial_checkpoint"] for e in events)
    return same and lost == 0, lost + (0 if same else 1), f"{mid}/3 kills left a partial checkpoint"
  if fault == "sigterm":
    at = int(rng.integers(2, ft.NUM_STEPS - 1))
    order = os.path.join(workdir, "data_order.jsonl")
    proc = subprocess.Popen(ft._cli(workdir, tok), cwd=ROOT, env=ft._env(),  # pylint: disable=protected-access
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (
        os.path.exists(order) and sum(1 for _ in open(order)) >= at):
      time.sleep(0.02)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    grace = time.time() - t0
    saved = orbax_store.Checkpoints(workdir, ft.tiny(tok).checkpoint)
    last = saved.latest_step()
    saved.close()
    ok = proc.returncode == train.PREEMPTED_EXIT_CODE
    ft.reference_run(workdir, tok)
    log = open(os.path.join(workdir, "train.log")).read()
    ok = ok and f"resumed from {workdir}/checkpoints/{last}" in log
    lost = _lost_steps(workdir, reference)
    same = _params_equal(workdir, reference, abstract)
    return ok and same and lost == 0, lost + (0 if same else 1), f"exit 143 after {grace:.1f} s"
  if fault == "corrupt":
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "final"))
    how = ("truncate", "delete", "garbage")[seed % 3]
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    path = ft.corrupt(os.path.join(workdir, "checkpoints", str(steps[-1])), how, seed)
    ft.reference_run(workdir, tok)
    log = open(os.path.join(workdir, "train.log")).read()
    ok = f"checkpoints/{steps[-1]} does not restore, skipping it" in log
    same = _params_equal(workdir, reference, abstract)
    return ok and same, 0 if same else 1, f"{how} {os.path.relpath(path, workdir)}"
  patch = pytest.MonkeyPatch()   # undone after each fault
  try:
    if fault == "nonfinite":
      start = int(rng.integers(2, ft.NUM_STEPS - 3))
      real_split = train.split_batch
      calls = {"n": 0}

      def split(batch, *args, **kwargs):
        arrays, extra = real_split(batch, *args, **kwargs)
        calls["n"] += 1
        bad = start <= calls["n"] < start + 3
        return (ft._bad_batch(arrays, 512) if bad else arrays), extra  # pylint: disable=protected-access

      patch.setattr(train, "split_batch", split)
      result = train.train_and_evaluate(ft.tiny(tok, train__max_consecutive_nonfinite=2,
                                                eval__every_steps=0), workdir)
      last = json.loads(open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()[-1])
      ok = result.step == ft.NUM_STEPS and last["skipped_updates"] == 3
      ok = ok and all(np.isfinite(np.asarray(x)).all()
                      for x in jax.tree.leaves(jax.device_get(result.state["params"])))
      return ok, 0, f"steps {start}-{start + 2} skipped (counted), {int(last['nonfinite_reloads'])} reload(s)"
    if fault == "nan_param":
      at = int(rng.integers(2, ft.NUM_STEPS))
      patch.setattr(train, "make_train_step",
                    ft.poison_params_at(at, leaf=int(rng.integers(0, 1 << 30))))
      result = train.train_and_evaluate(ft.tiny(tok, eval__every_steps=0), workdir)
      ok = result.step == ft.NUM_STEPS
      for s in orbax_store.Checkpoints(workdir, ft.tiny(tok).checkpoint).states.all_steps():
        _, p = orbax_store.restore_params(workdir, abstract, step=s, kind="checkpoints")
        ok = ok and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(p))
      return ok, 0, f"NaN at step {at}; every checkpoint finite"
    if fault == "disk_full":
      fail = int(rng.integers(1, ft.NUM_STEPS // 2)) * 2
      ft._fail_commit_of(patch, [fail])  # pylint: disable=protected-access
      config = ft.tiny(tok, checkpoint__every_steps=2, checkpoint__snapshot_every_steps=0,
                       eval__every_steps=0, checkpoint__max_to_keep=5)
      result = train.train_and_evaluate(config, workdir)
      saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                     if s.isdigit())
      ok = result.step == ft.NUM_STEPS and fail not in saved
      ok = ok and [s for s in range(2, ft.NUM_STEPS + 1, 2) if s != fail] == saved
      lost = _lost_steps(workdir, reference)  # a failed write changes nothing trained
      same = _params_equal(workdir, reference, abstract)
      return (ok and same and lost == 0, lost + (0 if same else 1),
              f"ENOSPC at the commit of step {fail}; kept {saved}")
    if fault == "bad_data":
      import pathlib  # pylint: disable=import-outside-toplevel
      path = pathlib.Path(workdir)
      path.mkdir(parents=True)
      ft.test_bad_data_run_completes(tok, path)
      last = json.loads(open(path / "w" / "metrics.jsonl").read().splitlines()[-1])
      skipped = int(sum(v for k, v in last.items()
                        if k.startswith("skipped_") and k != "skipped_updates"))
      return True, 0, f"{skipped} bad records skipped and counted"
  finally:
    patch.undo()
  raise ValueError(fault)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=3, help="injections per fault (seeds 0..n-1)")
  p.add_argument("--faults", default=",".join(FAULTS))
  p.add_argument("--out", default="", help="work directory (default: a temporary one)")
  args = p.parse_args()
  work = args.out or tempfile.mkdtemp(prefix="fault_injection_")
  os.makedirs(work, exist_ok=True)
  cache = os.path.join(work, "jax_cache")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

  from mambaswelu_jax.data import tokenizer  # pylint: disable=import-outside-toplevel
  demo = import_from_checkout("configs.demo")
  tok = tokenizer.prepare_tokenizer(demo.get_config("tiny").data, os.path.join(work, "tok"))
  reference = os.path.join(work, "reference")
  if not os.path.exists(os.path.join(reference, "final")):
    ft.reference_run(reference, tok)
  mesh = make_mesh(jax.devices()[:1])
  _, state, _ = create_train_state(ft.tiny(tok), mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state["params"])

  commands = {f: f"python experiments/fault_injection.py --n={args.n} --faults={f}"
              for f in FAULTS}
  rows = []
  for fault in [f for f in args.faults.split(",") if f]:
    survived, lost, notes = 0, 0, []
    t0 = time.time()
    for seed in range(args.n):
      try:
        ok, l, note = run_fault(fault, seed, work, tok, reference, abstract)
      except Exception as e:  # pylint: disable=broad-except
        ok, l, note = False, 0, f"{type(e).__name__}: {str(e)[:200]}"
      survived += int(ok)
      lost += l
      notes.append(note)
      print(f"  {fault} seed {seed}: {'ok' if ok else 'FAILED'} ({note})", flush=True)
    rows.append((fault, args.n, survived, lost, commands[fault], time.time() - t0, notes))
  print()
  print("| fault | injections | runs survived | data lost (steps) | reproduce |")
  print("|---|---|---|---|---|")
  for fault, n, survived, lost, cmd, _, _ in rows:
    print(f"| {fault} | {n} | {survived} | {lost} | `{cmd}` |")
  with open(os.path.join(work, "fault_table.json"), "w", encoding="utf-8") as f:
    json.dump([{"fault": r[0], "injections": r[1], "survived": r[2], "data_lost": r[3],
                "command": r[4], "seconds": round(r[5], 1), "notes": r[6]} for r in rows], f,
              indent=1)
  print(f"\n(details: {work}/fault_table.json)")
  return 0 if all(r[2] == r[1] and r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
