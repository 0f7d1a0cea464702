"""After training: the evaluations, cross-evaluations and generations the report reads.

  evaluate_study(runs, ...)   for every run, eval/<step>.json at its final step and at the
                              steps the long runs share (validation and test, per text
                              type); the specific run also on the general run's data
                              ("cross" in the same file), so H1 and H3 compare like with
                              like; study_run.json with role, parameters and epochs.
  generate_study(runs, ...)   shared prompts sampled from every run's final params through
                              mambaswelu_jax.cli.gen_quality (diversity measures, every sample
                              scored by every run) -> generations.json per run.
  benchmarks_study(runs, ...) lm-eval's four tasks when lm-eval and its datasets are
                              available; otherwise the reason, for the report.

Imports JAX and the evaluation modules (mambaswelu_jax.checkpointing.restore / evaluation /
gen_quality) when called; at import time only the standard library and the package's
standard-library modules (workdir layout, the perplexity formula).
"""

from __future__ import annotations

import json
import os
import time

from mambaswelu_jax import perplexity
from mambaswelu_jax import workdir as layout
from study_lib import collect
from study_lib import runs as runs_lib

PROMPTS = ("The future of artificial intelligence is", "def ", "Return the")
BENCHMARKS = ("lambada_openai", "hellaswag", "piqa", "winogrande")


