"""L(D) = E + B * D^(-beta): a saturating power law of loss against tokens seen.

`fit_power_law(tokens, losses)` fits by variable projection: for a fixed beta the
model is linear in (E, B), so ordinary least squares gives them exactly; beta is then
found by a bounded one-dimensional search on the residual sum of squares (a log-spaced
grid, then golden-section refinement). No starting guess is needed and the fit cannot
wander off to a local minimum in (E, B). Standard errors come from the Jacobian at the
optimum (Gauss-Newton covariance, residual variance with n - 3 degrees of freedom).

Token counts are scaled by their largest value inside the fit so B stays O(loss);
the returned B is in the caller's units (B_caller = B_scaled * scale^beta).

Fit quality: R^2, RMSE, the largest residual, and `extrapolation(D)`, which says
whether D lies inside the fitted range and how far beyond it (a prediction at 10x the
largest fitted D rests on the power-law form, not on data).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class PowerLawFit:
  E: float
  B: float
  beta: float
  E_se: float
  B_se: float
  beta_se: float
  r2: float
  rmse: float
  max_abs_residual: float
  n: int
  d_min: float
  d_max: float
  beta_at_bound: bool       # the optimum sat on the search bound: beta poorly determined
  note: str = ""

  def predict(self, d) -> np.ndarray:
    d = np.asarray(d, np.float64)
    return self.E + self.B * d ** (-self.beta)

  def extrapolation(self, d: float) -> str:
    """'inside the fitted range' or 'N.Nx beyond the largest fitted D'."""
    if self.d_min <= d <= self.d_max:
      return "inside the fitted range"
    if d > self.d_max:
      return f"{d / self.d_max:.1f}x beyond the largest fitted D"
    return f"{self.d_min / d:.1f}x below the smallest fitted D"

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _linear(x: np.ndarray, y: np.ndarray):
  """Least squares y ~ E + B x; returns (E, B, rss)."""
  a = np.stack([np.ones_like(x), x], 1)
  coef, *_ = np.linalg.lstsq(a, y, rcond=None)
  r = y - a @ coef
  return float(coef[0]), float(coef[1]), float(r @ r)


def fit_power_law(tokens, losses, *, beta_bounds=(1e-3, 3.0), nonnegative_e: bool = True
                  ) -> PowerLawFit:
  """Fits L = E + B D^-beta to (tokens, losses); needs at least 4 finite points."""
  d = np.asarray(tokens, np.float64)
  y = np.asarray(losses, np.float64)
  ok = np.isfinite(d) & np.isfinite(y) & (d > 0)
  d, y = d[ok], y[ok]
  if d.size < 4:
    raise ValueError(f"a power-law fit needs at least 4 points with D > 0, got {d.size}")
  if np.ptp(np.log(d)) < 1e-6:
    raise ValueError("all points have the same D")
  scale = float(d.max())
  x_of = lambda beta: (d / scale) ** (-beta)

  def rss(beta):
    e, b, r = _linear(x_of(beta), y)
    if nonnegative_e and e < 0:  # refit with E = 0: loss cannot fall below zero
      x = x_of(beta)
      b = float((x @ y) / (x @ x))
      r = float(((y - b * x) ** 2).sum())
    return r

  lo, hi = beta_bounds
  grid = np.exp(np.linspace(math.log(lo), math.log(hi), 200))
  values = np.array([rss(b) for b in grid])
  i = int(np.argmin(values))
  a, c = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  # Golden-section refinement on [a, c].
  g = (math.sqrt(5) - 1) / 2
  x1, x2 = c - g * (c - a), a + g * (c - a)
  f1, f2 = rss(x1), rss(x2)
  for _ in range(80):
    if f1 < f2:
      c, x2, f2 = x2, x1, f1
      x1 = c - g * (c - a)
      f1 = rss(x1)
    else:
      a, x1, f1 = x1, x2, f2
      x2 = a + g * (c - a)
      f2 = rss(x2)
  beta = (a + c) / 2
  x = x_of(beta)
  e, b_scaled, r = _linear(x, y)
  if nonnegative_e and e < 0:
    e, b_scaled = 0.0, float((x @ y) / (x @ x))
    r = float(((y - b_scaled * x) ** 2).sum())
  pred = e + b_scaled * x
  resid = y - pred
  n = d.size
  tss = float(((y - y.mean()) ** 2).sum())
  r2 = 1.0 - r / tss if tss > 0 else float("nan")
  # Gauss-Newton covariance in (E, B_scaled, beta).
  jac = np.stack([np.ones_like(x), x, -b_scaled * x * np.log(d / scale)], 1)
  sigma2 = r / max(n - 3, 1)
  try:
    cov = np.linalg.inv(jac.T @ jac) * sigma2
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    cov_bb = cov[1, 1]
  except np.linalg.LinAlgError:
    se, cov_bb = np.full(3, np.nan), float("nan")
  del cov_bb
  # B in the caller's units: B_scaled * (1/scale)^(-beta) = B_scaled * scale^beta.
  b = b_scaled * scale ** beta
  # Delta method for B's error: dB/dB_s = scale^beta, dB/dbeta = B ln(scale).
  b_se = float(math.sqrt((se[1] * scale ** beta) ** 2 + (b * math.log(scale) * se[2]) ** 2)) \
      if np.all(np.isfinite(se)) else float("nan")
  at_bound = bool(beta <= lo * 1.05 or beta >= hi * 0.95)
  note = ""
  if at_bound:
    note = f"beta at its search bound ({lo:g}, {hi:g}): the curve does not pin it down"
  elif n < 6:
    note = f"only {n} points"
  return PowerLawFit(E=e, B=b, beta=float(beta), E_se=float(se[0]), B_se=b_se,
                     beta_se=float(se[2]), r2=float(r2), rmse=float(math.sqrt(r / n)),
                     max_abs_residual=float(np.abs(resid).max()), n=int(n),
                     d_min=float(d.min()), d_max=float(d.max()), beta_at_bound=at_bound,
                     note=note)
