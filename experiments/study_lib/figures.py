"""The study report's figures (matplotlib, PNG), and loading and saving pyplot for both
reports.

matplotlib is imported only when a report draws; without it `load_pyplot` says why and
every figure is None, so the report is written without figures and says so.
"""

from __future__ import annotations

import os

from study_lib import status as status_lib


def load_pyplot():
  """(pyplot on the Agg backend, None), or (None, why not) when matplotlib is missing."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return None, f"matplotlib is not installed ({e}); pip install -e '.[study]'"
  return plt, None


def save(plt, fig, out_dir: str, name: str) -> str:
  """Writes the figure to out_dir/name, closes it and returns the name."""
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, name), dpi=110)
  plt.close(fig)
  return name


def _label_against_log_tokens(ax, xlabel: str, ylabel: str, title: str) -> None:
  """Log-scaled tokens on x, labels, a grid and the legend."""
  ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)


class Figures:
  """Draws into out_dir; every method returns the file name or None."""

  def __init__(self, out_dir: str):
    self.out_dir = out_dir
    self.plt, self.error = load_pyplot()

  def _save(self, fig, name):
    return save(self.plt, fig, self.out_dir, name)

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
    _label_against_log_tokens(ax, "tokens seen", "loss (nats / token)", "Loss against tokens")
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
    """fits: [analysis.RunFit], each run's validation points and its fit, if any."""
    if not self.plt or not fits:
      return None
    import numpy as np  # pylint: disable=import-outside-toplevel
    fig, ax = self.plt.subplots(figsize=(8, 4.8))
    for i, run_fit in enumerate(fits):
      c = f"C{i}"
      fit = run_fit.fit
      ax.plot(run_fit.tokens, run_fit.losses, "o", color=c, ms=3,
              label=f"{run_fit.run.name} (validation)")
      if fit is not None:
        inside = np.geomspace(fit.d_min, fit.d_max, 100)
        ax.plot(inside, fit.predict(inside), color=c, lw=1.4,
                label=f"fit E={fit.E:.2f} β={fit.beta:.2f}")
        far = max([fit.d_max * 4] + [t for t in run_fit.targets if status_lib.finite(t)])
        beyond = np.geomspace(fit.d_max, far, 50)
        ax.plot(beyond, fit.predict(beyond), color=c, lw=1.2, ls=":")
    _label_against_log_tokens(ax, "tokens seen D", "validation loss (nats / token)",
                              "L(D) = E + B·D^-β; dotted: extrapolation beyond the data")
    return self._save(fig, "power_law.png")