def _write_json(path: str, doc: dict) -> None:
  layout.atomic_write(path, json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n")


def _merge_cross(path: str, label: str, split: str, result: dict) -> None:
  doc = runs_lib.load_json(path) or {}
  doc.setdefault("cross", {}).setdefault(label, {})[split] = result
  _write_json(path, doc)


def comparison_steps(runs) -> dict:
  """{run name: [steps to evaluate]}: the final step of every run, plus for the long runs
  the snapshot steps they share nearest to half their length and to the short run's
  final token count (equal-token comparisons)."""
  out = {r.name: ([r.final_steps[-1]] if r.final_steps else []) for r in runs}
  longs = [r for r in runs if r.role in ("general_long", "specific_long")]
  short = next((r for r in runs if r.role == "general_short"), None)
  if len(longs) >= 2:
    common = sorted(set.intersection(*(set(r.snapshots) for r in longs)))
    if common:
      total = max(common)
      wanted = [total * 0.5]
      if short is not None and short.final_steps and longs[0].tokens_per_step:
        wanted.append(short.final_steps[-1] * short.tokens_per_step / longs[0].tokens_per_step)
      picks = {min(common, key=lambda s, w=w: abs(s - w)) for w in wanted}
      for r in longs:
        out[r.name] = sorted(set(out[r.name]) | picks)
  return out


def _train_split_tokens(run, bytes_per_token: float | None) -> float | None:
  """Tokens in the run's training split (embedded source: from its byte size)."""
  if not bytes_per_token:
    return None
  if run.cfg("data", "source") != "embedded":
    return None
  from mambaswelu_jax.data import sources  # pylint: disable=import-outside-toplevel
  src = sources.make_source(run.config["data"])
  b = src.estimated_bytes("train")
  return b / bytes_per_token if b else None


def _combine(by_type: dict) -> dict:
  """Overall figures from per-type ones (token-weighted nll, summed bytes)."""
  nll = sum(f["loss"] * f["tokens"] for f in by_type.values() if f.get("tokens"))
  tokens = sum(f.get("tokens", 0) for f in by_type.values())
  nbytes = sum(f.get("bytes", 0) for f in by_type.values())
  return {**perplexity.figures(nll, tokens, nbytes), "by_type": by_type,
          "note": "per-type evaluations, each capped at the same token count, combined"}


def evaluate_study(runs, *, max_tokens: int = 16384, log=print) -> dict:
  """Evaluates the study's runs in this process; returns {run: [steps evaluated]}.

  Per run: `python -m mambaswelu_jax.cli.eval`'s evaluation of its own validation and test
  splits at its final step (first `max_tokens` targets of each, in source order); and at
  the final step and the comparison steps, every text type of the general run's data
  evaluated separately on the same documents for every run (each type capped at
  `max_tokens`), stored under eval/<step>.json "cross" -> <general data> so per-type
  comparisons rest on identical, type-balanced text.
  """
  from mambaswelu_jax import evaluation  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.checkpointing import restore  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.data import sources  # pylint: disable=import-outside-toplevel
  plan = comparison_steps(runs)
  general = next((r for r in runs if r.role == "general_long"), None) or next(
      (r for r in runs if r.role == "general_short"), None)
  gen_src = sources.make_source(general.config["data"]) if general is not None else None
  label = general.data_name if general is not None else None
  done = {}
  for r in runs:
    steps = plan.get(r.name) or []
    if not steps:
      log(f"{r.name}: no final params yet; not evaluated")
      continue
    t0 = time.time()
    final_step = r.final_steps[-1]
    results = evaluation.evaluate_run(r.workdir, final_step, splits=("validation", "test"),
                                      max_tokens=max_tokens, log=lambda m: None)
    if gen_src is not None:
      config, tok = restore.load_config_and_tokenizer(r.workdir)
      for s in steps:
        run = restore.load_run(r.workdir, s, config=config, tokenizer=tok)
        path = evaluation.results_path(r.workdir, s)
        if not os.path.exists(path):  # a comparison step: record what it is
          evaluation.write_results(path, {"workdir": r.workdir, "step": s,
                                          "checkpoint": run.kind,
                                          "tokens_seen": s * run.tokens_per_step,
                                          "splits": {}, "benchmarks": {}})
        for split in (("validation", "test") if s == final_step else ("validation",)):
          by_type = {}
          for t in gen_src.text_types:
            res = evaluation.evaluate_split(run, split, max_tokens=max_tokens,
                                            source=sources.TypeFilteredSource(gen_src, [t]))
            by_type[t] = {k: res[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens",
                                              "bytes")}
          _merge_cross(path, label, split, _combine(by_type))
    # Facts for the report: parameters, epochs.
    final = results[-1] if results else {}
    val = final.get("splits", {}).get("validation", {})
    bpt = (val.get("bytes") / val.get("tokens")) if val.get("tokens") else None
    info = runs_lib.load_json(os.path.join(r.workdir, "study_run.json")) or {}
    info.update({"role": r.role, "label": r.label})
    try:
      import ml_collections  # pylint: disable=import-outside-toplevel
      from mambaswelu_jax.models.registry import param_count  # pylint: disable=import-outside-toplevel
      info["num_params"] = param_count(ml_collections.ConfigDict(r.config["model"]))
    except Exception as e:  # pylint: disable=broad-except
      log(f"{r.name}: parameter count unavailable ({e})")
    split_tokens = _train_split_tokens(r, bpt)
    if split_tokens:
      info["train_split_tokens_estimate"] = split_tokens
      info["epochs"] = r.tokens_seen / split_tokens
    _write_json(os.path.join(r.workdir, "study_run.json"), info)
    done[r.name] = steps
    log(f"{r.name}: evaluated step {final_step} on its own data and steps {steps} per text "
        f"type of {label} in {time.time() - t0:.0f} s")
  return done


def generate_study(runs, *, prompts=PROMPTS, max_new_tokens: int = 64, num_samples: int = 3,
                   temperature: float = 0.8, top_p: float = 1.0, seed: int = 0, log=print,
                   root: str = "") -> None:
  """Samples the shared prompts from every run's final params with the evaluation
  engineer's `mambaswelu_jax.cli.gen_quality.compare_runs` (same seed and settings for every
  run; distinct-n, repetition, and every sample scored by every run), then writes each
  run's part to its generations.json (and the whole result to ROOT/generation_quality.json)."""
  from mambaswelu_jax.cli import gen_quality  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.checkpointing import restore  # pylint: disable=import-outside-toplevel
  done = [r for r in runs if r.final_steps]
  if not done:
    log("no run has final params: no generations")
    return
  loaded = [restore.load_run(r.workdir, r.final_steps[-1]) for r in done]
  result = gen_quality.compare_runs(loaded, list(prompts), num_samples=num_samples,
                                    max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p, seed=seed)
  keys = list(result["runs"])  # "<name>@<step>", in the order of `loaded`
  short = {k: r.name for k, r in zip(keys, done)}
  if root:
    _write_json(os.path.join(root, "generation_quality.json"), result)
  for key, r, run in zip(keys, done, loaded):
    part = result["runs"][key]
    per_prompt = [{"prompt": p, "samples": [t for q, t in part["samples"] if q == p]}
                  for p in prompts]
    doc = {"step": run.step, "settings": result["settings"], "prompts": per_prompt,
           "measures": {"all": part["measures"]},
           "self_perplexity": result["perplexity"][key][key],
           "cross_perplexity": {short[s]: v for s, v in result["perplexity"][key].items()
                                if s != key},
           "bits_per_byte": {short[s]: v for s, v in result["bits_per_byte"][key].items()},
           "source": "mambaswelu_jax.cli.gen_quality.compare_runs"}
    _write_json(os.path.join(r.workdir, "generations.json"), doc)
    log(f"{r.name}: {part['measures']['num_samples']} samples, distinct-2 "
        f"{part['measures']['distinct_2']:.3f}, self-perplexity {doc['self_perplexity']:.2f}")


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
  """Whether the Hub resolves and accepts a connection (lm-eval's datasets live there)."""
  if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
    return False
  import socket  # pylint: disable=import-outside-toplevel
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


def benchmarks_study(runs, *, limit: int = 0, log=print) -> str:
  """Runs lm-eval's four tasks on each run's final params when possible.

  Returns a note for the report: what ran, or why nothing did."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("lm_eval") is None:
    return ("lm-eval is not installed here (`pip install -e '.[eval]'`), and its task "
            "datasets (LAMBADA, HellaSwag, PIQA, WinoGrande) come from the Hugging Face Hub, "
            "which this machine cannot reach: no benchmark was run.")
  if not hub_reachable():
    return ("lm-eval is installed, but its task datasets (LAMBADA, HellaSwag, PIQA, "
            "WinoGrande) come from the Hugging Face Hub, which this machine cannot reach "
            "(huggingface.co does not resolve): no benchmark was run.")
  from mambaswelu_jax import evaluation  # pylint: disable=import-outside-toplevel
  notes = []
  for r in runs:
    if not r.final_steps:
      continue
    try:
      evaluation.evaluate_run(r.workdir, r.final_steps[-1], splits=(), benchmarks=BENCHMARKS,
                              benchmark_limit=limit, log=lambda m: None)
      notes.append(f"{r.name}: benchmarks run")
    except Exception as e:  # pylint: disable=broad-except
      notes.append(f"{r.name}: benchmarks failed ({type(e).__name__}: {str(e)[:200]})")
  for n in notes:
    log(n)
  return "; ".join(notes)


def reload(runs):
  """Fresh RunRecord for the same workdirs (after files were written)."""
  specs = {s.name: s for scale in runs_lib.SCALES.values() for s in scale}
  return [collect.RunRecord.load(r.workdir, specs.get(r.name)) for r in runs]
