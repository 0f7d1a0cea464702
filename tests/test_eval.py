"""`mambaswelu_jax.cli.eval` on a small trained workdir: splits, text types, bits per byte,
params-only restore, other device counts, and the errors a user meets."""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax import evaluation
from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics_at(workdir, step):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["step"] == step and "validation_loss" in r][-1]


def test_steps_and_kinds(trained_workdir):
  steps = restore.available_steps(trained_workdir)
  assert steps == {4: ["snapshots", "checkpoints"], 8: ["final", "snapshots", "checkpoints"]}
  assert restore.resolve_steps(trained_workdir, "all") == [4, 8]
  assert restore.resolve_steps(trained_workdir, "latest") == [8]
  assert restore.resolve_steps(trained_workdir, "final") == [8]
  assert restore.resolve_steps(trained_workdir, "4") == [4]


def test_eval_splits_and_types_match_the_trainer(trained_workdir, tmp_path):
  # The trainer evaluated step 8 on eval.max_batches=2 batches of 4 x 32 tokens.
  out = evaluation.evaluate_run(trained_workdir, "8", splits=("validation", "test"),
                                max_tokens=256, output_dir=str(tmp_path), log=lambda *_: None)
  (r,) = out
  assert r["step"] == 8 and r["checkpoint"] == "final" and r["tokens_seen"] == 8 * 8 * 32
  val = r["splits"]["validation"]
  trainer = _metrics_at(trained_workdir, 8)
  np.testing.assert_allclose(val["loss"], trainer["validation_loss"], rtol=1e-5)
  np.testing.assert_allclose(val["bits_per_byte"], trainer["validation_bits_per_byte"], rtol=1e-5)
  assert val["tokens"] == 256
  # The trainer's per-type figures are the evaluation library's (one evaluation path).
  assert {k.split("/")[1] for k in trainer if k.startswith("validation/")} == set(val["by_type"])
  for typ, figures in val["by_type"].items():
    for key in ("loss", "perplexity", "bits_per_byte"):
      np.testing.assert_allclose(figures[key], trainer[f"validation/{typ}/{key}"], rtol=1e-5)
  for split in ("validation", "test"):
    s = r["splits"][split]
    assert set(s["by_type"]) <= {"docstring", "code"} and s["by_type"]
    assert sum(t["tokens"] for t in s["by_type"].values()) == s["tokens"]
    assert sum(t["bytes"] for t in s["by_type"].values()) == s["bytes"]
    nll = sum(t["loss"] * t["tokens"] for t in s["by_type"].values())
    np.testing.assert_allclose(nll / s["tokens"], s["loss"], rtol=1e-6)
    np.testing.assert_allclose(s["perplexity"], math.exp(s["loss"]), rtol=1e-9)
    np.testing.assert_allclose(s["bits_per_byte"], nll / (math.log(2) * s["bytes"]), rtol=1e-6)
    assert s["tokens_per_second"] > 0
  with open(tmp_path / "8.json", encoding="utf-8") as f:
    assert json.load(f)["splits"]["test"]["tokens"] == r["splits"]["test"]["tokens"]
  # A later call adds to the file instead of replacing it.
  evaluation.write_results(str(tmp_path / "8.json"), {"benchmarks": {"x": {"acc": 0.5}}})
  with open(tmp_path / "8.json", encoding="utf-8") as f:
    both = json.load(f)
  assert both["benchmarks"] == {"x": {"acc": 0.5}} and set(both["splits"]) == {"validation", "test"}
  assert "validation" in evaluation.format_table([both])
  # --skip_done reuses what is stored; other settings evaluate again.
  msgs = []
  again = evaluation.evaluate_run(trained_workdir, "8", splits=("validation",), max_tokens=256,
                                  output_dir=str(tmp_path), skip_done=True, log=msgs.append)
  assert msgs == ["step 8: stored results reused"] and again[0]["benchmarks"] == {"x": {"acc": 0.5}}
  evaluation.evaluate_run(trained_workdir, "8", splits=("validation",), max_tokens=128,
                          output_dir=str(tmp_path), skip_done=True, log=msgs.append)
  assert "reused" not in msgs[-1]


def test_bits_per_byte_by_hand(trained_workdir):
  """Two short documents with multi-byte characters; every number recomputed from the text."""
  run = restore.load_run(trained_workdir, "latest")
  docs = [{"text": "héllo wörld 中文", "text_type": "a", "id": "1"},
          {"text": "x = 1  # 😀\n", "text_type": "b", "id": "2"}]
  source = sources.InMemorySource({"validation": docs}, ["a", "b"])
  tok = run.tokenizer
  stream = [tok.eos_id]
  types = [None]
  for d in docs:
    ids = tok.encode(d["text"]) + [tok.eos_id]
    stream += ids
    types += [d["text_type"]] * len(ids)
  assert len(stream) - 1 <= int(run.config.data.seq_len)  # one row: no cut in the context
  logits = run.logits([stream[:-1]])[0]
  nll = -np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), -1))[
      np.arange(len(stream) - 1), stream[1:]].astype(np.float64)
  nbytes = sum(len(d["text"].encode("utf-8")) for d in docs)
  r = evaluation.evaluate_split(run, "validation", source=source)
  assert r["tokens"] == len(stream) - 1 and r["bytes"] == nbytes
  np.testing.assert_allclose(r["loss"], nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(r["bits_per_byte"], nll.sum() / (math.log(2) * nbytes), rtol=1e-5)
  for name, d in zip("ab", docs):
    mask = np.asarray([t == name for t in types[1:]])
    t = r["by_type"][name]
    assert t["bytes"] == len(d["text"].encode("utf-8")) and t["tokens"] == mask.sum()
    np.testing.assert_allclose(t["bits_per_byte"],
                               nll[mask].sum() / (math.log(2) * t["bytes"]), rtol=1e-5)


def test_params_only_restore(trained_workdir):
  """Step 4 from the params-only snapshot equals the params part of the full state."""
  snap = restore.load_run(trained_workdir, 4)
  assert snap.kind == "snapshots"
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          snap.params)
  step, full = orbax_store.restore_params(trained_workdir, abstract, 4, kind="checkpoints")
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(snap.params), jax.device_get(full))
  final = restore.load_run(trained_workdir, "final")
  assert final.step == 8 and final.kind == "final"
  leaves4 = jax.tree.leaves(jax.device_get(snap.params))
  leaves8 = jax.tree.leaves(jax.device_get(final.params))
  assert any(not np.array_equal(a, b) for a, b in zip(leaves4, leaves8))


