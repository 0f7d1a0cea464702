"""Everything the report needs from one workdir, read from files only.

  RunRecord.load(workdir, spec=None)

reads config.json, metrics.jsonl, eval/<step>.json (the evaluation tool's output,
with the study's cross-evaluations under "cross"), generations.json (written by
run_study / sample_study), train.log (wall-clock and devices) and the checkpoint
directories. Nothing here imports JAX: a report builds on any machine.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
from typing import Any

from mambaswelu_jax import workdir as layout
from study_lib import runs as runs_lib
from study_lib import status as status_lib

_TS = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")
_START = re.compile(r"run (.*?): (\d+) device\(s\) (.*?) over (\d+) process")
_DONE = re.compile(r"done at step (\d+)")
# Gaps longer than this inside one process's log are counted as downtime, not work.
_MAX_GAP_S = 3600


def finite(x) -> bool:
  return status_lib.finite(x)


@dataclasses.dataclass
class Segment:
  """One process's life in train.log."""
  start: float
  end: float
  devices: int
  device_kind: str
  finished: bool

  @property
  def seconds(self) -> float:
    return max(0.0, self.end - self.start)


def parse_train_log(path: str) -> list[Segment]:
  """Segments of train.log: one per process start ('run ...: N device(s) KIND over')."""
  segs: list[Segment] = []
  try:
    f = open(path, encoding="utf-8", errors="replace")  # pylint: disable=consider-using-with
  except OSError:
    return segs
  with f:
    last_t = None
    for line in f:
      m = _TS.match(line)
      if not m:
        continue
      t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
      s = _START.search(line)
      if s:
        segs.append(Segment(t, t, int(s.group(2)), s.group(3), False))
      elif segs:
        if last_t is not None and t - last_t > _MAX_GAP_S:
          segs.append(Segment(t, t, segs[-1].devices, segs[-1].device_kind, False))
        segs[-1].end = t
        if _DONE.search(line):
          segs[-1].finished = True
      last_t = t
  return segs


