"""The study report's numbers: what the runs are, their losses and stability, perplexity
and bits per byte, benchmarks, generations, cost, SWELU's k and λ, and the power-law fits
L(D) = E + B D^-beta; with the measurements the hypotheses reuse (the runs by role, the
final evaluated step, the evaluation noise, per-type results on a common footing).

Runs play roles (RunRecord.role): general_long (SlimPajama 100x), general_short
(SlimPajama 20x), specific_long (Wikipedia 100x).
"""

from __future__ import annotations

import html
from typing import Any, NamedTuple

import numpy as np

from study_lib import collect
from study_lib import markdown as md
from study_lib import powerlaw
from study_lib import published
from study_lib import status as status_lib

ROLE_NAMES = {
    "general_long": "general data, long budget (SlimPajama LLaMA)",
    "general_short": "general data, short budget (SlimPajama Chinchilla)",
    "specific_long": "specific data, long budget (Wikipedia LLaMA)",
}


# ----------------------------------------------------------------------------
# Measurements shared by the sections and the hypotheses.
# ----------------------------------------------------------------------------


def by_role(runs, role):
  """The first run playing `role`, or None."""
  return next((r for r in runs if r.role == role), None)


def final_eval_step(r):
  """The step of the run's final parameters when they were evaluated, else its latest
  evaluated step (None when it has no evaluation)."""
  if r.final_steps and r.final_steps[-1] in r.evals:
    return r.final_steps[-1]
  return max(r.evals) if r.evals else None


class RunFit(NamedTuple):
  """A run's validation curve and the power law fitted to it."""
  run: Any
  tokens: list
  losses: list
  fit: powerlaw.PowerLawFit | None
  why_not: str          # why there is no fit ('' when there is one)
  targets: list         # token counts beyond the fitted range to predict the loss at


def fit_run(r, warmup_fraction: float = 0.1):
  """(tokens, losses, fit or None, why not) of the run's validation curve, fitted
  without the first `warmup_fraction` of its tokens (warmup: the curve there is not a
  power law)."""
  xs, ys, _ = r.validation_curve()
  if not xs:
    return xs, ys, None, "no validation points"
  cut = warmup_fraction * max(xs)
  pts = [(x, y) for x, y in zip(xs, ys) if x >= cut]
  try:
    fit = powerlaw.fit_power_law([p[0] for p in pts], [p[1] for p in pts])
  except ValueError as e:
    return xs, ys, None, str(e)
  return xs, ys, fit, ""


def power_law_fits(runs) -> list[RunFit]:
  """Every run's fit, to be extrapolated to the next two planned budgets of the study
  beyond its data and to ten times its data."""
  planned = sorted({r.planned_tokens for r in runs if r.planned_tokens})
  fits = []
  for r in runs:
    xs, ys, fit, why_not = fit_run(r)
    beyond = [t for t in planned if t > (fit.d_max if fit else 0)]
    fits.append(RunFit(r, xs, ys, fit, why_not,
                       beyond[:2] + ([10 * fit.d_max] if fit else [])))
  return fits


