"""The study report: Markdown plus PNG figures, from the runs' workdirs alone.

  build_report(runs, out_dir, title=..., notes=[...]) -> path of out_dir/README.md

Sections: runs; loss against tokens (train and validation, one figure) and stability;
perplexity and bits per byte (final, best, per text type); benchmarks beside published
figures; shared-prompt generations side by side with diversity measures; cost; the
SWELU k and lambda of every site; the hypotheses H1-H3, each answered from the data
with its evidence and caveats; the power-law fits L(D) = E + B D^-beta.

Runs play roles (RunData.role): general_long (SlimPajama 100x), general_short
(SlimPajama 20x), specific_long (Wikipedia 100x). A section whose runs or numbers are
missing says what is missing and how to produce it, instead of disappearing.
matplotlib is imported only here, when figures are drawn; without it the report is
written without figures and says so.
"""

from __future__ import annotations

import html
import math
import os
import time

from experiments.study_lib import collect
from experiments.study_lib import powerlaw
from experiments.study_lib import published
from experiments.study_lib import status as status_lib

finite = collect.finite
ROLE_NAMES = {
    "general_long": "general data, long budget (SlimPajama LLaMA)",
    "general_short": "general data, short budget (SlimPajama Chinchilla)",
    "specific_long": "specific data, long budget (Wikipedia LLaMA)",
}
# The specific run's text type as it appears inside the general corpus.
SPECIFIC_TYPE_IN_GENERAL = {"wikipedia": "RedPajamaWikipedia"}
LN2 = math.log(2.0)


def _f(x, fmt=".3f", dash="-"):
  return format(x, fmt) if finite(x) else dash


def _hours(seconds: float) -> str:
  if not finite(seconds) or seconds <= 0:
    return "-"
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.2f} h"


def _tok(n) -> str:
  if not finite(n):
    return "-"
  for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= div:
      return f"{n / div:.3g}{unit}"
  return f"{n:.0f}"


def by_role(runs, role):
  for r in runs:
    if r.role == role:
      return r
  return None


def table(head: list[str], rows: list[list[str]]) -> list[str]:
  out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return out


# ----------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------