@dataclasses.dataclass
class RunRecord:
  """One run as its workdir recorded it (the report's view; the trainer's data pipeline
  is mambaswelu_jax.data.run_data.RunData)."""
  name: str
  workdir: str
  config: dict
  role: str = ""
  label: str = ""
  metrics: list = dataclasses.field(default_factory=list)
  evals: dict = dataclasses.field(default_factory=dict)       # step -> eval JSON
  generations: dict | None = None
  segments: list = dataclasses.field(default_factory=list)
  snapshots: list = dataclasses.field(default_factory=list)
  final_steps: list = dataclasses.field(default_factory=list)
  num_params: int | None = None

  # --- Loading.

  @classmethod
  def load(cls, workdir: str, spec: runs_lib.RunSpec | None = None) -> "RunRecord":
    workdir = os.path.abspath(workdir)
    name = os.path.basename(os.path.normpath(workdir))
    config = runs_lib.load_json(os.path.join(workdir, layout.CONFIG)) or {}
    evals = {}
    edir = os.path.join(workdir, layout.EVAL)
    if os.path.isdir(edir):
      for fn in os.listdir(edir):
        if fn.endswith(".json") and fn[:-5].isdigit():
          doc = runs_lib.load_json(os.path.join(edir, fn))
          if isinstance(doc, dict):
            evals[int(fn[:-5])] = doc
    run = cls(name=name, workdir=workdir, config=config,
              metrics=status_lib.read_metrics(workdir), evals=dict(sorted(evals.items())),
              generations=runs_lib.load_json(os.path.join(workdir, "generations.json")),
              segments=parse_train_log(os.path.join(workdir, layout.TRAIN_LOG)),
              snapshots=layout.steps(workdir, layout.SNAPSHOTS),
              final_steps=layout.steps(workdir, layout.FINAL))
    info = runs_lib.load_json(os.path.join(workdir, "study_run.json")) or {}
    run.role = (spec.role if spec else "") or info.get("role", "") or guess_role(config)
    run.label = (spec.label if spec else "") or info.get("label", "") or describe_data(config)
    run.num_params = info.get("num_params")
    for r in run.metrics:
      if run.num_params is None and isinstance(r.get("num_params"), (int, float)):
        run.num_params = int(r["num_params"])
    return run

  # --- Config facts.

  def cfg(self, *keys, default=None):
    node: Any = self.config
    for k in keys:
      if not isinstance(node, dict) or k not in node:
        return default
      node = node[k]
    return node

  @property
  def tokens_per_step(self) -> int:
    return int(self.cfg("train", "global_batch_size", default=0) or 0) * int(
        self.cfg("data", "seq_len", default=0) or 0)

  @property
  def num_steps(self) -> int:
    return int(self.cfg("train", "num_steps", default=0) or 0)

  @property
  def planned_tokens(self) -> int:
    return self.num_steps * self.tokens_per_step

  @property
  def text_types(self) -> list[str]:
    t = self.cfg("data", "text_types", default="") or ""
    return [x.strip() for x in t.split(",") if x.strip()] if isinstance(t, str) else list(t)

  @property
  def data_name(self) -> str:
    return describe_data(self.config)

  @property
  def step(self) -> int:
    return int(self.metrics[-1]["step"]) if self.metrics else 0

  @property
  def tokens_seen(self) -> int:
    return self.step * self.tokens_per_step

  @property
  def finished(self) -> bool:
    return bool(self.final_steps) and (not self.num_steps or self.final_steps[-1] >= self.num_steps)

  # --- Curves.

  def series(self, key: str) -> tuple[list[float], list[float]]:
    """(tokens, values) of `key` over the metrics records that hold it (finite only)."""
    xs, ys = [], []
    for r in self.metrics:
      v = r.get(key)
      if finite(v):
        xs.append(r.get("tokens_seen") or r["step"] * self.tokens_per_step)
        ys.append(float(v))
    return xs, ys

  def validation_curve(self) -> tuple[list[float], list[float], str]:
    """(tokens, loss, where from): eval JSON validation losses when there are at least
    four steps, else the trainer's periodic validation loss."""
    pts = [(d.get("tokens_seen") or s * self.tokens_per_step,
            d["splits"]["validation"]["loss"]) for s, d in self.evals.items()
           if finite(d.get("splits", {}).get("validation", {}).get("loss"))]
    if len(pts) >= 4:
      pts.sort()
      return [p[0] for p in pts], [p[1] for p in pts], "eval/<step>.json (validation split)"
    x, y = self.series("validation_loss")
    return x, y, "metrics.jsonl validation_loss (trainer's periodic evaluation)"

  def swelu_sites(self) -> list[str]:
    sites = []
    for r in self.metrics:
      for k in r:
        if k.startswith("swelu/") and k.endswith("/k"):
          site = k[len("swelu/"):-len("/k")]
          if site not in sites:
            sites.append(site)
    return sites

  # --- Evaluation results.

  def eval_at(self, step: int | None = None) -> dict | None:
    """eval/<step>.json at `step` (None: the last one)."""
    if not self.evals:
      return None
    if step is None:
      return self.evals[max(self.evals)]
    return self.evals.get(step)

  def split_result(self, split: str, step: int | None = None, on: str | None = None
                   ) -> dict | None:
    """The evaluation of `split` at `step` on the run's own data, or (on=label) on another
    study dataset (the study's cross-evaluation)."""
    d = self.eval_at(step)
    if not d:
      return None
    if on:
      return (d.get("cross", {}).get(on) or {}).get(split)
    return d.get("splits", {}).get(split)

  def final_validation(self) -> dict | None:
    """{'loss', 'perplexity', 'bits_per_byte', 'step'} from the last trainer evaluation."""
    for r in reversed(self.metrics):
      if finite(r.get("validation_loss")):
        return {"loss": r["validation_loss"], "perplexity": r.get("validation_perplexity"),
                "bits_per_byte": r.get("validation_bits_per_byte"), "step": r["step"]}
    return None

  def best_validation(self) -> dict | None:
    best = None
    for r in self.metrics:
      if finite(r.get("validation_loss")) and (best is None or r["validation_loss"] < best["loss"]):
        best = {"loss": r["validation_loss"], "perplexity": r.get("validation_perplexity"),
                "bits_per_byte": r.get("validation_bits_per_byte"), "step": r["step"]}
    return best

  # --- Cost.

  @property
  def wall_seconds(self) -> float:
    return sum(s.seconds for s in self.segments)

  @property
  def devices(self) -> int:
    return max((s.devices for s in self.segments), default=0)

  @property
  def device_kind(self) -> str:
    return self.segments[-1].device_kind if self.segments else "?"

  @property
  def device_hours(self) -> float:
    return sum(s.seconds * s.devices for s in self.segments) / 3600.0

  def median_tokens_per_second(self) -> float | None:
    _, ys = self.series("tokens_per_second")
    if not ys:
      return None
    ys = sorted(ys)
    return ys[len(ys) // 2]


def describe_data(config: dict) -> str:
  d = config.get("data", {}) if isinstance(config, dict) else {}
  src = d.get("source", "?")
  types = d.get("text_types", "") or ""
  return f"{src}[{types}]" if types else str(src)


def guess_role(config: dict) -> str:
  """general_long / general_short / specific_long from the config alone (a fallback when
  the run is not one of the study's named runs)."""
  d = config.get("data", {}) if isinstance(config, dict) else {}
  specific = d.get("source") == "wikipedia" or bool(d.get("text_types"))
  ratio = float(d.get("tokens_per_parameter", 0) or 0)
  if specific:
    return "specific_long"
  return "general_short" if 0 < ratio < 50 else "general_long"


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
  """Linear interpolation in log(x); None outside the data."""
  if not xs or x < xs[0] or x > xs[-1]:
    return None
  for i in range(1, len(xs)):
    if xs[i] >= x:
      x0, x1 = math.log(max(xs[i - 1], 1e-9)), math.log(max(xs[i], 1e-9))
      if x1 == x0:
        return ys[i]
      w = (math.log(x) - x0) / (x1 - x0)
      return ys[i - 1] * (1 - w) + ys[i] * w
  return ys[-1]


def spikes(losses: list[float], k: float = 3.0, warm: int = 5) -> list[int]:
  """Indices where the train loss jumps above its running mean by k running std devs."""
  out, mean, var = [], None, 0.0
  alpha = 0.1
  for i, v in enumerate(losses):
    if not finite(v):
      out.append(i)
      continue
    if mean is None:
      mean = v
      continue
    sd = math.sqrt(var)
    if i >= warm and sd > 0 and v > mean + k * sd:
      out.append(i)
    diff = v - mean
    mean += alpha * diff
    var = (1 - alpha) * (var + alpha * diff * diff)
  return out


def load_study(root: str, specs=None, names: list[str] | None = None) -> list[RunRecord]:
  """The study's runs under `root` that have a config.json, in study order."""
  root = os.path.abspath(root)
  out = []
  specs = list(specs or [])
  seen = set()
  for spec in specs:
    wd = os.path.join(root, spec.name)
    if os.path.exists(os.path.join(wd, layout.CONFIG)) and (not names or spec.name in names):
      out.append(RunRecord.load(wd, spec))
      seen.add(spec.name)
  if not specs:
    try:
      for d in sorted(os.listdir(root)):
        wd = os.path.join(root, d)
        if d not in seen and os.path.exists(os.path.join(wd, layout.CONFIG)) and (
            not names or d in names):
          out.append(RunRecord.load(wd))
    except OSError:
      pass
  return out


def dump(obj) -> str:
  return json.dumps(obj, indent=1, sort_keys=True, default=str)
