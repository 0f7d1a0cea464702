"""The study's hypotheses, each answered from the runs' data with its evidence and caveats.

  H1  general data (SlimPajama) versus specific data (Wikipedia): each better on its own?
  H2  20x versus 100x tokens per parameter: which converges faster, which ends better?
  H3  quality versus quantity: the specific and general data at equal tokens

A difference within twice the evaluation noise (analysis.eval_noise of the long general
run) is not called a difference. A hypothesis whose runs or evaluations are missing says
what is missing and how to produce it.
"""

from __future__ import annotations

import math
import os

from study_lib import analysis
from study_lib import collect
from study_lib import markdown as md
from study_lib import runs as runs_lib

LN2 = math.log(2.0)
# The specific run's text type as it appears inside the general corpus.
SPECIFIC_TYPE_IN_GENERAL = {"wikipedia": "RedPajamaWikipedia"}
ALL_GENERAL = "all of the general data"    # H3's row of the whole general validation set


def section_hypotheses(runs, fits: list[analysis.RunFit]) -> list[str]:
  general_long = analysis.by_role(runs, "general_long")
  general_short = analysis.by_role(runs, "general_short")
  specific_long = analysis.by_role(runs, "specific_long")
  noise = analysis.eval_noise(general_long) if general_long else None
  out = ["## 8. The hypotheses", "",
         f"Evaluation noise used below: {md.number(noise, '.4f')} nats — the scatter of the "
         f"long general run's late validation losses around their trend (differences within "
         f"twice this are not called differences). One seed per run: seed-to-seed variation "
         f"is not measured and can be larger.", ""]
  out += h1_general_versus_specific(general_long, specific_long)
  out += [""] + h2_tokens_per_parameter(general_long, general_short, fits, noise)
  out += [""] + h3_quality_versus_quantity(general_long, specific_long)
  return out


# ----------------------------------------------------------------------------
# Shared helpers.
# ----------------------------------------------------------------------------


def _needs(what: str, runs_by_role: dict) -> str:
  """The line of a hypothesis whose runs are missing."""
  return (f"Needs {what}; missing: "
          + ", ".join(role for role, r in runs_by_role.items() if not r))


def _specific_types(specific) -> list[str]:
  """The specific run's text types under their names in the general corpus."""
  return [SPECIFIC_TYPE_IN_GENERAL.get(t, t) for t in (specific.text_types or ["wikipedia"])]


def _bits_per_byte_gap(general_figures, specific_figures) -> float:
  """general − specific bits per byte: positive when the specific run is better."""
  return general_figures["bits_per_byte"] - specific_figures["bits_per_byte"]


# ----------------------------------------------------------------------------
# H1: general versus specific data.
# ----------------------------------------------------------------------------


def h1_general_versus_specific(general, specific) -> list[str]:
  out = ["### H1 — general data (SlimPajama) versus specific data (Wikipedia)", ""]
  if not (general and specific):
    return out + [_needs("the general long run and the specific long run",
                         {"general_long": general, "specific_long": specific})]
  rows, notes = analysis.per_type_rows([general, specific], "validation",
                                       analysis.final_eval_step, general)
  if general.name in rows and specific.name in rows:
    out += _h1_per_type_comparison(general, specific, rows, notes)
  else:
    out += ["No per-type evaluation of both runs yet (eval/<step>.json)."]
  return out + ["", "Caveats: both runs saw the same number of tokens, but the specific corpus "
                "is smaller, so it was repeated more (epochs below, section H3); the per-type "
                "figures rest on one evaluation of each run; the general run's data contains "
                "the specific kind of text too, so it is not a pure 'other' model."]


