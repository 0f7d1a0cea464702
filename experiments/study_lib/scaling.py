"""L(N, D) = E + A N^(-alpha) + B D^(-beta): a loss surface over parameters and tokens.

`fit_scaling_law(N, D, L)` fits it by variable projection, like powerlaw.py's L(D): for
fixed exponents (alpha, beta) the model is linear in (E, A, B), solved by non-negative
least squares (E, A, B >= 0: a loss cannot fall below zero and more parameters or tokens
cannot hurt); the exponents are found on a log-spaced 2-D grid of the residual sum of
squares, then refined by Nelder-Mead (scipy). N and D are divided by their largest value
inside the fit so the linear problem is well scaled; A and B are returned in the
caller's units.

`bootstrap_scaling_law(...)` resamples the points (or whole groups of points, e.g. runs)
with replacement and refits: percentile confidence intervals for every parameter and
for the difference of two fits' exponents (`compare_exponents`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

PARAMS = ("E", "A", "alpha", "B", "beta")


@dataclasses.dataclass
class ScalingFit:
  E: float
  A: float
  alpha: float
  B: float
  beta: float
  rss: float
  r2: float
  rmse: float
  n: int
  n_range: tuple
  d_range: tuple
  at_bound: bool            # an exponent sat on its search bound: poorly determined

  def predict(self, n, d) -> np.ndarray:
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["n_range"], out["d_range"] = list(self.n_range), list(self.d_range)
    return out


def _solve(x_n, x_d, y):
  """NNLS of y ~ E + A x_n + B x_d; (coef, rss)."""
  from scipy.optimize import nnls  # pylint: disable=import-outside-toplevel
  a = np.stack([np.ones_like(x_n), x_n, x_d], 1)
  coef, _ = nnls(a, y)
  r = y - a @ coef
  return coef, float(r @ r)


def fit_scaling_law(n, d, loss, *, exp_bounds=(0.02, 2.0), grid: int = 24) -> ScalingFit:
  """Fits L = E + A N^-alpha + B D^-beta; needs >= 6 finite points spanning N and D."""
  from scipy.optimize import minimize  # pylint: disable=import-outside-toplevel
  n, d, y = (np.asarray(v, np.float64) for v in (n, d, loss))
  ok = np.isfinite(n) & np.isfinite(d) & np.isfinite(y) & (n > 0) & (d > 0)
  n, d, y = n[ok], d[ok], y[ok]
  if n.size < 6:
    raise ValueError(f"an L(N, D) fit needs at least 6 points, got {n.size}")
  if np.ptp(np.log(n)) < 1e-6 or np.ptp(np.log(d)) < 1e-6:
    raise ValueError("the points must vary in both N and D")
  sn, sd = float(n.max()), float(d.max())
  ln, ld = np.log(n / sn), np.log(d / sd)
  lo, hi = exp_bounds

  def rss(p):
    a, b = p
    if not (lo <= a <= hi and lo <= b <= hi):
      return 1e30
    return _solve(np.exp(-a * ln), np.exp(-b * ld), y)[1]

  axis = np.exp(np.linspace(math.log(lo), math.log(hi), grid))
  values = np.array([[rss((a, b)) for b in axis] for a in axis])
  i, j = np.unravel_index(int(np.argmin(values)), values.shape)
  res = minimize(rss, x0=np.array([axis[i], axis[j]]), method="Nelder-Mead",
                 options={"xatol": 1e-5, "fatol": 1e-12, "maxiter": 2000})
  alpha, beta = (float(v) for v in (res.x if res.fun <= values[i, j] else (axis[i], axis[j])))
  coef, r = _solve(np.exp(-alpha * ln), np.exp(-beta * ld), y)
  e, a_s, b_s = (float(c) for c in coef)
  tss = float(((y - y.mean()) ** 2).sum())
  tol = 1.02
  at_bound = bool(min(alpha, beta) <= lo * tol or max(alpha, beta) >= hi / tol
                  or a_s == 0.0 or b_s == 0.0)
  # Caller's units: A x_n = A_s (N/sn)^-alpha = (A_s sn^alpha) N^-alpha.
  return ScalingFit(E=e, A=a_s * sn ** alpha, alpha=alpha, B=b_s * sd ** beta, beta=beta,
                    rss=r, r2=1.0 - r / tss if tss > 0 else float("nan"),
                    rmse=math.sqrt(r / n.size), n=int(n.size),
                    n_range=(float(n.min()), float(n.max())),
                    d_range=(float(d.min()), float(d.max())), at_bound=at_bound)


@dataclasses.dataclass
class Bootstrap:
  fit: ScalingFit
  samples: dict             # parameter -> array of bootstrap estimates
  ci: dict                  # parameter -> (low, high)
  level: float
  resamples: int
  failed: int
  unit: str                 # "points" or "groups"

  def interval(self, name: str) -> tuple:
    return self.ci[name]


def bootstrap_scaling_law(n, d, loss, *, groups=None, resamples: int = 200, level: float = 0.95,
                          seed: int = 0, **fit_kw) -> Bootstrap:
  """The fit and percentile CIs from `resamples` refits on resampled data.

  groups: one label per point; whole groups are resampled (points of one run share its
  noise, so this is the honest unit when there are enough groups). Resamples that
  cannot be fitted (too few distinct N or D) are redrawn up to twice as often, then
  counted as failed."""
  n, d, y = (np.asarray(v, np.float64) for v in (n, d, loss))
  fit = fit_scaling_law(n, d, y, **fit_kw)
  rng = np.random.default_rng(seed)
  labels = np.asarray(groups) if groups is not None else np.arange(n.size)
  uniq = np.unique(labels)
  members = [np.flatnonzero(labels == u) for u in uniq]
  samples = {k: [] for k in PARAMS}
  failed, tries = 0, 0
  while len(samples["E"]) < resamples and tries < 3 * resamples:
    tries += 1
    pick = rng.integers(0, len(uniq), len(uniq))
    idx = np.concatenate([members[p] for p in pick])
    try:
      f = fit_scaling_law(n[idx], d[idx], y[idx], **fit_kw)
    except ValueError:
      failed += 1
      continue
    for k in PARAMS:
      samples[k].append(getattr(f, k))
  samples = {k: np.asarray(v) for k, v in samples.items()}
  q = (1 - level) / 2
  ci = {k: ((float(np.quantile(v, q)), float(np.quantile(v, 1 - q))) if v.size
            else (float("nan"), float("nan"))) for k, v in samples.items()}
  return Bootstrap(fit=fit, samples=samples, ci=ci, level=level, resamples=int(samples["E"].size),
                   failed=failed, unit="groups" if groups is not None else "points")


def compare_exponents(a: Bootstrap, b: Bootstrap, name: str) -> dict:
  """Difference b - a of one exponent: point estimate, percentile CI from independently
  paired bootstrap draws, and whether the CI excludes zero."""
  m = min(a.samples[name].size, b.samples[name].size)
  diff = b.samples[name][:m] - a.samples[name][:m]
  q = (1 - a.level) / 2
  lo, hi = (float(np.quantile(diff, q)), float(np.quantile(diff, 1 - q))) if m else (
      float("nan"), float("nan"))
  return {"name": name, "difference": getattr(b.fit, name) - getattr(a.fit, name),
          "ci": (lo, hi), "excludes_zero": bool(m and (lo > 0 or hi < 0)), "level": a.level}