class Figures:
  """Draws into out_dir; every method returns the file name or None."""

  def __init__(self, out_dir: str):
    self.out_dir = out_dir
    self.error = None
    try:
      import matplotlib  # pylint: disable=import-outside-toplevel
      matplotlib.use("Agg")
      import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
      self.plt = plt
    except ImportError as e:
      self.plt = None
      self.error = f"matplotlib is not installed ({e}); pip install -e '.[study]'"

  def _save(self, fig, name):
    path = os.path.join(self.out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    self.plt.close(fig)
    return name

  def loss(self, runs):
    if not self.plt:
      return None
    fig, ax = self.plt.subplots(figsize=(8, 4.8))
    for i, r in enumerate(runs):
      c = f"C{i}"
      x, y = r.series("train_loss")
      if x:
        ax.plot(x, y, color=c, alpha=0.25, lw=0.8)
        ax.plot(x, status_lib.ema(y, 0.2), color=c, lw=1.4, label=f"{r.name} train (EMA)")
      vx, vy = r.series("validation_loss")
      if vx:
        ax.plot(vx, vy, color=c, lw=1.6, ls="--", marker="o", ms=3, label=f"{r.name} validation")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("Loss against tokens")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return self._save(fig, "loss_vs_tokens.png")

  def stability(self, runs):
    if not self.plt:
      return None
    fig, axes = self.plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for i, r in enumerate(runs):
      x, g = r.series("grad_norm")
      if x:
        axes[0].plot(x, g, color=f"C{i}", lw=1, label=r.name)
      x, lr = r.series("learning_rate")
      if x:
        axes[1].plot(x, lr, color=f"C{i}", lw=1, label=r.name)
    axes[0].set_ylabel("gradient norm\n(before clipping)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("learning rate")
    axes[1].set_xlabel("tokens seen")
    for ax in axes:
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    axes[0].set_title("Stability: gradient norm and schedule")
    return self._save(fig, "stability.png")

  def per_type(self, rows, types, run_names):
    """rows: {run: {type: bits_per_byte}}"""
    if not self.plt or not rows or not types:
      return None
    fig, ax = self.plt.subplots(figsize=(max(5, 1.6 * len(types) + 2), 4))
    w = 0.8 / max(1, len(run_names))
    for i, name in enumerate(run_names):
      vals = [rows.get(name, {}).get(t, float("nan")) for t in types]
      ax.bar([j + i * w for j in range(len(types))], vals, w, label=name, color=f"C{i}")
    ax.set_xticks([j + w * (len(run_names) - 1) / 2 for j in range(len(types))])
    ax.set_xticklabels(types, rotation=20)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Final validation bits per byte by text type")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return self._save(fig, "per_type_bits_per_byte.png")

  def swelu(self, runs):
    if not self.plt:
      return None
    runs = [r for r in runs if r.swelu_sites()]
    if not runs:
      return None
    fig, axes = self.plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6), squeeze=False,
                                  sharey="row")
    for j, r in enumerate(runs):
      for i, site in enumerate(r.swelu_sites()):
        for row, key in enumerate(("k", "lambda")):
          x, y = r.series(f"swelu/{site}/{key}")
          if x:
            axes[row][j].plot(x, y, lw=1, color=f"C{i % 10}",
                              ls="-" if i < 10 else "--", label=site)
      axes[0][j].set_title(r.name, fontsize=9)
      axes[1][j].set_xlabel("tokens seen")
    axes[0][0].set_ylabel("k (shape)")
    axes[1][0].set_ylabel("λ (scale)")
    for ax in axes.flat:
      ax.grid(alpha=0.3)
      ax.ticklabel_format(style="sci", axis="x", scilimits=(0, 0))
    axes[0][-1].legend(fontsize=6, loc="best")
    return self._save(fig, "swelu_k_lambda.png")

  def powerlaw(self, fits):
    """fits: [(run, xs, ys, fit or None, targets)]"""
    if not self.plt or not fits:
      return None
    import numpy as np  # pylint: disable=import-outside-toplevel
    fig, ax = self.plt.subplots(figsize=(8, 4.8))
    for i, (r, xs, ys, fit, targets) in enumerate(fits):
      c = f"C{i}"
      ax.plot(xs, ys, "o", color=c, ms=3, label=f"{r.name} (validation)")
      if fit is not None:
        inside = np.geomspace(fit.d_min, fit.d_max, 100)
        ax.plot(inside, fit.predict(inside), color=c, lw=1.4,
                label=f"fit E={fit.E:.2f} β={fit.beta:.2f}")
        far = max([fit.d_max * 4] + [t for t in targets if finite(t)])
        beyond = np.geomspace(fit.d_max, far, 50)
        ax.plot(beyond, fit.predict(beyond), color=c, lw=1.2, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen D")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title("L(D) = E + B·D^-β; dotted: extrapolation beyond the data")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return self._save(fig, "power_law.png")


# ----------------------------------------------------------------------------
# Analyses shared by sections.
# ----------------------------------------------------------------------------


def fit_run(r, warmup_fraction: float = 0.1):
  """(xs, ys, fit or None, why not) on the run's validation curve, skipping the first
  `warmup_fraction` of its tokens (warmup: the curve there is not a power law)."""
  xs, ys, where = r.validation_curve()
  if not xs:
    return xs, ys, None, "no validation points", where
  cut = warmup_fraction * max(xs)
  pts = [(x, y) for x, y in zip(xs, ys) if x >= cut]
  fx, fy = [p[0] for p in pts], [p[1] for p in pts]
  try:
    fit = powerlaw.fit_power_law(fx, fy)
  except ValueError as e:
    return xs, ys, None, str(e), where
  return xs, ys, fit, "", where


def eval_noise(r) -> float | None:
  """Scale of evaluation noise: the scatter of successive validation losses over the
  last third of the run around a straight line in log-tokens (nats)."""
  xs, ys = r.series("validation_loss")
  n = len(xs)
  if n < 6:
    return None
  xs, ys = xs[-max(4, n // 3):], ys[-max(4, n // 3):]
  import numpy as np  # pylint: disable=import-outside-toplevel
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
      rows[r.name] = {t: f for t, f in (res.get("by_type") or {}).items()}
      rows[r.name]["(all)"] = {k: res.get(k) for k in ("loss", "perplexity", "bits_per_byte",
                                                       "tokens", "bytes")}
  return rows, notes


def _verdict(delta: float, noise: float | None, better: str, worse: str) -> str:
  if not finite(delta):
    return "undetermined"
  if noise is not None and abs(delta) <= 2 * noise:
    return f"no clear difference (|Δ| = {abs(delta):.3f} ≤ 2 × evaluation noise {noise:.3f})"
  return f"{better} is better by {abs(delta):.3f}" if delta > 0 else \
      f"{worse} is better by {abs(delta):.3f}"


# ----------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------


def section_runs(runs) -> list[str]:
  rows = []
  for r in runs:
    ratio = r.cfg("data", "tokens_per_parameter")
    st = ("finished" if r.finished else f"step {r.step}/{r.num_steps}")
    rows.append([f"`{r.name}`", ROLE_NAMES.get(r.role, r.role or "-"), r.label, r.data_name,
                 _f(ratio, "g"), f"{r.num_params:,}" if r.num_params else "-",
                 f"{r.num_steps:,}", _tok(r.planned_tokens), _tok(r.tokens_seen), st])
  out = ["## 1. The runs", ""]
  out += table(["run", "role", "stands for", "data", "tokens/param", "parameters", "steps",
                "planned tokens", "tokens seen", "state"], rows)
  return out


def section_loss(runs, figs) -> list[str]:
  out = ["## 2. Loss against tokens, and stability", ""]
  f = figs.loss(runs)
  if f:
    out += [f"![loss against tokens]({f})", ""]
  out += ["Train loss is the mean over each logging interval (faint) and its EMA; the "
          "validation loss is the trainer's periodic evaluation on the run's own validation "
          "split (a fixed subset, `eval.max_batches`). Runs on different data have different "
          "validation sets: compare them on the per-type table (section 3), not here.", ""]
  rows = []
  for r in runs:
    _, losses = r.series("train_loss")
    raw = [rec.get("train_loss") for rec in r.metrics if "train_loss" in rec]
    nonfinite = sum(1 for v in raw if not finite(v))
    sp = collect.spikes(losses)
    _, g = r.series("grad_norm")
    clip = r.cfg("train", "grad_clip_norm", default=0) or 0
    clipped = sum(1 for v in g if clip and v > clip)
    skipped = {}
    for rec in r.metrics:
      for k, v in rec.items():
        if "skipped" in k and isinstance(v, (int, float)):
          skipped[k] = v
    why = status_lib.divergence(raw)
    rows.append([f"`{r.name}`", str(len(raw)), str(nonfinite), str(len(sp)),
                 _f(max(g) if g else None, ".2f"), _f(sorted(g)[len(g) // 2] if g else None, ".2f"),
                 f"{clipped}/{len(g)}" if clip else "no clipping",
                 ", ".join(f"{k} {v:g}" for k, v in sorted(skipped.items())) or "-",
                 why or "none"])
  fs = figs.stability(runs)
  out += table(["run", "logged intervals", "non-finite", "loss spikes (>3σ above EMA)",
                "max grad norm", "median grad norm", "intervals with mean norm > clip",
                "skipped data/updates", "divergence"], rows)
  if fs:
    out += ["", f"![gradient norm and learning rate]({fs})"]
  return out


def section_perplexity(runs, figs) -> list[str]:
  out = ["## 3. Perplexity and bits per byte", ""]
  rows = []
  for r in runs:
    fv, bv = r.final_validation(), r.best_validation()
    ev = r.eval_at(r.final_steps[-1] if r.final_steps else None) or r.eval_at()
    sv = (ev or {}).get("splits", {})
    val, test = sv.get("validation"), sv.get("test")
    rows.append([f"`{r.name}`",
                 f"{_f((fv or {}).get('perplexity'), '.2f')} / {_f((fv or {}).get('bits_per_byte'))}"
                 + (f" @{fv['step']}" if fv else ""),
                 f"{_f((bv or {}).get('perplexity'), '.2f')} / {_f((bv or {}).get('bits_per_byte'))}"
                 + (f" @{bv['step']}" if bv else ""),
                 (f"{_f(val.get('perplexity'), '.2f')} / {_f(val.get('bits_per_byte'))}"
                  if val else "not evaluated"),
                 (f"{_f(test.get('perplexity'), '.2f')} / {_f(test.get('bits_per_byte'))}"
                  if test else "not evaluated"),
                 f"{ev['step']}" if ev else "-"])
  out += table(["run", "trainer validation, final: ppl / bits/byte",
                "trainer validation, best", "eval tool: validation", "eval tool: test",
                "evaluated step"], rows)
  out += ["", "Perplexities compare only between runs sharing a tokenizer (the study's runs do); "
          "bits per byte compares with anything. The trainer's figures use a fixed subset of the "
          "validation split; the eval tool's (`python -m mambaswelu_jax.eval`) cover "
          "`--max_tokens` of each split in source order.", ""]
  general = by_role(runs, "general_long") or by_role(runs, "general_short")
  final_of = lambda r: r.final_steps[-1] if r.final_steps and r.final_steps[-1] in r.evals \
      else (max(r.evals) if r.evals else None)
  out += ["Per text type: where the study's evaluation stage ran, every run is scored on the "
          "same documents of the general run's data, one text type at a time (each type capped "
          "at the same number of tokens, so a large type does not crowd out a small one); "
          "otherwise the eval tool's own per-type split of the run's own data.", ""]
  for split in ("validation", "test"):
    rows_t, notes = per_type_rows(runs, split, final_of, general)
    if not rows_t:
      out += [f"Per text type ({split}): no evaluation found. Run "
              f"`python -m mambaswelu_jax.eval --workdir=DIR --step=final` for each run.", ""]
      continue
    types = []
    for v in rows_t.values():
      types += [t for t in v if t not in types and t != "(all)"]
    types += ["(all)"]
    head = ["text type"] + [f"`{n}` ({notes[n]})" for n in rows_t]
    body = []
    for t in types:
      cells = [t]
      for n in rows_t:
        f = rows_t[n].get(t)
        cells.append(f"{_f(f.get('perplexity'), '.2f')} / {_f(f.get('bits_per_byte'))} "
                     f"({_tok(f.get('tokens'))} tok)" if f else "-")
      body.append(cells)
    out += [f"Per text type, {split} split, final parameters: perplexity / bits per byte "
            f"(tokens scored):", ""] + table(head, body) + [""]
    if split == "validation":
      fig = figs.per_type({n: {t: (rows_t[n].get(t) or {}).get("bits_per_byte", float("nan"))
                               for t in types} for n in rows_t}, types, list(rows_t))
      if fig:
        out += [f"![bits per byte by type]({fig})", ""]
  return out


def section_benchmarks(runs, benchmark_note: str = "") -> list[str]:
  out = ["## 4. Benchmarks beside published models of this size", ""]
  ours = {}
  for r in runs:
    ev = r.eval_at()
    ours[r.name] = (ev or {}).get("benchmarks") or {}
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
                + [p["source"] + ("" if p["verified"] else
                                  " — **not verified** against the paper here; check before citing")])
  out += table(head, rows)
  missing = [m for m, p in published.PUBLISHED.items() if p.get("missing")]
  out += [""] + [f"- {m}: {published.PUBLISHED[m]['missing']}" for m in missing]
  if not any(ours.values()):
    out += ["", "**Our runs have no benchmark results.** " + (benchmark_note or
            "The benchmarks run through lm-eval (`pip install -e '.[eval]'`, then `python -m "
            "mambaswelu_jax.eval --workdir=DIR --step=final --benchmarks=lambada_openai,hellaswag,"
            "piqa,winogrande`), which downloads the task datasets from the Hugging Face Hub; "
            "this machine cannot reach it, so the cells read 'not run'.")]
  out += ["", "Accuracies in percent, zero-shot; LAMBADA as accuracy / perplexity. The published "
          "models saw 300B tokens (Pythia, Mamba) or WebText (GPT-2): at the study's 2.5-12B "
          "tokens, expect lower figures; at toy scale, chance level (25% HellaSwag, 50% PIQA and "
          "WinoGrande, ~0% LAMBADA)."]
  return out


def section_generations(runs) -> list[str]:
  out = ["## 5. Shared-prompt generations", ""]
  gens = {r.name: r.generations for r in runs if r.generations}
  if not gens:
    return out + ["No generations.json in any workdir. `python experiments/run_study.py "
                  "--stage=generate --root=ROOT` samples every run on the shared prompts."]
  first = next(iter(gens.values()))
  settings = first.get("settings", {})
  steps = ", ".join(f"{n}: {g.get('step')}" for n, g in gens.items())
  out += [f"Settings: {', '.join(f'{k}={v}' for k, v in sorted(settings.items()))}; "
          f"parameters of step {steps}.", ""]
  prompts = []
  for g in gens.values():
    for p in g.get("prompts", []):
      if p["prompt"] not in prompts:
        prompts.append(p["prompt"])
  for prompt in prompts:
    out += [f"### Prompt: `{prompt}`", "", "<table><tr>" + "".join(
        f"<th>{html.escape(n)}</th>" for n in gens) + "</tr><tr>"]
    cells = []
    for n, g in gens.items():
      p = next((x for x in g.get("prompts", []) if x["prompt"] == prompt), None)
      text = (p or {}).get("samples", ["(none)"])[0]
      cells.append(f"<td valign=\"top\"><pre>{html.escape(prompt)}<b>{html.escape(text)}</b>"
                   f"</pre></td>")
    out += ["".join(cells) + "</tr></table>", ""]
  rows = []
  for n, g in gens.items():
    m = g.get("measures", {}).get("all", {})
    cross = g.get("cross_perplexity", {})
    bpb = g.get("bits_per_byte", {})
    rows.append([f"`{n}`", _f(m.get("distinct_1")), _f(m.get("distinct_2")),
                 _f(m.get("distinct_3")), _f(m.get("repetition_4")), _f(m.get("mean_words"), ".1f"),
                 _f(g.get("self_perplexity"), ".2f"),
                 ", ".join(f"{k}: {v:.2f}" for k, v in sorted(cross.items()) if finite(v)) or "-",
                 ", ".join(f"{k}: {v:.2f}" for k, v in bpb.items() if finite(v)) or "-"])
  out += ["Diversity and fluency over all samples of each run (prompts × samples):", ""]
  out += table(["run", "distinct-1", "distinct-2", "distinct-3", "repeated 4-grams",
                "mean words", "self-perplexity", "cross-perplexity (scored by run)",
                "bits/byte of the samples (scored by run)"], rows)
  out += ["", "Measured with `mambaswelu_jax.gen_quality` (same seed and settings for every run). "
          "distinct-n: unique / all whitespace n-grams over the run's samples (higher = more "
          "diverse); repeated 4-grams: share of a sample's 4-grams seen earlier in it (loops). "
          "Self-perplexity: the generating model's own perplexity of its samples; cross-"
          "perplexity: another run's perplexity of them — a fluency proxy judged by a different "
          "model (a low value under a model trained on other data means the text is typical "
          "beyond the generator's own quirks). No human judgement of coherence or factuality "
          "was made: treat these as measurements, not verdicts."]
  return out


def section_cost(runs) -> list[str]:
  out = ["## 6. Cost", ""]
  rows = []
  for r in runs:
    fv = r.final_validation()
    first = next((rec for rec in r.metrics if finite(rec.get("validation_loss"))), None)
    dh = r.device_hours
    gain = (first["validation_loss"] - fv["loss"]) if (fv and first) else None
    tps = r.median_tokens_per_second()
    rows.append([f"`{r.name}`", _hours(r.wall_seconds), f"{r.devices} × {r.device_kind}",
                 _f(dh, ".3f"), _f(tps, ",.0f"),
                 _tok(r.tokens_seen / dh) if dh else "-",
                 _f((fv or {}).get("bits_per_byte")),
                 _f(gain / dh if (gain is not None and dh) else None, ".3f"),
                 str(len(r.segments))])
  out += table(["run", "wall-clock (training processes)", "devices", "device-hours",
                "median tokens/s", "tokens per device-hour", "final validation bits/byte",
                "validation loss drop per device-hour (nats)", "process starts"], rows)
  out += ["", "Wall-clock sums the training processes' lives in train.log (restarts "
          "included, downtime between them excluded); device-hours multiply by the devices each "
          "process used (GPU-hours on GPUs; on a CPU, one 'device' is the whole host). "
          "Quality per device-hour is the drop of the trainer's validation loss from its first "
          "evaluation, per device-hour: it favours short runs, whose loss falls fastest early."]
  return out


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
      cells.append(f"{_f(k[-1] if k else None)} / {_f(lam[-1] if lam else None)}")
    rows.append(cells)
  out += ["Final values, k / λ (both start at the config's `swelu_k_init` / "
          "`swelu_lambda_init`):", ""]
  out += table(["site"] + [f"`{r.name}`" for r in runs], rows)
  moved = []
  for r in runs:
    for s in r.swelu_sites():
      _, k = r.series(f"swelu/{s}/k")
      if len(k) >= 2 and abs(k[-1] - k[0]) > 0.1:
        moved.append(f"{r.name} {s}: k {k[0]:.2f} → {k[-1]:.2f}")
  out += ["", ("Sites whose k moved by more than 0.1: " + "; ".join(moved[:12])
               + (" ..." if len(moved) > 12 else "")) if moved else
          "No site's k moved by more than 0.1: at this budget SWELU stays near its "
          "initial shape."]
  return out


def section_hypotheses(runs, fits) -> list[str]:
  out = ["## 8. The hypotheses", ""]
  gl, gs, sl = (by_role(runs, "general_long"), by_role(runs, "general_short"),
                by_role(runs, "specific_long"))
  noise = eval_noise(gl) if gl else None
  out += [f"Evaluation noise used below: {_f(noise, '.4f')} nats — the scatter of the long "
          f"general run's late validation losses around their trend (differences within twice "
          f"this are not called differences). One seed per run: seed-to-seed variation is not "
          f"measured and can be larger.", ""]

  # --- H1.
  out += ["### H1 — general data (SlimPajama) versus specific data (Wikipedia)", ""]
  if not (gl and sl):
    out += ["Needs the general long run and the specific long run; missing: "
            + ", ".join(n for n, r in (("general_long", gl), ("specific_long", sl)) if not r)]
  else:
    step_of = lambda r: r.final_steps[-1] if r.final_steps and r.final_steps[-1] in r.evals \
        else (max(r.evals) if r.evals else None)
    rows, notes = per_type_rows([gl, sl], "validation", step_of, gl)
    spec_types = [SPECIFIC_TYPE_IN_GENERAL.get(t, t) for t in (sl.text_types or ["wikipedia"])]
    if gl.name in rows and sl.name in rows:
      g, s = rows[gl.name], rows[sl.name]
      common = [t for t in g if t in s and t != "(all)"]
      spec = [t for t in common if t in spec_types]
      other = [t for t in common if t not in spec_types]
      lines = []
      for t in spec + other:
        d = g[t]["bits_per_byte"] - s[t]["bits_per_byte"]
        lines.append([t, "specific (its own kind)" if t in spec else "general (other kinds)",
                      _f(g[t]["bits_per_byte"]), _f(s[t]["bits_per_byte"]), f"{d:+.3f}",
                      "specific run better" if d > 0 else "general run better" if d < 0
                      else "equal"])
      out += [f"Final validation bits per byte per text type: `{gl.name}` "
              f"({notes.get(gl.name, '')}), `{sl.name}` ({notes.get(sl.name, '')}). "
              f"Δ = general − specific (positive: the specific run is better on that type).", ""]
      out += table(["text type", "kind", f"`{gl.name}`", f"`{sl.name}`", "Δ bits/byte",
                    "reading"], lines)
      if not other:
        out += ["", f"**Incomplete:** `{sl.name}` has no cross-evaluation on the general data, so "
                f"only its own text type compares. Run `python experiments/run_study.py "
                f"--stage=evaluate --root=ROOT` (it evaluates the specific run on the general "
                f"validation split too)."]
      sp_d = [g[t]["bits_per_byte"] - s[t]["bits_per_byte"] for t in spec]
      ot_d = [g[t]["bits_per_byte"] - s[t]["bits_per_byte"] for t in other]
      ans = []
      if sp_d:
        ans.append(("supported" if min(sp_d) > 0 else "not supported")
                   + f" — on its own kind of text the specific run is "
                   f"{'better' if min(sp_d) > 0 else 'not better'} "
                   f"(Δ {', '.join(f'{x:+.3f}' for x in sp_d)} bits/byte)")
      if ot_d:
        ans.append(("supported" if max(ot_d) < 0 else "mixed" if min(ot_d) < 0 else
                    "not supported")
                   + f" — on the other kinds the general run is "
                   f"{'better' if max(ot_d) < 0 else 'not uniformly better'} "
                   f"(Δ {', '.join(f'{x:+.3f}' for x in ot_d)})")
      whole = ""
      if "(all)" in g and "(all)" in s and other:
        dw = g["(all)"]["bits_per_byte"] - s["(all)"]["bits_per_byte"]
        whole = (f" Over all types together (each weighted by the tokens scored) the "
                 f"{'specific' if dw > 0 else 'general'} run is ahead (Δ {dw:+.3f}), so which "
                 f"'generalises better' depends on how the types are weighted.")
      out += ["", "**Answer.** 'The specific run is better on its own text': "
              + (ans[0] if sp_d else "undetermined") + ". 'The general run generalises better': "
              + (ans[1] if len(ans) > 1 else "undetermined (no other text types evaluated)") + "."
              + whole]
    else:
      out += ["No per-type evaluation of both runs yet (eval/<step>.json)."]
    out += ["", "Caveats: both runs saw the same number of tokens, but the specific corpus is "
            "smaller, so it was repeated more (epochs below, section H3); the per-type figures "
            "rest on one evaluation of each run; the general run's data contains the specific "
            "kind of text too, so it is not a pure 'other' model."]

  # --- H2.
  out += ["", "### H2 — 20x versus 100x tokens per parameter", ""]
  if not (gl and gs):
    out += ["Needs the general long and short runs; missing: "
            + ", ".join(n for n, r in (("general_long", gl), ("general_short", gs)) if not r)]
  else:
    sx, sy = gs.series("validation_loss")
    lx, ly = gl.series("validation_loss")
    if sx and lx:
      d_short = sx[-1]
      long_at = collect.interpolate(lx, ly, d_short)
      d_eq = (long_at - sy[-1]) if long_at is not None else None
      d_end = sy[-1] - ly[-1]
      ratio = gl.cfg("data", "tokens_per_parameter"), gs.cfg("data", "tokens_per_parameter")
      out += table(["comparison", f"`{gs.name}` ({_f(ratio[1], 'g')}x)",
                    f"`{gl.name}` ({_f(ratio[0], 'g')}x)", "Δ (short − long)", "reading"], [
          [f"validation loss at equal tokens ({_tok(d_short)}, the short run's end)",
           _f(sy[-1], ".4f"),
           _f(long_at, ".4f") + " (interpolated)" if long_at is not None else "-",
           _f(-d_eq if d_eq is not None else None, "+.4f"),
           _verdict(d_eq if d_eq is not None else float("nan"), noise, gs.name, gl.name)
           .replace("is better", "is lower")],
          [f"validation loss at each run's end ({_tok(sx[-1])} vs {_tok(lx[-1])})",
           _f(sy[-1], ".4f"), _f(ly[-1], ".4f"), _f(d_end, "+.4f"),
           _verdict(d_end, noise, gl.name, gs.name).replace("is better", "is lower")],
      ])
      fit_s = next((f for r, _, _, f, _ in fits if r is gs and f is not None), None)
      pred = ""
      if fit_s is not None:
        p = float(fit_s.predict(lx[-1]))
        pred = (f" The short run's power law predicts {p:.4f} at the long run's {_tok(lx[-1])} "
                f"tokens ({fit_s.extrapolation(lx[-1])}); the long run reached {ly[-1]:.4f}.")
      if d_eq is None:
        faster = "undetermined (the long run's curve does not reach that many tokens)"
      elif noise is not None and abs(d_eq) <= 2 * noise:
        faster = "not distinguishable"
      else:
        faster = "supported" if d_eq > 0 else "not supported"
      out += ["", f"**Answer.** 'The 20x run converges faster': "
              f"{faster} at equal tokens — the short run "
              f"has finished its learning-rate decay there while the long run is still at a "
              f"high rate, so this measures the schedule as much as the data. "
              f"'The 100x run ends better': "
              f"{'supported' if d_end > (2 * noise if noise else 0) else 'not supported'} "
              f"(Δ {d_end:+.4f} nats, {d_end / LN2:+.4f} bits per token)." + pred]
      out += ["", "Caveats: the same validation subset for both; one seed; the schedules differ "
              "in length (cosine to 10% over each run's own steps), which is the point of the "
              "comparison but means snapshots of the long run at equal tokens are not what a "
              "run trained for that many tokens would reach."]
    else:
      out += ["No validation losses in metrics.jsonl of one of the runs."]

  # --- H3.
  out += ["", "### H3 — quality versus quantity at equal tokens", ""]
  if not (gl and sl):
    out += ["Needs the general and specific long runs."]
  else:
    rows = []
    steps = sorted(set(gl.evals) & set(sl.evals))
    spec_types = [SPECIFIC_TYPE_IN_GENERAL.get(t, t) for t in (sl.text_types or ["wikipedia"])]
    for s in steps:
      g = gl.split_result("validation", s, on=gl.data_name) or gl.split_result("validation", s)
      sv = sl.split_result("validation", s, on=gl.data_name) or sl.split_result("validation", s)
      if not g or not sv:
        continue
      for t in spec_types + ["(all)"]:
        gf = g if t == "(all)" else (g.get("by_type") or {}).get(t)
        sf = sv if t == "(all)" else (sv.get("by_type") or {}).get(t)
        if t == "(all)" and not sl.split_result("validation", s, on=gl.data_name):
          sf = None  # its own 'all' is another set of documents
        if gf and sf:
          d = gf["bits_per_byte"] - sf["bits_per_byte"]
          rows.append([str(s), _tok(s * gl.tokens_per_step), t if t != "(all)" else
                       "all of the general data", _f(gf["bits_per_byte"]), _f(sf["bits_per_byte"]),
                       f"{d:+.3f}"])
    if rows:
      out += [f"Bits per byte of both long runs at the same steps (so the same tokens seen), on "
              f"the specific kind of text and on the whole general validation set (each text "
              f"type capped at the same token count, so weighted equally). Δ = "
              f"`{gl.name}` − `{sl.name}`.", ""]
      out += table(["step", "tokens", "evaluated on", f"`{gl.name}`", f"`{sl.name}`", "Δ"], rows)
      spec_rows = [r for r in rows if r[2] in spec_types]
      all_rows = [r for r in rows if r[2] == "all of the general data"]
      if spec_rows:
        last = float(spec_rows[-1][5])
        ans = (f"**Answer.** At equal tokens, the specific data "
               f"{'wins' if last > 0 else 'does not win'} on its own kind of text at the last "
               f"common step (Δ {last:+.3f} bits/byte")
        ans += (f"; at every compared step it is {'ahead' if all(float(r[5]) > 0 for r in spec_rows) else 'not always ahead'}")
        if all_rows:
          la = float(all_rows[-1][5])
          ans += (f"; on the general data as a whole (types weighted equally) it is "
                  f"{'ahead too' if la > 0 else 'behind'} (Δ {la:+.3f})")
        gaps = [float(r[5]) for r in spec_rows]
        trend = ""
        if len(gaps) >= 2:
          trend = (f" The gap on its own kind of text went {gaps[-2]:+.3f} → {gaps[-1]:+.3f} "
                   f"between the last two compared steps ("
                   f"{'narrowing' if abs(gaps[-1]) < abs(gaps[-2]) else 'widening'}).")
        out += ["", ans + ")." + trend + " Within this budget the smaller, more uniform corpus "
                "is not yet penalised for its size; the runs cannot say where repetition would "
                "start to cost it (a longer specific run, or one at equal epochs, would)."]
    else:
      out += ["No common evaluated steps of the two long runs (eval/<step>.json). "
              "`python experiments/run_study.py --stage=evaluate` evaluates both at the same "
              "snapshot steps."]
    ep = []
    for r in (gl, sl):
      e = r.cfg("study", "epochs")
      info = collect.runs_lib.load_json(os.path.join(r.workdir, "study_run.json")) or {}
      e = info.get("epochs", e)
      if finite(e):
        ep.append(f"`{r.name}` {e:.2f}")
    out += ["", "Epochs over the training split: " + (", ".join(ep) if ep else
            "unknown (the train split's token count was not recorded in study_run.json)")
            + ". Repetition is part of what 'quantity' costs the smaller corpus."]
  return out


def section_power_law(runs, fits) -> list[str]:
  out = ["## 9. Power-law fits L(D) = E + B·D^-β", ""]
  rows = []
  for r, xs, ys, fit, targets in fits:
    if fit is None:
      rows.append([f"`{r.name}`", "-", "-", "-", "-", "-", f"{len(xs)}", "-", "-",
                   getattr(r, "_fit_why", "no fit")])
      continue
    preds = []
    for t in targets:
      if finite(t):
        preds.append(f"{float(fit.predict(t)):.3f} at {_tok(t)} ({fit.extrapolation(t)})")
    note = fit.note
    if fit.E == 0.0:
      note = "; ".join(x for x in (note, "E pinned at 0: no floor is visible inside the data, "
                                   "so E and β trade off (large errors)") if x)
    rows.append([f"`{r.name}`", f"{fit.E:.3f} ± {fit.E_se:.3f}", f"{fit.B:.3g} ± {fit.B_se:.2g}",
                 f"{fit.beta:.3f} ± {fit.beta_se:.3f}", f"{fit.r2:.4f}", f"{fit.rmse:.4f}",
                 str(fit.n), f"{_tok(fit.d_min)} – {_tok(fit.d_max)}", "; ".join(preds) or "-",
                 note or "-"])
  out += table(["run", "E (nats)", "B", "β", "R²", "RMSE", "points", "fitted D range",
                "predicted loss", "note"], rows)
  out += ["", "Fitted to each run's validation curve (the eval tool's per-step results when at "
          "least four steps were evaluated, else the trainer's periodic validation loss), "
          "leaving out the first 10% of tokens (warmup). Errors are one standard error from the "
          "fit's Jacobian. Inside one run the learning rate decays with D, so this curve "
          "mixes data and schedule: E is not an irreducible loss, and predictions beyond the "
          "fitted range (marked) assume the same schedule shape stretched, which no run did."]
  return out


# ----------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------


def build_report(runs, out_dir: str, *, title: str = "MambaSWELU study report",
                 notes: list[str] | None = None, benchmark_note: str = "",
                 command: str = "") -> str:
  os.makedirs(out_dir, exist_ok=True)
  figs = Figures(out_dir)
  fits = []
  targets = sorted({r.planned_tokens for r in runs if r.planned_tokens})
  for r in runs:
    xs, ys, fit, why, _ = fit_run(r)
    r._fit_why = why  # pylint: disable=protected-access
    own = [t for t in targets if t > (fit.d_max if fit else 0)]
    fits.append((r, xs, ys, fit, own[:2] + ([10 * fit.d_max] if fit else [])))
  lines = [f"# {title}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
           f"{len(runs)} run(s) by `experiments/compare.py`"
           + (f": `{command}`" if command else "") + ".", ""]
  if notes:
    lines += [f"> {n}" for n in notes] + [""]
  if figs.error:
    lines += [f"> Figures not drawn: {figs.error}.", ""]
  if not runs:
    lines += ["No runs found (no ROOT/<run>/config.json)."]
  else:
    lines += ["Contents: 1 runs · 2 loss & stability · 3 perplexity · 4 benchmarks · "
              "5 generations · 6 cost · 7 SWELU · 8 hypotheses · 9 power laws", ""]
    for sec in (section_runs(runs), section_loss(runs, figs), section_perplexity(runs, figs),
                section_benchmarks(runs, benchmark_note), section_generations(runs),
                section_cost(runs), section_swelu(runs, figs), section_hypotheses(runs, fits),
                section_power_law(runs, fits)):
      lines += sec + [""]
    pf = figs.powerlaw(fits)
    if pf:
      lines += [f"![power-law fits]({pf})", ""]
  path = os.path.join(out_dir, "README.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines).rstrip() + "\n")
  return path
