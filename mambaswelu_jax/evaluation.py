"""Evaluating a run's checkpoints: loss, perplexity and bits per byte per split and
text type, lm-eval benchmarks, and the result files (the library of
`python -m mambaswelu_jax.cli.eval`).

For each split the run's own eval pipeline (`data.pipeline.make_eval_batches`:
every token of every document is a target exactly once, in source order) gives

  loss           Σ nll / tokens                        nats per token
  perplexity     exp(loss)
  bits_per_byte  Σ nll / (ln 2 · Σ UTF-8 bytes of the targets)   tokenizer independent

(`perplexity.figures`, the formula every tool reports with) overall and per text type,
with the token and byte counts beside each figure. The trainer's periodic validation
runs the same code (`sum_batches`, `split_figures`) over its fixed validation subset.

Results go to `DIR/eval/<step>.json`, merged with what an earlier call wrote, so
benchmarks and perplexities can be computed separately.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import jax
import numpy as np

from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax import steps
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.mesh import EVAL_KEYS, pad_rows, to_global
from mambaswelu_jax.perplexity import figures
from mambaswelu_jax.scoring import truncation_warning


# ----------------------------------------------------------------------------
# Perplexity and bits per byte over a split.
# ----------------------------------------------------------------------------


def sum_batches(step_fn, params, handle, batches, mesh, *, rows: int = 0,
                max_batches: int = 0, vocab_size: int = 0) -> dict:
  """Runs the eval step over `batches` (this process's rows; with `rows`, a short batch
  is padded to that many zero-weight rows) and adds up, in float64:

    totals   (num_types, 3) [nll, tokens, target bytes] per text type
    counts   (vocab_size,) weighted target-token counts (vocab_size > 0 only)
    seconds, timed   device time of the calls after the first (it compiles)
  """
  totals, counts = None, (np.zeros((vocab_size,), np.float64) if vocab_size else None)
  seconds, timed, n = 0.0, 0, 0
  keys = EVAL_KEYS + ("text_type",)
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    batch = pad_rows(batch, rows, keys) if rows else {k: batch[k] for k in keys}
    if counts is not None:
      t = np.asarray(batch["targets"]).reshape(-1)
      w = np.asarray(batch["weights"], np.float64).reshape(-1)
      counts += np.bincount(t, weights=w, minlength=vocab_size)[:vocab_size]
    t0 = time.perf_counter()
    sums = np.asarray(jax.device_get(step_fn(params, handle, to_global(batch, mesh))),
                      np.float64)
    if i > 0:  # the first call compiles: keep it out of the timing
      seconds += time.perf_counter() - t0
      timed += 1
    totals = sums if totals is None else totals + sums
    n += 1
  if n == 1:  # one batch: its time is all there is
    seconds, timed = time.perf_counter() - t0, 1
  return {"totals": totals, "counts": counts, "seconds": seconds, "timed": timed}


def split_figures(totals, types) -> dict:
  """Loss / perplexity / bits per byte overall and per text type (`by_type`, types with
  tokens only) from the per-type sums."""
  out = figures(*totals.sum(0))
  out["by_type"] = {t: figures(*totals[i]) for i, t in enumerate(types) if totals[i, 1] > 0}
  return out


def unigram_entropy(counts) -> float:
  """The entropy (nats) of the target tokens' frequencies, over every process: the loss
  of a model that ignores context."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(
        -1, counts.shape[0]).sum(0)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def evaluate_split(run: restore.Run, split: str, *, max_tokens: int = 0,
                   batch_per_device: int = 0, source=None) -> dict:
  """Loss / perplexity / bits per byte over `split`, overall and per text type."""
  from mambaswelu_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  source = sources.make_source(run.config.data) if source is None else source
  per_device = batch_per_device or int(run.config.eval.batch_per_device)
  global_batch = per_device * run.num_devices
  seq_len = int(run.config.data.seq_len)
  # One process evaluates the whole split on its own devices (the run's mesh is local).
  batches = pipeline.make_eval_batches(source, run.tokenizer, split, global_batch, seq_len,
                                       max_tokens=max_tokens)
  types = text_types(source)
  step_fn = restore.cached("eval_sums", run, lambda: steps.make_eval_step(
      run.mesh, len(types)), len(types))
  got = sum_batches(step_fn, run.params, run.handle, batches, run.mesh)
  if got["totals"] is None:
    got["totals"] = np.zeros((len(types), 3))
  out = split_figures(got["totals"], types)
  out["seconds"] = got["seconds"]
  # Tokens the model ran over (padding rows included) per second of device time.
  out["tokens_per_second"] = (got["timed"] * global_batch * seq_len / got["seconds"]
                              if got["seconds"] else 0.0)
  out["skipped_documents"] = dict(getattr(batches, "skipped", {}) or {})
  out["max_tokens"] = int(max_tokens)
  return out