def test_clear_errors(trained_workdir, tmp_path):
  with pytest.raises(restore.RunError, match="step 5 is not saved.*4, 8"):
    restore.resolve_steps(trained_workdir, 5)
  with pytest.raises(restore.RunError, match="does not exist"):
    restore.load_run(str(tmp_path / "nowhere"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(restore.RunError, match="config.json"):
    restore.load_run(str(empty))
  copy = tmp_path / "copy"
  shutil.copytree(trained_workdir, copy)
  os.remove(copy / "tokenizer.model")
  with pytest.raises(restore.RunError, match="tokenizer.model"):
    restore.load_run(str(copy))
  shutil.copy(os.path.join(trained_workdir, "tokenizer.model"), copy / "tokenizer.model")
  for kind in ("final", "snapshots", "checkpoints"):
    shutil.rmtree(copy / kind)
  with pytest.raises(restore.RunError, match="holds no checkpoints"):
    restore.load_run(str(copy))
  # A corrupt snapshot: every data file of its params truncated.
  corrupt = tmp_path / "corrupt"
  shutil.copytree(trained_workdir, corrupt)
  for kind in ("snapshots", "checkpoints"):
    for dirpath, _, files in os.walk(corrupt / kind / "4"):
      for name in files:
        if "ocdbt" in dirpath or name.endswith(".ocdbt") or dirpath.endswith("/d"):
          with open(os.path.join(dirpath, name), "wb") as f:
            f.write(b"\0")
  with pytest.raises(restore.RunError, match=r"step 4 do not restore[\s\S]*snapshots/4"):
    restore.load_run(str(corrupt), 4)


def test_eval_on_another_device_count(trained_workdir, tmp_path):
  """Trained on one device; the command line evaluates it on two (forced host devices),
  from the params part of a full train state (snapshots and final params removed)."""
  copy = tmp_path / "run"
  shutil.copytree(trained_workdir, copy, ignore=shutil.ignore_patterns("final", "snapshots"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  cmd = [sys.executable, "-m", "mambaswelu_jax.cli.eval", f"--workdir={copy}",
         "--step=8", "--splits=validation", "--max_tokens=256", "--batch_per_device=2",
         f"--output_dir={tmp_path}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "validation" in proc.stdout and "bits/byte" in proc.stdout
  with open(tmp_path / "8.json", encoding="utf-8") as f:
    r = json.load(f)
  assert r["devices"].startswith("2 x") and r["checkpoint"] == "checkpoints"
  np.testing.assert_allclose(r["splits"]["validation"]["loss"],
                             _metrics_at(trained_workdir, 8)["validation_loss"], rtol=1e-5)
  bad = subprocess.run(cmd[:4] + ["--step=7"], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert bad.returncode == 2 and "step 7 is not saved" in bad.stderr


def test_benchmark_table_shows_metrics_and_truncation(tmp_path):
  """A benchmark's line shows its metrics with their standard errors, not lm-eval's
  bookkeeping (sample_len, kept in results written before it was dropped); truncated
  requests get a warning line; the command names the file each step's results are in."""
  trunc = {"max_length": 1024, "limited_by": "model.max_len", "requests": 40,
           "truncated": 3, "tokens_cut": 2500, "continuation_tokens_cut": 0,
           "rolling_windows": 0}
  result = {"workdir": str(tmp_path / "run"), "step": 8, "tokens_seen": 2048, "splits": {},
            "benchmarks": {
                "lambada_openai": {"acc": 0.25, "acc_stderr": 0.0625, "perplexity": 310.5,
                                   "perplexity_stderr": 40.25, "documents": 40,
                                   "truncation": trunc},
                "piqa": {"acc": 0.5, "acc_norm": 0.625, "sample_len": 8,
                         "truncation": dict(trunc, truncated=0, tokens_cut=0)}}}
  report = evaluation.format_report([result], str(tmp_path / "out"))
  lines = report.splitlines()
  assert "sample_len" not in report and "truncation" not in report
  assert any(line.endswith("lambada_openai acc 0.2500 ± 0.0625, perplexity 310.5000 ± 40.2500 "
                           "(40 documents)") for line in lines)
  assert any(line.endswith("piqa         acc 0.5000, acc_norm 0.6250") for line in lines)
  assert [line for line in lines if line.startswith("warning:")] == [
      "warning: step 8 lambada_openai: 3 of 40 requests truncated at 1024 tokens "
      "(model.max_len): 2,500 tokens cut"]
  assert lines[-1] == f"results: {tmp_path / 'out' / '8.json'}"
  assert evaluation.format_report([result]).splitlines()[-1] == (
      f"results: {tmp_path / 'run' / 'eval' / '8.json'}")