def _h1_per_type_comparison(general, specific, rows, notes) -> list[str]:
  """The per-type table of both runs and the answer read from it."""
  g, s = rows[general.name], rows[specific.name]
  spec_types = _specific_types(specific)
  common = [t for t in g if t in s and t != "(all)"]
  own = [t for t in common if t in spec_types]
  other = [t for t in common if t not in spec_types]
  gaps = {t: _bits_per_byte_gap(g[t], s[t]) for t in own + other}
  lines = [[t, "specific (its own kind)" if t in own else "general (other kinds)",
            md.number(g[t]["bits_per_byte"]), md.number(s[t]["bits_per_byte"]),
            f"{gaps[t]:+.3f}",
            "specific run better" if gaps[t] > 0 else "general run better" if gaps[t] < 0
            else "equal"] for t in own + other]
  out = [f"Final validation bits per byte per text type: `{general.name}` "
         f"({notes.get(general.name, '')}), `{specific.name}` ({notes.get(specific.name, '')}). "
         f"Δ = general − specific (positive: the specific run is better on that type).", ""]
  out += md.table(["text type", "kind", f"`{general.name}`", f"`{specific.name}`",
                   "Δ bits/byte", "reading"], lines)
  if not other:
    out += ["", f"**Incomplete:** `{specific.name}` has no cross-evaluation on the general "
            f"data, so only its own text type compares. Run `python experiments/run_study.py "
            f"--stage=evaluate --root=ROOT` (it evaluates the specific run on the general "
            f"validation split too)."]
  whole = ""
  if "(all)" in g and "(all)" in s and other:
    gap = _bits_per_byte_gap(g["(all)"], s["(all)"])
    whole = (f" Over all types together (each weighted by the tokens scored) the "
             f"{'specific' if gap > 0 else 'general'} run is ahead (Δ {gap:+.3f}), so which "
             f"'generalises better' depends on how the types are weighted.")
  return out + ["", _h1_answer([gaps[t] for t in own], [gaps[t] for t in other]) + whole]


def _h1_answer(own_gaps, other_gaps) -> str:
  """Both halves of H1 from the gaps on the specific run's own types and on the others.
  The generalisation half is answered only beside the own-text half."""
  own_answer = general_answer = None
  if own_gaps:
    better = min(own_gaps) > 0
    own_answer = (("supported" if better else "not supported")
                  + f" — on its own kind of text the specific run is "
                  f"{'better' if better else 'not better'} "
                  f"(Δ {md.numbers(own_gaps, '+.3f', ', ')} bits/byte)")
  if own_gaps and other_gaps:
    better = max(other_gaps) < 0
    general_answer = (("supported" if better else "mixed" if min(other_gaps) < 0 else
                       "not supported")
                      + f" — on the other kinds the general run is "
                      f"{'better' if better else 'not uniformly better'} "
                      f"(Δ {md.numbers(other_gaps, '+.3f', ', ')})")
  return ("**Answer.** 'The specific run is better on its own text': "
          + (own_answer or "undetermined") + ". 'The general run generalises better': "
          + (general_answer or "undetermined (no other text types evaluated)") + ".")


# ----------------------------------------------------------------------------
# H2: 20x versus 100x tokens per parameter.
# ----------------------------------------------------------------------------


def _which_is_lower(delta, noise, if_positive: str, if_negative: str) -> str:
  """Which run's loss is lower by `delta`, unless it is within twice the noise."""
  if not md.finite(delta):
    return "undetermined"
  if noise is not None and abs(delta) <= 2 * noise:
    return f"no clear difference (|Δ| = {abs(delta):.3f} ≤ 2 × evaluation noise {noise:.3f})"
  return f"{if_positive if delta > 0 else if_negative} is lower by {abs(delta):.3f}"


