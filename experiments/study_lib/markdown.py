"""Markdown for the study reports: tables, numbers, intervals, the page's head and file.

Shared by the study report (report.py and its sections) and the questions report
(questions.py), so both read the same: a missing or non-finite number is a dash, token
counts and durations use one set of units.
"""

from __future__ import annotations

import os
import time

from study_lib import status as status_lib

finite = status_lib.finite


def table(head: list[str], rows: list[list]) -> list[str]:
  """A Markdown table's lines; cells are written with str()."""
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def number(x, fmt: str = ".3f", dash: str = "-") -> str:
  """`x` formatted with `fmt`, or `dash` when it is missing or not finite."""
  return format(x, fmt) if finite(x) else dash


def numbers(values, fmt: str, sep: str) -> str:
  """Every value formatted with `fmt`, joined by `sep`."""
  return sep.join(format(x, fmt) for x in values)


def tokens(n) -> str:
  """A token count in B, M or k, three significant digits ('12.3M')."""
  if not finite(n):
    return "-"
  for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= div:
      return f"{n / div:.3g}{unit}"
  return f"{n:.0f}"


def duration(seconds) -> str:
  """Minutes under an hour, hours from there on; a dash for none."""
  if not finite(seconds) or seconds <= 0:
    return "-"
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.2f} h"


def standard_error_and_interval(se, ci) -> str:
  """'SE; [low, high]' of a mean difference (signed bounds)."""
  return f"{number(se, '.4f')}; [{number(ci[0], '+.4f')}, {number(ci[1], '+.4f')}]"


def estimate_and_interval(value, ci, fmt: str = ".3f") -> str:
  """'value [low, high]' of a fitted parameter and its confidence interval."""
  return f"{format(value, fmt)} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def page_head(title: str, num_runs: int, generator: str, command: str = "",
              notes=None) -> list[str]:
  """The title, the line saying when, from what and by which command the page was made,
  and the notes as quoted lines."""
  lines = [f"# {title}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {num_runs} "
           f"run(s) by `{generator}`" + (f": `{command}`" if command else "") + ".", ""]
  if notes:
    lines += [f"> {n}" for n in notes] + [""]
  return lines


def write_page(out_dir: str, lines: list[str]) -> str:
  """Writes the lines to out_dir/README.md (one trailing newline); returns its path."""
  path = os.path.join(out_dir, "README.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines).rstrip() + "\n")
  return path
