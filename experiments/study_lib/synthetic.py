"""Synthetic workdirs with the layout a real run writes, for tests and report previews.

  write_run(workdir, ...)       config.json, metrics.jsonl (a power-law loss curve plus
                                noise, SWELU scalars, grad norms), train.log, checkpoint /
                                snapshot / final step directories, eval/<step>.json with
                                per-type splits, generations.json
  write_study(root, specs)      the three study roles with plausible differences

Nothing here trains anything; the numbers follow L(D) = E + B D^-beta so tests can check
that the fit recovers what was written.
"""

from __future__ import annotations

import json
import math
import os
import random
import time

from mambaswelu_jax import workdir as layout


def curve(d: float, e: float, b: float, beta: float) -> float:
  return e + b * d ** (-beta)


def write_run(workdir: str, *, source: str = "embedded", text_types: str = "",
              tokens_per_parameter: float = 5.0, num_steps: int = 200, batch: int = 16,
              seq_len: int = 128, law=(2.0, 60.0, 0.3), noise: float = 0.0, seed: int = 0,
              eval_every: int = 20, log_every: int = 10, finished: bool = True,
              upto: int | None = None, types=("docstring", "code"), type_offsets=None,
              cross: dict | None = None, generations: bool = True, diverge_at: int | None = None,
              start_time: float | None = None, devices: int = 1) -> None:
  rng = random.Random(seed)
  os.makedirs(workdir, exist_ok=True)
  tps = batch * seq_len
  config = {
      "seed": seed,
      "model": {"vocab_size": 1024, "d_model": 64, "n_layers": 2, "activation": "swelu"},
      "data": {"source": source, "text_types": text_types, "seq_len": seq_len,
               "tokens_per_parameter": tokens_per_parameter},
      "train": {"global_batch_size": batch, "num_steps": num_steps, "grad_clip_norm": 1.0,
                "learning_rate": 3e-3},
      "checkpoint": {"every_steps": 50, "snapshot_every_steps": eval_every},
      "eval": {"every_steps": eval_every},
  }
  with open(os.path.join(workdir, layout.CONFIG), "w", encoding="utf-8") as f:
    json.dump(config, f)
  last = num_steps if upto is None else upto
  e, b, beta = law
  sites = ["blocks/0/mixer/conv_act", "blocks/0/out_act", "dense/acts/0"]
  with open(os.path.join(workdir, layout.METRICS), "w", encoding="utf-8") as f:
    for step in range(log_every, last + 1, log_every):
      d = step * tps
      loss = curve(d, e, b, beta) + 0.05 + rng.gauss(0, noise)
      if diverge_at is not None and step >= diverge_at:
        loss = loss + 0.5 * (step - diverge_at + log_every) / log_every
      rec = {"step": step, "train_loss": loss, "learning_rate": 3e-3, "grad_norm":
             0.5 + rng.random(), "tokens_per_second": 5000.0 + rng.random(), "step_time":
             tps / 5000.0, "tokens_seen": float(d), "skipped_documents": 0.0}
      for i, s in enumerate(sites):
        rec[f"swelu/{s}/k"] = 1.0 - 0.1 * i * step / num_steps
        rec[f"swelu/{s}/lambda"] = 1.0 + 0.05 * step / num_steps
      if step % eval_every == 0:
        vl = curve(d, e, b, beta) + rng.gauss(0, noise)
        rec.update({"validation_loss": vl, "validation_perplexity": math.exp(vl),
                    "validation_bits_per_byte": vl / math.log(2) / 3.0})
      f.write(json.dumps(rec) + "\n")
  # Checkpoints, snapshots, final.
  for kind, every in ((layout.CHECKPOINTS, 50), (layout.SNAPSHOTS, eval_every)):
    for step in range(every, last + 1, every):
      os.makedirs(os.path.join(workdir, kind, str(step)), exist_ok=True)
  if finished and last >= num_steps:
    os.makedirs(os.path.join(workdir, layout.FINAL, str(num_steps)), exist_ok=True)
  # train.log: one process, 0.4 s per step.
  t0 = start_time if start_time is not None else time.time() - 0.4 * last - 60
  stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
  with open(os.path.join(workdir, layout.TRAIN_LOG), "w", encoding="utf-8") as f:
    f.write(f"{stamp(t0)} I run {workdir}: {devices} device(s) cpu over 1 process(es); ...\n")
    f.write(f"{stamp(t0 + 0.4 * last)} I step {last}/{num_steps}\n")
    if finished and last >= num_steps:
      f.write(f"{stamp(t0 + 0.4 * last + 1)} I done at step {num_steps} in 1m\n")
  # Evaluations: the final step and the midpoint, per type.
  offsets = type_offsets or {t: 0.1 * i for i, t in enumerate(types)}
  own_types = [t for t in types if not text_types or t in text_types.split(",")]

  def split_result(step, tlist):
    d = step * tps
    base = curve(d, e, b, beta)
    by = {t: _fig(base + offsets.get(t, 0.0), 10000, 30000) for t in tlist}
    tot = _fig(base + sum(offsets.get(t, 0) for t in tlist) / len(tlist), 10000 * len(tlist),
               30000 * len(tlist))
    tot["by_type"] = by
    return tot

  if finished and last >= num_steps:
    os.makedirs(os.path.join(workdir, layout.EVAL), exist_ok=True)
    for step in sorted({num_steps, (num_steps // 2) // eval_every * eval_every}):
      doc = {"step": step, "tokens_seen": step * tps, "checkpoint": layout.FINAL,
             "splits": {"validation": split_result(step, own_types),
                        "test": split_result(step, own_types)}, "benchmarks": {}}
      if cross:
        doc["cross"] = {label: {"validation": split_result(step, list(tl))}
                        for label, tl in cross.items()}
      with open(os.path.join(workdir, layout.EVAL, f"{step}.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f)
    if generations:
      gen = {"step": num_steps, "settings": {"temperature": 0.8, "max_new_tokens": 40},
             "prompts": [{"prompt": "def ", "samples": [f"foo_{seed}(x):\n    return x"]},
                         {"prompt": "The future of", "samples": ["the the the the the"]}]}
      gen["measures"] = {"all": {"distinct_1": 0.5, "distinct_2": 0.6, "distinct_3": 0.7,
                                 "repetition_4": 0.1, "mean_words": 5.0}}
      gen["self_perplexity"] = 12.0
      gen["cross_perplexity"] = {"other": 20.0}
      with open(os.path.join(workdir, "generations.json"), "w", encoding="utf-8") as f:
        json.dump(gen, f)


def _fig(loss, tokens, nbytes):
  return {"loss": loss, "perplexity": math.exp(loss),
          "bits_per_byte": loss * tokens / (math.log(2) * nbytes), "tokens": tokens,
          "bytes": nbytes}


def write_study(root: str, specs) -> dict:
  """The three roles: general long/short share a law; the specific run is trained on
  one type (better there, worse elsewhere). Returns {role: workdir}."""
  out = {}
  for spec in specs:
    wd = os.path.join(root, spec.name)
    if spec.role == "general_long":
      write_run(wd, num_steps=200, tokens_per_parameter=5.0, seed=1)
    elif spec.role == "general_short":
      write_run(wd, num_steps=40, tokens_per_parameter=1.0, seed=2, law=(2.1, 60.0, 0.3))
    else:
      write_run(wd, num_steps=200, tokens_per_parameter=5.0, seed=3, text_types="docstring",
                type_offsets={"docstring": -0.2, "code": 0.6},
                cross={"embedded": ("docstring", "code")})
    out[spec.role] = wd
  return out