def h2_tokens_per_parameter(long, short, fits, noise) -> list[str]:
  out = ["### H2 — 20x versus 100x tokens per parameter", ""]
  if not (long and short):
    return out + [_needs("the general long and short runs",
                         {"general_long": long, "general_short": short})]
  sx, sy = short.series("validation_loss")
  lx, ly = long.series("validation_loss")
  if not (sx and lx):
    return out + ["No validation losses in metrics.jsonl of one of the runs."]
  long_at_short_end = collect.interpolate(lx, ly, sx[-1])
  # Positive when the short run is lower at equal tokens / the long run lower at the ends.
  gap_equal_tokens = (long_at_short_end - sy[-1]) if long_at_short_end is not None else None
  gap_at_ends = sy[-1] - ly[-1]
  ratio_long = long.cfg("data", "tokens_per_parameter")
  ratio_short = short.cfg("data", "tokens_per_parameter")
  out += md.table(["comparison", f"`{short.name}` ({md.number(ratio_short, 'g')}x)",
                   f"`{long.name}` ({md.number(ratio_long, 'g')}x)", "Δ (short − long)",
                   "reading"], [
      [f"validation loss at equal tokens ({md.tokens(sx[-1])}, the short run's end)",
       md.number(sy[-1], ".4f"),
       (md.number(long_at_short_end, ".4f") + " (interpolated)"
        if long_at_short_end is not None else "-"),
       md.number(-gap_equal_tokens if gap_equal_tokens is not None else None, "+.4f"),
       _which_is_lower(gap_equal_tokens if gap_equal_tokens is not None else float("nan"),
                       noise, short.name, long.name)],
      [f"validation loss at each run's end ({md.tokens(sx[-1])} vs {md.tokens(lx[-1])})",
       md.number(sy[-1], ".4f"), md.number(ly[-1], ".4f"), md.number(gap_at_ends, "+.4f"),
       _which_is_lower(gap_at_ends, noise, long.name, short.name)],
  ])
  short_fit = next((f.fit for f in fits if f.run is short and f.fit is not None), None)
  out += ["", _h2_answer(gap_equal_tokens, gap_at_ends, noise)
          + _h2_prediction(short_fit, lx[-1], ly[-1])]
  return out + ["", "Caveats: the same validation subset for both; one seed; the schedules "
                "differ in length (cosine to 10% over each run's own steps), which is the point "
                "of the comparison but means snapshots of the long run at equal tokens are not "
                "what a run trained for that many tokens would reach."]


def _h2_answer(gap_equal_tokens, gap_at_ends, noise) -> str:
  if gap_equal_tokens is None:
    faster = "undetermined (the long run's curve does not reach that many tokens)"
  elif noise is not None and abs(gap_equal_tokens) <= 2 * noise:
    faster = "not distinguishable"
  else:
    faster = "supported" if gap_equal_tokens > 0 else "not supported"
  ends_better = gap_at_ends > (2 * noise if noise else 0)
  return (f"**Answer.** 'The 20x run converges faster': {faster} at equal tokens — the short "
          f"run has finished its learning-rate decay there while the long run is still at a "
          f"high rate, so this measures the schedule as much as the data. "
          f"'The 100x run ends better': {'supported' if ends_better else 'not supported'} "
          f"(Δ {gap_at_ends:+.4f} nats, {gap_at_ends / LN2:+.4f} bits per token).")


def _h2_prediction(short_fit, long_end_tokens, long_end_loss) -> str:
  """The short run's power law extrapolated to the long run's end, beside what it reached."""
  if short_fit is None:
    return ""
  predicted = float(short_fit.predict(long_end_tokens))
  return (f" The short run's power law predicts {predicted:.4f} at the long run's "
          f"{md.tokens(long_end_tokens)} tokens ({short_fit.extrapolation(long_end_tokens)}); "
          f"the long run reached {long_end_loss:.4f}.")


# ----------------------------------------------------------------------------
# H3: quality versus quantity at equal tokens.
# ----------------------------------------------------------------------------