def text_types(source) -> list[str]:
  """The text types the eval batches' `text_type` indexes (one, "text", when untyped)."""
  return list(source.text_types) or ["text"]


# ----------------------------------------------------------------------------
# Results: JSON per step and a table.
# ----------------------------------------------------------------------------


def results_path(workdir: str, step: int, output_dir: str = "") -> str:
  return os.path.join(output_dir or os.path.join(workdir, layout.EVAL), f"{step}.json")


def write_results(path: str, results: dict) -> dict:
  """Merges `results` into the JSON at `path` (splits and benchmarks kept from earlier
  calls unless recomputed) and writes it atomically."""
  old = _stored(path)
  merged = {**old, **results}
  for key in ("splits", "benchmarks"):
    merged[key] = {**old.get(key, {}), **results.get(key, {})}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  layout.atomic_write(path, json.dumps(merged, indent=2, sort_keys=True,
                                       default=_json_default) + "\n")
  return merged


def _stored(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


# Entries of a benchmark's results that are not metrics: lm-eval's bookkeeping (results
# written before it was dropped may hold sample_len) and ours (documents, truncation).
BENCHMARK_INFO_KEYS = ("alias", "sample_len", "samples", "documents", "truncation")


def format_metrics(metrics: dict) -> str:
  """`acc 0.6250 ± 0.0500, acc_norm 0.6000 ± 0.0510 (40 documents)` from one task's
  results: the metrics lm-eval computed, each with its standard error where it has one."""
  parts = []
  for key, value in sorted(metrics.items()):
    name, _, filt = key.partition(",")
    if (key in BENCHMARK_INFO_KEYS or name.endswith("_stderr") or isinstance(value, bool)
        or not isinstance(value, (int, float))):
      continue
    err = metrics.get(f"{name}_stderr" + (f",{filt}" if filt else ""))
    parts.append(f"{key} {value:.4f}" + (f" ± {err:.4f}" if isinstance(err, (int, float))
                                         and not isinstance(err, bool) else ""))
  docs = metrics.get("documents")
  return ", ".join(parts) + (f" ({docs:,} documents)" if isinstance(docs, int) else "")


def format_table(results: Sequence[dict]) -> str:
  """One line per (step, split, text type) and per benchmark task, then a warning line
  per task whose requests were truncated."""
  head = (f"{'step':>8} {'tokens seen':>13} {'split':<11} {'type':<12} {'loss':>7} "
          f"{'ppl':>9} {'bits/byte':>9} {'tokens':>11} {'bytes':>12}")
  lines, warnings = [head, "-" * len(head)], []
  for r in results:
    for split, s in r.get("splits", {}).items():
      for typ, f in [("all", s)] + sorted(s.get("by_type", {}).items()):
        lines.append(f"{r['step']:>8} {r.get('tokens_seen', 0):>13,} {split:<11} {typ:<12} "
                     f"{f['loss']:>7.4f} {f['perplexity']:>9.2f} {f['bits_per_byte']:>9.4f} "
                     f"{f['tokens']:>11,} {f['bytes']:>12,}")
    for task, metrics in r.get("benchmarks", {}).items():
      lines.append(f"{r['step']:>8} {r.get('tokens_seen', 0):>13,} {'benchmark':<11} "
                   f"{task:<12} {format_metrics(metrics)}")
      warning = truncation_warning(f"step {r['step']} {task}", metrics.get("truncation"))
      if warning:
        warnings.append(warning)
  return "\n".join(lines + warnings)


def format_report(results: Sequence[dict], output_dir: str = "") -> str:
  """What the command prints: the table, then the file each step's results are in."""
  out = os.path.abspath(output_dir) if output_dir else ""
  return "\n".join([format_table(results)] + [
      f"results: {results_path(r['workdir'], r['step'], out)}" for r in results
      if not r.get("not_written")])


def evaluate_run(workdir: str, step: str | int = "latest", *, splits=("validation", "test"),
                 max_tokens: int = 0, batch_per_device: int = 0, benchmarks=(),
                 benchmark_limit: int = 0, benchmark_batch_size: int = 16,
                 benchmark_tasks_dir: str = "", output_dir: str = "", devices=None,
                 skip_done: bool = False, log=print) -> list[dict]:
  """Evaluates each requested step; writes and returns one result dict per step.

  skip_done: reuse a step's stored results when they hold every requested split (with
  the same max_tokens) and benchmark (for re-running --step=all as a run goes on).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config, tokenizer = restore.load_config_and_tokenizer(workdir)
  step_numbers = restore.resolve_steps(workdir, step)
  source = None
  if splits:
    from mambaswelu_jax.data import sources  # pylint: disable=import-outside-toplevel
    source = sources.make_source(config.data, splits=list(splits))
  out = []
  for s in step_numbers:
    done = _stored(results_path(workdir, s, output_dir)) if skip_done else {}
    if (done and all(done.get("splits", {}).get(sp, {}).get("max_tokens") == max_tokens
                     for sp in splits)
        and all(b in done.get("benchmarks", {}) for b in benchmarks)):
      log(f"step {s}: stored results reused")
      out.append(done)
      continue
    run = restore.load_run(workdir, s, devices=devices, config=config, tokenizer=tokenizer)
    result = {"workdir": workdir, "step": run.step, "checkpoint": run.kind,
              "tokens_seen": run.step * run.tokens_per_step,
              "devices": f"{run.num_devices} x {run.mesh.devices.flat[0].device_kind}",
              "splits": {}, "benchmarks": {}}
    for split in splits:
      r = evaluate_split(run, split, max_tokens=max_tokens, batch_per_device=batch_per_device,
                         source=source)
      result["splits"][split] = r
      log(f"step {run.step} {split}: loss {r['loss']:.4f}  perplexity {r['perplexity']:.2f}  "
          f"bits/byte {r['bits_per_byte']:.4f}  ({r['tokens']:,} tokens, {r['bytes']:,} bytes, "
          f"{r['tokens_per_second']:,.0f} tokens/s)")
    if benchmarks:
      from mambaswelu_jax import lm_eval_adapter  # pylint: disable=import-outside-toplevel
      result["benchmarks"] = lm_eval_adapter.run_benchmarks(
          run, list(benchmarks), limit=benchmark_limit or None, batch_size=benchmark_batch_size,
          include_path=benchmark_tasks_dir or None)
      for task, metrics in result["benchmarks"].items():
        log(f"step {run.step} {task}: {format_metrics(metrics)}")
      for task, metrics in result["benchmarks"].items():
        warning = truncation_warning(f"step {run.step} {task}", metrics.get("truncation"))
        if warning:
          log(warning)
    path = results_path(workdir, run.step, output_dir)
    try:
      merged = write_results(path, result)
    except OSError as e:  # a read-only or full workdir: the figures are still reported
      merged = {**_stored(path), **result, "not_written": f"{path}: {e.strerror or e}"}
    out.append(merged)
  return out


def unwritten(results: Sequence[dict]) -> list[str]:
  """The result files that could not be written ('path: reason'), for the command's
  closing line."""
  return [r["not_written"] for r in results if r.get("not_written")]