def eval_noise(r) -> float | None:
  """Scale of evaluation noise: the scatter of successive validation losses over the
  last third of the run around a straight line in log-tokens (nats)."""
  xs, ys = r.series("validation_loss")
  n = len(xs)
  if n < 6:
    return None
  xs, ys = xs[-max(4, n // 3):], ys[-max(4, n // 3):]
  lx = np.log(np.asarray(xs, float))
  y = np.asarray(ys, float)
  a = np.stack([np.ones_like(lx), lx], 1)
  coef, *_ = np.linalg.lstsq(a, y, rcond=None)
  resid = y - a @ coef
  return float(np.sqrt((resid ** 2).sum() / max(1, len(y) - 2)))


def per_type_rows(runs, split="validation", step_of=None, general=None):
  """{run: {type: figures}} on a common footing: each run's own evaluation, and for a
  run trained on a subset of types, its cross-evaluation on the general data when present.

  Returns (rows, source notes)."""
  rows, notes = {}, {}
  gen_label = general.data_name if general is not None else None
  for r in runs:
    step = step_of(r) if step_of else None
    res = None
    if gen_label:
      res = r.split_result(split, step, on=gen_label)
      if res:
        notes[r.name] = (f"each type of {gen_label} evaluated separately"
                         if r.data_name == gen_label else f"cross-evaluated on {gen_label}")
    if res is None:
      res = r.split_result(split, step)
      if res:
        notes[r.name] = f"own data ({r.data_name})"
    if res:
      rows[r.name] = dict(res.get("by_type") or {})
      rows[r.name]["(all)"] = {k: res.get(k) for k in ("loss", "perplexity", "bits_per_byte",
                                                       "tokens", "bytes")}
  return rows, notes


def _perplexity_and_bits(figures) -> str:
  """'perplexity / bits per byte' of one evaluation's figures."""
  return (f"{md.number(figures.get('perplexity'), '.2f')} / "
          f"{md.number(figures.get('bits_per_byte'))}")


# ----------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------


def section_runs(runs) -> list[str]:
  rows = []
  for r in runs:
    ratio = r.cfg("data", "tokens_per_parameter")
    state = ("finished" if r.finished else f"step {r.step}/{r.num_steps}")
    rows.append([f"`{r.name}`", ROLE_NAMES.get(r.role, r.role or "-"), r.label, r.data_name,
                 md.number(ratio, "g"), f"{r.num_params:,}" if r.num_params else "-",
                 f"{r.num_steps:,}", md.tokens(r.planned_tokens), md.tokens(r.tokens_seen),
                 state])
  return ["## 1. The runs", ""] + md.table(
      ["run", "role", "stands for", "data", "tokens/param", "parameters", "steps",
       "planned tokens", "tokens seen", "state"], rows)


def _stability_row(r) -> list[str]:
  """Logged intervals, non-finite losses, spikes, gradient norms, skips, divergence."""
  _, losses = r.series("train_loss")
  raw = [rec.get("train_loss") for rec in r.metrics if "train_loss" in rec]
  nonfinite = sum(1 for v in raw if not md.finite(v))
  _, g = r.series("grad_norm")
  clip = r.cfg("train", "grad_clip_norm", default=0) or 0
  clipped = sum(1 for v in g if clip and v > clip)
  skipped = {}
  for rec in r.metrics:
    for k, v in rec.items():
      if "skipped" in k and isinstance(v, (int, float)):
        skipped[k] = v
  return [f"`{r.name}`", str(len(raw)), str(nonfinite), str(len(collect.spikes(losses))),
          md.number(max(g) if g else None, ".2f"),
          md.number(sorted(g)[len(g) // 2] if g else None, ".2f"),
          f"{clipped}/{len(g)}" if clip else "no clipping",
          ", ".join(f"{k} {v:g}" for k, v in sorted(skipped.items())) or "-",
          status_lib.divergence(raw) or "none"]


def section_loss(runs, figs) -> list[str]:
  out = ["## 2. Loss against tokens, and stability", ""]
  f = figs.loss(runs)
  if f:
    out += [f"![loss against tokens]({f})", ""]
  out += ["Train loss is the mean over each logging interval (faint) and its EMA; the "
          "validation loss is the trainer's periodic evaluation on the run's own validation "
          "split (a fixed subset, `eval.max_batches`). Runs on different data have different "
          "validation sets: compare them on the per-type table (section 3), not here.", ""]
  rows = [_stability_row(r) for r in runs]
  fs = figs.stability(runs)
  out += md.table(["run", "logged intervals", "non-finite", "loss spikes (>3σ above EMA)",
                   "max grad norm", "median grad norm", "intervals with mean norm > clip",
                   "skipped data/updates", "divergence"], rows)
  if fs:
    out += ["", f"![gradient norm and learning rate]({fs})"]
  return out


def _validation_cell(figures) -> str:
  """The trainer's final or best validation, with its step."""
  return _perplexity_and_bits(figures or {}) + (f" @{figures['step']}" if figures else "")


def _final_figures_table(runs) -> list[str]:
  rows = []
  for r in runs:
    ev = r.eval_at(r.final_steps[-1] if r.final_steps else None) or r.eval_at()
    sv = (ev or {}).get("splits", {})
    val, test = sv.get("validation"), sv.get("test")
    rows.append([f"`{r.name}`", _validation_cell(r.final_validation()),
                 _validation_cell(r.best_validation()),
                 _perplexity_and_bits(val) if val else "not evaluated",
                 _perplexity_and_bits(test) if test else "not evaluated",
                 f"{ev['step']}" if ev else "-"])
  return md.table(["run", "trainer validation, final: ppl / bits/byte",
                   "trainer validation, best", "eval tool: validation", "eval tool: test",
                   "evaluated step"], rows)


def _per_type_table(runs, split, general, figs) -> list[str]:
  """One split's per-type table of every run (and, for validation, its figure)."""
  rows, notes = per_type_rows(runs, split, final_eval_step, general)
  if not rows:
    return [f"Per text type ({split}): no evaluation found. Run "
            f"`python -m mambaswelu_jax.cli.eval --workdir=DIR --step=final` for each run.", ""]
  types = []
  for v in rows.values():
    types += [t for t in v if t not in types and t != "(all)"]
  types += ["(all)"]
  head = ["text type"] + [f"`{n}` ({notes[n]})" for n in rows]
  body = []
  for t in types:
    cells = [t]
    for n in rows:
      f = rows[n].get(t)
      cells.append(f"{_perplexity_and_bits(f)} ({md.tokens(f.get('tokens'))} tok)" if f else "-")
    body.append(cells)
  out = [f"Per text type, {split} split, final parameters: perplexity / bits per byte "
         f"(tokens scored):", ""] + md.table(head, body) + [""]
  if split == "validation":
    fig = figs.per_type({n: {t: (rows[n].get(t) or {}).get("bits_per_byte", float("nan"))
                             for t in types} for n in rows}, types, list(rows))
    if fig:
      out += [f"![bits per byte by type]({fig})", ""]
  return out


def section_perplexity(runs, figs) -> list[str]:
  out = ["## 3. Perplexity and bits per byte", ""] + _final_figures_table(runs)
  out += ["", "Perplexities compare only between runs sharing a tokenizer (the study's runs do); "
          "bits per byte compares with anything. The trainer's figures use a fixed subset of the "
          "validation split; the eval tool's (`python -m mambaswelu_jax.cli.eval`) cover "
          "`--max_tokens` of each split in source order.", ""]
  out += ["Per text type: where the study's evaluation stage ran, every run is scored on the "
          "same documents of the general run's data, one text type at a time (each type capped "
          "at the same number of tokens, so a large type does not crowd out a small one); "
          "otherwise the eval tool's own per-type split of the run's own data.", ""]
  general = by_role(runs, "general_long") or by_role(runs, "general_short")
  for split in ("validation", "test"):
    out += _per_type_table(runs, split, general, figs)
  return out


def section_benchmarks(runs, benchmark_note: str = "") -> list[str]:
  out = ["## 4. Benchmarks beside published models of this size", ""]
  ours = {r.name: (r.eval_at() or {}).get("benchmarks") or {} for r in runs}
  head = ["model", "parameters", "training data"] + [published.METRIC_NAMES[t]
                                                    for t in published.BENCHMARKS] + ["source"]
  rows = []
  for r in runs:
    rows.append([f"`{r.name}` (ours)", f"{r.num_params:,}" if r.num_params else "-", r.data_name]
                + [published.our_cell(t, ours[r.name].get(t, {})) for t in published.BENCHMARKS]
                + ["this study"])
  for model, p in published.PUBLISHED.items():
    rows.append([model, p["params"], p["data"]]
                + [published.cell(t, p["figures"]) for t in published.BENCHMARKS]
                + [p["source"] + ("" if p["verified"] else " — **not verified** against the "
                                  "paper here; check before citing")])
  out += md.table(head, rows)
  missing = [m for m, p in published.PUBLISHED.items() if p.get("missing")]
  out += [""] + [f"- {m}: {published.PUBLISHED[m]['missing']}" for m in missing]
  if not any(ours.values()):
    out += ["", "**Our runs have no benchmark results.** " + (benchmark_note or
            "The benchmarks run through lm-eval (`pip install -e '.[eval]'`, then `python -m "
            "mambaswelu_jax.cli.eval --workdir=DIR --step=final --benchmarks=lambada_openai,hellaswag,"
            "piqa,winogrande`), which downloads the task datasets from the Hugging Face Hub; "
            "this machine cannot reach it, so the cells read 'not run'.")]
  out += ["", "Accuracies in percent, zero-shot; LAMBADA as accuracy / perplexity. The published "
          "models saw 300B tokens (Pythia, Mamba) or WebText (GPT-2): at the study's 2.5-12B "
          "tokens, expect lower figures; at toy scale, chance level (25% HellaSwag, 50% PIQA and "
          "WinoGrande, ~0% LAMBADA)."]
  return out


def _side_by_side(gens) -> list[str]:
  """Every shared prompt's first sample of each run, in an HTML table per prompt."""
  prompts = []
  for g in gens.values():
    for p in g.get("prompts", []):
      if p["prompt"] not in prompts:
        prompts.append(p["prompt"])
  out = []
  for prompt in prompts:
    out += [f"### Prompt: `{prompt}`", "", "<table><tr>" + "".join(
        f"<th>{html.escape(n)}</th>" for n in gens) + "</tr><tr>"]
    cells = []
    for g in gens.values():
      p = next((x for x in g.get("prompts", []) if x["prompt"] == prompt), None)
      text = (p or {}).get("samples", ["(none)"])[0]
      cells.append(f"<td valign=\"top\"><pre>{html.escape(prompt)}<b>{html.escape(text)}</b>"
                   f"</pre></td>")
    out += ["".join(cells) + "</tr></table>", ""]
  return out


def _generation_measures_row(name, g) -> list[str]:
  m = g.get("measures", {}).get("all", {})
  cross = g.get("cross_perplexity", {})
  bpb = g.get("bits_per_byte", {})
  return [f"`{name}`", md.number(m.get("distinct_1")), md.number(m.get("distinct_2")),
          md.number(m.get("distinct_3")), md.number(m.get("repetition_4")),
          md.number(m.get("mean_words"), ".1f"), md.number(g.get("self_perplexity"), ".2f"),
          ", ".join(f"{k}: {v:.2f}" for k, v in sorted(cross.items()) if md.finite(v)) or "-",
          ", ".join(f"{k}: {v:.2f}" for k, v in bpb.items() if md.finite(v)) or "-"]


def section_generations(runs) -> list[str]:
  out = ["## 5. Shared-prompt generations", ""]
  gens = {r.name: r.generations for r in runs if r.generations}
  if not gens:
    return out + ["No generations.json in any workdir. `python experiments/run_study.py "
                  "--stage=generate --root=ROOT` samples every run on the shared prompts."]
  settings = next(iter(gens.values())).get("settings", {})
  steps = ", ".join(f"{n}: {g.get('step')}" for n, g in gens.items())
  out += [f"Settings: {', '.join(f'{k}={v}' for k, v in sorted(settings.items()))}; "
          f"parameters of step {steps}.", ""]
  out += _side_by_side(gens)
  out += ["Diversity and fluency over all samples of each run (prompts × samples):", ""]
  out += md.table(["run", "distinct-1", "distinct-2", "distinct-3", "repeated 4-grams",
                   "mean words", "self-perplexity", "cross-perplexity (scored by run)",
                   "bits/byte of the samples (scored by run)"],
                  [_generation_measures_row(n, g) for n, g in gens.items()])
  out += ["", "Measured with `mambaswelu_jax.cli.gen_quality` (same seed and settings for every run). "
          "distinct-n: unique / all whitespace n-grams over the run's samples (higher = more "
          "diverse); repeated 4-grams: share of a sample's 4-grams seen earlier in it (loops). "
          "Self-perplexity: the generating model's own perplexity of its samples; cross-"
          "perplexity: another run's perplexity of them — a fluency proxy judged by a different "
          "model (a low value under a model trained on other data means the text is typical "
          "beyond the generator's own quirks). No human judgement of coherence or factuality "
          "was made: treat these as measurements, not verdicts."]
  return out


def _cost_row(r) -> list[str]:
  fv = r.final_validation()
  first = next((rec for rec in r.metrics if md.finite(rec.get("validation_loss"))), None)
  dh = r.device_hours
  gain = (first["validation_loss"] - fv["loss"]) if (fv and first) else None
  return [f"`{r.name}`", md.duration(r.wall_seconds), f"{r.devices} × {r.device_kind}",
          md.number(dh, ".3f"), md.number(r.median_tokens_per_second(), ",.0f"),
          md.tokens(r.tokens_seen / dh) if dh else "-",
          md.number((fv or {}).get("bits_per_byte")),
          md.number(gain / dh if (gain is not None and dh) else None, ".3f"),
          str(len(r.segments))]


def section_cost(runs) -> list[str]:
  out = ["## 6. Cost", ""]
  out += md.table(["run", "wall-clock (training processes)", "devices", "device-hours",
                   "median tokens/s", "tokens per device-hour", "final validation bits/byte",
                   "validation loss drop per device-hour (nats)", "process starts"],
                  [_cost_row(r) for r in runs])
  out += ["", "Wall-clock sums the training processes' lives in train.log (restarts "
          "included, downtime between them excluded); device-hours multiply by the devices each "
          "process used (GPU-hours on GPUs; on a CPU, one 'device' is the whole host). "
          "Quality per device-hour is the drop of the trainer's validation loss from its first "
          "evaluation, per device-hour: it favours short runs, whose loss falls fastest early."]
  return out


def _moved_sites(runs) -> list[str]:
  """'run site: k a → b' of every site whose k moved by more than 0.1."""
  moved = []
  for r in runs:
    for s in r.swelu_sites():
      _, k = r.series(f"swelu/{s}/k")
      if len(k) >= 2 and abs(k[-1] - k[0]) > 0.1:
        moved.append(f"{r.name} {s}: k {k[0]:.2f} → {k[-1]:.2f}")
  return moved


def section_swelu(runs, figs) -> list[str]:
  out = ["## 7. SWELU k and λ over training", ""]
  f = figs.swelu(runs)
  if f:
    out += [f"![SWELU k and lambda]({f})", ""]
  sites = []
  for r in runs:
    sites += [s for s in r.swelu_sites() if s not in sites]
  if not sites:
    return out + ["No `swelu/...` scalars in metrics.jsonl (the model's activation is not "
                  "SWELU, or the trainer did not log them)."]
  rows = []
  for s in sites:
    cells = [f"`{s}`"]
    for r in runs:
      _, k = r.series(f"swelu/{s}/k")
      _, lam = r.series(f"swelu/{s}/lambda")
      cells.append(f"{md.number(k[-1] if k else None)} / {md.number(lam[-1] if lam else None)}")
    rows.append(cells)
  out += ["Final values, k / λ (both start at the config's `swelu_k_init` / "
          "`swelu_lambda_init`):", ""]
  out += md.table(["site"] + [f"`{r.name}`" for r in runs], rows)
  moved = _moved_sites(runs)
  out += ["", ("Sites whose k moved by more than 0.1: " + "; ".join(moved[:12])
               + (" ..." if len(moved) > 12 else "")) if moved else
          "No site's k moved by more than 0.1: at this budget SWELU stays near its "
          "initial shape."]
  return out


def _power_law_row(run_fit: RunFit) -> list[str]:
  r, fit = run_fit.run, run_fit.fit
  if fit is None:
    return [f"`{r.name}`", "-", "-", "-", "-", "-", f"{len(run_fit.tokens)}", "-", "-",
            run_fit.why_not]
  preds = [f"{float(fit.predict(t)):.3f} at {md.tokens(t)} ({fit.extrapolation(t)})"
           for t in run_fit.targets if md.finite(t)]
  note = fit.note
  if fit.E == 0.0:
    note = "; ".join(x for x in (note, "E pinned at 0: no floor is visible inside the data, "
                                 "so E and β trade off (large errors)") if x)
  return [f"`{r.name}`", f"{fit.E:.3f} ± {fit.E_se:.3f}", f"{fit.B:.3g} ± {fit.B_se:.2g}",
          f"{fit.beta:.3f} ± {fit.beta_se:.3f}", f"{fit.r2:.4f}", f"{fit.rmse:.4f}",
          str(fit.n), f"{md.tokens(fit.d_min)} – {md.tokens(fit.d_max)}",
          "; ".join(preds) or "-", note or "-"]


def section_power_law(fits: list[RunFit]) -> list[str]:
  out = ["## 9. Power-law fits L(D) = E + B·D^-β", ""]
  out += md.table(["run", "E (nats)", "B", "β", "R²", "RMSE", "points", "fitted D range",
                   "predicted loss", "note"], [_power_law_row(f) for f in fits])
  out += ["", "Fitted to each run's validation curve (the eval tool's per-step results when at "
          "least four steps were evaluated, else the trainer's periodic validation loss), "
          "leaving out the first 10% of tokens (warmup). Errors are one standard error from the "
          "fit's Jacobian. Inside one run the learning rate decays with D, so this curve "
          "mixes data and schedule: E is not an irreducible loss, and predictions beyond the "
          "fitted range (marked) assume the same schedule shape stretched, which no run did."]
  return out