def h3_quality_versus_quantity(general, specific) -> list[str]:
  out = ["### H3 — quality versus quantity at equal tokens", ""]
  if not (general and specific):
    return out + ["Needs the general and specific long runs."]
  spec_types = _specific_types(specific)
  rows = _h3_rows(general, specific, spec_types)
  if rows:
    out += [f"Bits per byte of both long runs at the same steps (so the same tokens seen), on "
            f"the specific kind of text and on the whole general validation set (each text "
            f"type capped at the same token count, so weighted equally). Δ = "
            f"`{general.name}` − `{specific.name}`.", ""]
    out += md.table(["step", "tokens", "evaluated on", f"`{general.name}`",
                     f"`{specific.name}`", "Δ"], rows)
    # The answer reads the table's Δ as printed (three decimals).
    own_gaps = [float(r[5]) for r in rows if r[2] in spec_types]
    all_gaps = [float(r[5]) for r in rows if r[2] == ALL_GENERAL]
    if own_gaps:
      out += ["", _h3_answer(own_gaps, all_gaps)]
  else:
    out += ["No common evaluated steps of the two long runs (eval/<step>.json). "
            "`python experiments/run_study.py --stage=evaluate` evaluates both at the same "
            "snapshot steps."]
  return out + ["", _epochs_line(general, specific)]


def _h3_rows(general, specific, spec_types) -> list[list[str]]:
  """[step, tokens, evaluated on, general, specific, Δ] at every step both runs were
  evaluated, on the specific kind of text and on all of the general data."""
  rows = []
  on = general.data_name
  for step in sorted(set(general.evals) & set(specific.evals)):
    g = (general.split_result("validation", step, on=on)
         or general.split_result("validation", step))
    specific_cross = specific.split_result("validation", step, on=on)
    sv = specific_cross or specific.split_result("validation", step)
    if not g or not sv:
      continue
    for t in spec_types + ["(all)"]:
      gf = g if t == "(all)" else (g.get("by_type") or {}).get(t)
      # The specific run's own 'all' is another set of documents: only its
      # cross-evaluation compares with the general run's.
      sf = (specific_cross if t == "(all)" else (sv.get("by_type") or {}).get(t))
      if gf and sf:
        rows.append([str(step), md.tokens(step * general.tokens_per_step),
                     t if t != "(all)" else ALL_GENERAL, md.number(gf["bits_per_byte"]),
                     md.number(sf["bits_per_byte"]), f"{_bits_per_byte_gap(gf, sf):+.3f}"])
  return rows


def _h3_answer(own_gaps, all_gaps) -> str:
  last = own_gaps[-1]
  ans = (f"**Answer.** At equal tokens, the specific data "
         f"{'wins' if last > 0 else 'does not win'} on its own kind of text at the last "
         f"common step (Δ {last:+.3f} bits/byte"
         f"; at every compared step it is "
         f"{'ahead' if all(gap > 0 for gap in own_gaps) else 'not always ahead'}")
  if all_gaps:
    ans += (f"; on the general data as a whole (types weighted equally) it is "
            f"{'ahead too' if all_gaps[-1] > 0 else 'behind'} (Δ {all_gaps[-1]:+.3f})")
  trend = ""
  if len(own_gaps) >= 2:
    trend = (f" The gap on its own kind of text went {own_gaps[-2]:+.3f} → {own_gaps[-1]:+.3f} "
             f"between the last two compared steps ("
             f"{'narrowing' if abs(own_gaps[-1]) < abs(own_gaps[-2]) else 'widening'}).")
  return (ans + ")." + trend + " Within this budget the smaller, more uniform corpus "
          "is not yet penalised for its size; the runs cannot say where repetition would "
          "start to cost it (a longer specific run, or one at equal epochs, would).")


def _epochs_line(general, specific) -> str:
  """How many times each long run went over its training split."""
  epochs = []
  for r in (general, specific):
    info = runs_lib.load_json(os.path.join(r.workdir, "study_run.json")) or {}
    e = info.get("epochs", r.cfg("study", "epochs"))
    if md.finite(e):
      epochs.append(f"`{r.name}` {e:.2f}")
  return ("Epochs over the training split: " + (", ".join(epochs) if epochs else
          "unknown (the train split's token count was not recorded in study_run.json)")
          + ". Repetition is part of what 'quantity' costs the smaller corpus.")
