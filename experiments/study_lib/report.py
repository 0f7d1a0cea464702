"""The study report: Markdown plus PNG figures, from the runs' workdirs alone.

  build_report(runs, out_dir, title=..., notes=[...]) -> path of out_dir/README.md

Sections: runs; loss against tokens (train and validation, one figure) and stability;
perplexity and bits per byte (final, best, per text type); benchmarks beside published
figures; shared-prompt generations side by side with diversity measures; cost; the
SWELU k and lambda of every site; the hypotheses H1-H3, each answered from the data
with its evidence and caveats; the power-law fits L(D) = E + B D^-beta.

This module assembles the page; the sections live by concern: the numbers in
analysis.py, the hypotheses in hypotheses.py, the plots in figures.py, and the Markdown
in markdown.py (shared with the questions report). A section whose runs or numbers are
missing says what is missing and how to produce it, instead of disappearing. Without
matplotlib the report is written without figures and says so.
"""

from __future__ import annotations

import os

from study_lib import analysis
from study_lib import figures
from study_lib import hypotheses
from study_lib import markdown as md

CONTENTS = ("Contents: 1 runs · 2 loss & stability · 3 perplexity · 4 benchmarks · "
            "5 generations · 6 cost · 7 SWELU · 8 hypotheses · 9 power laws")


def build_report(runs, out_dir: str, *, title: str = "MambaSWELU study report",
                 notes: list[str] | None = None, benchmark_note: str = "",
                 command: str = "") -> str:
  os.makedirs(out_dir, exist_ok=True)
  figs = figures.Figures(out_dir)
  fits = analysis.power_law_fits(runs)
  lines = md.page_head(title, len(runs), "experiments/compare.py", command, notes)
  if figs.error:
    lines += [f"> Figures not drawn: {figs.error}.", ""]
  if not runs:
    lines += ["No runs found (no ROOT/<run>/config.json)."]
    return md.write_page(out_dir, lines)
  lines += [CONTENTS, ""]
  for section in (analysis.section_runs(runs), analysis.section_loss(runs, figs),
                  analysis.section_perplexity(runs, figs),
                  analysis.section_benchmarks(runs, benchmark_note),
                  analysis.section_generations(runs), analysis.section_cost(runs),
                  analysis.section_swelu(runs, figs),
                  hypotheses.section_hypotheses(runs, fits),
                  analysis.section_power_law(fits)):
    lines += section + [""]
  power_law_figure = figs.powerlaw(fits)
  if power_law_figure:
    lines += [f"![power-law fits]({power_law_figure})", ""]
  return md.write_page(out_dir, lines)
