r"""Evaluate a run's checkpoints: loss, perplexity and bits per byte per split and text type.

  python -m mambaswelu_jax.eval --workdir=DIR [--step=latest|final|N|all]
      [--splits=validation,test] [--max_tokens=N] [--benchmarks=lambada_openai,...]

Reads only the workdir: its recorded config (`config.json`), its tokenizer
(`tokenizer.model`) and its Orbax parameters (`final/`, `snapshots/` or the params
part of a full `checkpoints/` state; no optimizer state is read). The parameters are
restored replicated onto the devices of *this* process, so a workdir copied to
another machine or evaluated on another device count works the same.

For each split the run's own eval pipeline (`data.pipeline.make_eval_batches`:
every token of every document is a target exactly once, in source order) gives

  loss           Σ nll / tokens                        nats per token
  perplexity     exp(loss)
  bits_per_byte  Σ nll / (ln 2 · Σ UTF-8 bytes of the targets)   tokenizer independent

overall and per text type, with the token and byte counts beside each figure.
`--step=all` evaluates every saved step (the params-only snapshots, the full
checkpoints still kept and the final params): the loss-versus-tokens curve.

It runs in one process, on that process's devices (the rows of each batch split
over them). Results go to `DIR/eval/<step>.json` (merged with what an earlier call wrote, so
benchmarks and perplexities can be computed separately) and a table is printed.

Also the library other tools build on: `load_run` (a workdir -> model, params and
tokenizer), `available_steps`, and `score_sequences` (log-likelihoods of
continuations, used by the lm-eval adapter and the generation-quality measures).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mambaswelu_jax import checkpointing
from mambaswelu_jax.losses import token_nll
from mambaswelu_jax.mesh import DATA_AXIS, make_mesh, to_global
from mambaswelu_jax import workdir as layout

# Where params live, in the order `latest` looks (params-only kinds first: cheaper).
CHECKPOINT_KINDS = ("final", "snapshots", "checkpoints")
LN2 = math.log(2.0)


class EvalError(Exception):
  """A workdir, step or checkpoint that cannot be evaluated; the message says what is missing."""


# ----------------------------------------------------------------------------
# A run: config, tokenizer and params restored from a workdir.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """A restored run. `model` is an nnx module with the restored parameters."""
  workdir: str
  config: Any
  step: int
  kind: str            # final | snapshots | checkpoints
  tokenizer: Any
  graphdef: Any
  params: Any
  rest: Any
  mesh: Any

  @functools.cached_property
  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params, self.rest)

  @functools.cached_property
  def _forward(self):
    return jax.jit(lambda params, rest, tokens: nnx.merge(self.graphdef, params, rest)(tokens))

  def logits(self, tokens) -> jax.Array:
    """The model's plain forward pass, compiled: int (b, L) -> float32 logits (b, L, V)."""
    return self._forward(self.params, self.rest, jnp.asarray(tokens, jnp.int32))

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))

  @property
  def tokens_per_step(self) -> int:
    return int(self.config.train.global_batch_size) * int(self.config.data.seq_len)

  @property
  def max_length(self) -> int | None:
    """The most tokens the model reads at once, or None when it has no limit.

    The Transformer has model.max_len positions (its position table or rotary range and
    its KV cache), and so does a Mamba model with learned positions. The selective SSM
    without them has no limit: its recurrent state carries any length, so it is scored
    on whole sequences, however long, and never at the training length."""
    m = self.config.model
    if m.get("learned_positions", False) or m.get("architecture", "mamba") != "mamba":
      return int(m.max_len)
    return None


def _steps_of(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def available_steps(workdir: str) -> dict[int, list[str]]:
  """{step: [kinds holding params of that step]} over final/, snapshots/, checkpoints/."""
  out: dict[int, list[str]] = {}
  for kind in CHECKPOINT_KINDS:
    for s in _steps_of(os.path.join(workdir, kind)):
      out.setdefault(s, []).append(kind)
  return dict(sorted(out.items()))


def resolve_steps(workdir: str, step: str | int) -> list[int]:
  """`latest`, `final`, `all`, or a number -> the steps to evaluate (checked to exist)."""
  steps = available_steps(workdir)
  if not steps:
    raise EvalError(
        f"{workdir} holds no checkpoints: looked for params under "
        f"{', '.join(os.path.join(workdir, k) for k in CHECKPOINT_KINDS)}. Train the run "
        f"first (python -m mambaswelu_jax.main --workdir={workdir} ...).")
  step = str(step).strip().lower()
  if step in ("latest", ""):
    return [max(steps)]
  if step == "all":
    return list(steps)
  if step == "final":
    final = _steps_of(os.path.join(workdir, "final"))
    if not final:
      raise EvalError(f"{workdir}/final holds no params (the run has not finished); "
                      f"saved steps: {_fmt_steps(steps)}")
    return [final[-1]]
  try:
    n = int(step)
  except ValueError:
    raise EvalError(f"--step={step!r}: expected latest, final, all or a step number") from None
  if n not in steps:
    raise EvalError(f"step {n} is not saved in {workdir}; saved steps: {_fmt_steps(steps)}")
  return [n]


def _fmt_steps(steps) -> str:
  steps = list(steps)
  return ", ".join(map(str, steps)) if len(steps) <= 20 else (
      f"{', '.join(map(str, steps[:10]))}, ..., {', '.join(map(str, steps[-5:]))} "
      f"({len(steps)} in all)")


def load_config_and_tokenizer(workdir: str):
  """(config, tokenizer) of a workdir, or an EvalError naming the missing file."""
  if not os.path.isdir(workdir):
    raise EvalError(f"workdir {workdir} does not exist")
  cfg_path = os.path.join(workdir, layout.CONFIG)
  if not os.path.exists(cfg_path):
    raise EvalError(f"{workdir} has no {layout.CONFIG}: not a run's workdir "
                    f"(a run records its resolved config there when it starts)")
  try:
    config = checkpointing.load_config(workdir)
  except (OSError, ValueError) as e:
    raise EvalError(f"{cfg_path} does not read as JSON: {e}") from e
  tok_path = os.path.join(workdir, "tokenizer.model")
  if not os.path.exists(tok_path):
    raise EvalError(f"{workdir} has no tokenizer.model: the run's tokenizer is needed to "
                    f"evaluate or sample (copy the study tokenizer there, the one the run "
                    f"was trained with: data.tokenizer_path in {cfg_path})")
  from mambaswelu_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  try:
    tokenizer = tokenizer_lib.load_tokenizer(tok_path)
  except Exception as e:  # pylint: disable=broad-except
    raise EvalError(f"{tok_path} does not load as a tokenizer: {type(e).__name__}: {e}") from e
  vocab = int(config.model.vocab_size)
  if tokenizer.vocab_size != vocab:
    raise EvalError(f"{tok_path} has {tokenizer.vocab_size} tokens but the run's model has "
                    f"vocab_size {vocab}: it is not the run's tokenizer")
  return config, tokenizer


def load_run(workdir: str, step: str | int = "latest", devices: Sequence | None = None,
             config=None, tokenizer=None) -> Run:
  """Restores a run's params (replicated over `devices`, default all local devices)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if config is None or tokenizer is None:
    config, tokenizer = load_config_and_tokenizer(workdir)
  (step_n,) = resolve_steps(workdir, step) if str(step) != "all" else (None,)
  if step_n is None:
    raise EvalError("load_run restores one step; use resolve_steps for --step=all")
  kinds = available_steps(workdir)[step_n]
  if config.model.get("scan_impl") == "pallas" and jax.default_backend() != "gpu":
    # A run trained with the GPU kernel, evaluated elsewhere: the same function via XLA.
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.scan_impl = "auto"

  from mambaswelu_jax.models import build_model  # pylint: disable=import-outside-toplevel
  mesh = make_mesh(list(devices) if devices is not None else jax.local_devices())
  build = lambda: build_model(config.model, nnx.Rngs(int(config.get("seed", 0))))
  graphdef, abstract_params, _ = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
  replicated = NamedSharding(mesh, P())
  abstract_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_params)
  # Non-parameter variables are not checkpointed: rebuilt from the config.
  rest = jax.jit(lambda: nnx.split(build(), nnx.Param, ...)[2], out_shardings=replicated)()

  errors = []
  for kind in kinds:
    try:
      got, params = checkpointing.restore_params(workdir, abstract_params, step_n, kind=kind)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"{workdir}/{kind}/{step_n}: {type(e).__name__}: {str(e)[:300]}")
      continue
    return Run(workdir, config, got, kind, tokenizer, graphdef, params, rest, mesh)
  raise EvalError(f"params of step {step_n} do not restore (corrupt or incomplete "
                  f"checkpoint?):\n  " + "\n  ".join(errors))


# ----------------------------------------------------------------------------
# Perplexity and bits per byte over a split.
# ----------------------------------------------------------------------------


def type_sums(params, batch, rest, *, graphdef, num_types: int, axis_name=DATA_AXIS):
  """(num_types, 3) float32 sums of [nll, tokens, target bytes] per text type."""
  logits = nnx.merge(graphdef, params, rest)(batch["inputs"])
  nll = token_nll(logits, batch["targets"])
  w = batch["weights"].astype(jnp.float32)
  cols = jnp.stack([nll * w, w, batch["target_bytes"].astype(jnp.float32) * w], -1)
  sums = jax.ops.segment_sum(cols.reshape(-1, 3), batch["text_type"].reshape(-1),
                             num_segments=num_types)
  return jax.lax.psum(sums, axis_name) if axis_name is not None else sums


# Compiled steps shared by runs of one model config on one mesh (splits, --step=all).
_STEP_CACHE: dict = {}


def _cached(kind: str, run: Run, build, *extra):
  key = (kind, json.dumps(run.config.model.to_dict(), sort_keys=True, default=str),
         tuple(d.id for d in run.mesh.devices.flat)) + extra
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = build()
  return _STEP_CACHE[key]


def make_type_sums_step(run: Run, num_types: int):
  """jit(shard_map(type_sums)): params replicated, rows split over the run's mesh."""
  def build():
    fn = functools.partial(type_sums, graphdef=run.graphdef, num_types=num_types)
    return jax.jit(jax.shard_map(fn, mesh=run.mesh, in_specs=(P(), P(DATA_AXIS), P()),
                                 out_specs=P(), check_vma=False))
  return _cached("type_sums", run, build, num_types)


def _figures(nll: float, tokens: float, nbytes: float) -> dict:
  loss = nll / tokens if tokens else float("nan")
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
          "bits_per_byte": nll / (LN2 * nbytes) if nbytes else float("nan"),
          "tokens": int(tokens), "bytes": int(nbytes)}


def evaluate_split(run: Run, split: str, *, max_tokens: int = 0, batch_per_device: int = 0,
                   source=None) -> dict:
  """Loss / perplexity / bits per byte over `split`, overall and per text type."""
  from mambaswelu_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  source = sources.make_source(run.config.data) if source is None else source
  per_device = batch_per_device or int(run.config.eval.batch_per_device)
  global_batch = per_device * len(run.mesh.devices.reshape(-1))
  seq_len = int(run.config.data.seq_len)
  # One process evaluates the whole split on its own devices (the run's mesh is local).
  batches = pipeline.make_eval_batches(source, run.tokenizer, split, global_batch, seq_len,
                                       max_tokens=max_tokens)
  types = list(source.text_types) or ["text"]
  step_fn = make_type_sums_step(run, len(types))
  totals = np.zeros((len(types), 3), np.float64)
  seconds, timed = 0.0, 0
  for i, batch in enumerate(batches):
    arrays = to_global({k: batch[k] for k in
                              ("inputs", "targets", "weights", "target_bytes", "text_type")},
                             run.mesh)
    t0 = time.perf_counter()
    totals += np.asarray(jax.device_get(step_fn(run.params, arrays, run.rest)), np.float64)
    if i > 0 or len(batches) == 1:  # the first call compiles: keep it out of the timing
      seconds += time.perf_counter() - t0
      timed += 1
  overall = totals.sum(0)
  out = _figures(*overall)
  out["by_type"] = {t: _figures(*totals[i]) for i, t in enumerate(types) if totals[i, 1] > 0}
  out["seconds"] = seconds
  # Tokens the model ran over (padding rows included) per second of device time.
  out["tokens_per_second"] = timed * global_batch * seq_len / seconds if seconds else 0.0
  out["skipped_documents"] = dict(getattr(batches, "skipped", {}) or {})
  out["max_tokens"] = int(max_tokens)
  return out


# ----------------------------------------------------------------------------
# Log-likelihoods of continuations (lm-eval adapter, generation quality).
# ----------------------------------------------------------------------------


def _bucket(n: int, minimum: int = 16) -> int:
  """The next power of two >= n: one compilation per bucket."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def scoring_limit(run: Run, max_length: int = 0) -> int | None:
  """Most input tokens a scored sequence may have: the smaller of a user's cap
  `max_length` (0: none) and the model's own limit (`Run.max_length`); None: no limit."""
  limits = [n for n in (int(max_length or 0), run.max_length) if n]
  return min(limits) if limits else None


def fit_request(context: Sequence[int], continuation: Sequence[int],
                limit: int | None) -> tuple[list[int], int, int]:
  """(ids scored, continuation tokens scored, tokens cut) of one request.

  Within the limit (or with none) the ids are context + continuation, whole. Past it the
  leftmost tokens are cut, as lm-eval does: the sequence keeps its last `limit + 1` ids
  (the model reads `limit` of them), i.e. the continuation and the context nearest to
  it; a continuation longer than `limit` loses its own first tokens too."""
  seq = list(context) + list(continuation)
  cut = max(0, len(seq) - (limit + 1)) if limit else 0
  seq = seq[cut:]
  return seq, min(len(continuation), len(seq) - 1), cut


def continuation_logprobs(params, inputs, targets, rest, *, graphdef):
  """(log p(target), target == argmax) per position, float32 / bool (b, L).

  log p = logit - logsumexp(logits): no second (b, L, vocab) array beside the logits."""
  logits = nnx.merge(graphdef, params, rest)(inputs).astype(jnp.float32)
  picked = (jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
            - jax.nn.logsumexp(logits, -1))
  return picked, jnp.argmax(logits, -1) == targets


def recurrent_logprobs(params, rest, cache, inputs, targets, *, graphdef):
  """continuation_logprobs one token at a time through the model's recurrent state:
  (cache after the piece, log p (b, T), greedy (b, T)) for inputs that continue `cache`.
  Memory does not grow with the length; the numbers are the forward pass's."""
  def step(cache, xs):
    token, target = xs
    logits, cache = nnx.merge(graphdef, params, rest).decode_step(token, cache)
    logits = logits.astype(jnp.float32)
    picked = (jnp.take_along_axis(logits, target[:, None], -1)[:, 0]
              - jax.nn.logsumexp(logits, -1))
    return cache, (picked, jnp.argmax(logits, -1) == target)
  cache, (picked, greedy) = jax.lax.scan(step, cache, (inputs.T, targets.T))
  return cache, picked.T, greedy.T


def _score_recurrent(run: Run, seq: Sequence[int], n: int, piece: int) -> tuple[float, bool]:
  """One sequence longer than one forward pass may take: pieces of `piece` tokens, each
  continuing the recurrent state of the one before (every token sees its whole past)."""
  fn = _cached("recurrent_scorer", run, lambda: jax.jit(
      functools.partial(recurrent_logprobs, graphdef=run.graphdef)), piece)
  length = len(seq) - 1
  inputs = np.zeros((1, -(-length // piece) * piece), np.int32)
  targets = np.zeros_like(inputs)
  inputs[0, :length], targets[0, :length] = seq[:-1], seq[1:]
  cache = run.model.init_cache(1)
  logp, greedy = [], []
  for start in range(0, inputs.shape[1], piece):
    cache, lp, gr = fn(run.params, run.rest, cache, inputs[:, start:start + piece],
                       targets[:, start:start + piece])
    logp.append(np.asarray(lp[0]))
    greedy.append(np.asarray(gr[0]))
  logp, greedy = np.concatenate(logp)[length - n:length], np.concatenate(greedy)[length - n:length]
  return float(np.sum(logp, dtype=np.float64)), bool(np.all(greedy))


def make_scorer(run: Run):
  """jit(shard_map(continuation_logprobs)): rows split over the run's devices; it compiles
  once per (rows, length) shape and is shared by runs of one model config."""
  def build():
    fn = functools.partial(continuation_logprobs, graphdef=run.graphdef)
    return jax.jit(jax.shard_map(fn, mesh=run.mesh,
                                 in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                                 out_specs=P(DATA_AXIS), check_vma=False))
  return _cached("scorer", run, build)


# The longest input one forward pass scores (logits of this many tokens: 3.3 GB at a
# 50k vocabulary); a model without a position limit scores longer ones in pieces through
# its recurrent state (`recurrent_logprobs`).
LONGEST_FORWARD = 16384


def score_sequences(run: Run, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                    batch_size: int = 16, max_length: int = 0, scorer=None,
                    progress=None, longest_forward: int = 0) -> list[tuple[float, bool]]:
  """Σ log p(continuation | context) and whether greedy decoding gives the continuation.

  requests: (context ids, continuation ids); the context must be non-empty (start it
  with EOS, the document separator the run trained with, when there is no text).

  Every request is scored whole, in one forward pass, unless it is longer than
  `scoring_limit(run, max_length)`: the model's own limit (model.max_len for the
  Transformer or learned positions; none for the selective SSM) or a smaller cap the
  caller sets with `max_length` (0: no cap). Past the limit `fit_request` cuts its
  leftmost tokens; use it to count what was cut.

  Requests run longest first, right-padded to a power-of-two length (causal, so padding
  on the right changes nothing before it; at most the limit). A batch holds `batch_size`
  rows (rounded up to a multiple of the device count) up to the training length's bucket
  and fewer, longer rows past it: at most batch_size x bucket(seq_len) tokens per batch,
  and at least one row per device, so memory stays what training-length batches take
  until a single request is longer than that. A request longer than `longest_forward`
  (default LONGEST_FORWARD) tokens, which only a model without a position limit gets,
  is scored token by token through the recurrent state, in pieces of that many, with
  constant memory and the same numbers.
  """
  limit = scoring_limit(run, max_length)
  n_dev = len(run.mesh.devices.reshape(-1))
  batch_size = -(-max(1, batch_size) // n_dev) * n_dev
  budget = batch_size * _bucket(int(run.config.data.seq_len))
  scorer = scorer or make_scorer(run)
  rows = []
  for i, (ctx, cont) in enumerate(requests):
    if not cont:
      continue
    if not ctx:
      raise ValueError("score_sequences: empty context (prefix the EOS id)")
    seq, n, _ = fit_request(ctx, cont, limit)
    rows.append((i, seq, n))
  results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
  longest = int(longest_forward or LONGEST_FORWARD)
  for i, seq, n in rows:
    if limit is None and len(seq) - 1 > longest:
      results[i] = _score_recurrent(run, seq, n, longest)
      if progress is not None:
        progress(1)
  order = sorted((r for r in rows if limit is not None or len(r[1]) - 1 <= longest),
                 key=lambda r: -len(r[1]))
  row_sharding = NamedSharding(run.mesh, P(DATA_AXIS))
  start = 0
  while start < len(order):
    length = min(_bucket(len(order[start][1]) - 1), limit or longest)
    n_rows = max(n_dev, min(batch_size, budget // length) // n_dev * n_dev)
    chunk = order[start:start + n_rows]
    start += len(chunk)
    inputs = np.zeros((n_rows, length), np.int32)
    targets = np.zeros((n_rows, length), np.int32)
    for j, (_, seq, _) in enumerate(chunk):
      inputs[j, :len(seq) - 1] = seq[:-1]
      targets[j, :len(seq) - 1] = seq[1:]
    logp, greedy = jax.device_get(scorer(
        run.params, jax.device_put(inputs, row_sharding),
        jax.device_put(targets, row_sharding), run.rest))
    for j, (i, seq, n) in enumerate(chunk):
      end = len(seq) - 1
      results[i] = (float(np.sum(logp[j, end - n:end], dtype=np.float64)),
                    bool(np.all(greedy[j, end - n:end])))
    if progress is not None:
      progress(len(chunk))
  if progress is not None and len(rows) < len(requests):
    progress(len(requests) - len(rows))   # empty continuations: nothing to score
  return results


# ----------------------------------------------------------------------------
# Results: JSON per step and a table.
# ----------------------------------------------------------------------------


def results_path(workdir: str, step: int, output_dir: str = "") -> str:
  return os.path.join(output_dir or os.path.join(workdir, "eval"), f"{step}.json")


def write_results(path: str, results: dict) -> dict:
  """Merges `results` into the JSON at `path` (splits and benchmarks kept from earlier
  calls unless recomputed) and writes it atomically."""
  old = _stored(path)
  merged = {**old, **results}
  for key in ("splits", "benchmarks"):
    merged[key] = {**old.get(key, {}), **results.get(key, {})}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(merged, f, indent=2, sort_keys=True, default=_json_default)
    f.write("\n")
  os.replace(tmp, path)
  return merged


def _stored(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


# Entries of a benchmark's results that are not metrics: lm-eval's bookkeeping (results
# written before it was dropped may hold sample_len) and ours (documents, truncation).
BENCHMARK_INFO_KEYS = ("alias", "sample_len", "samples", "documents", "truncation")


def format_metrics(metrics: dict) -> str:
  """`acc 0.6250 ± 0.0500, acc_norm 0.6000 ± 0.0510 (40 documents)` from one task's
  results: the metrics lm-eval computed, each with its standard error where it has one."""
  parts = []
  for key, value in sorted(metrics.items()):
    name, _, filt = key.partition(",")
    if (key in BENCHMARK_INFO_KEYS or name.endswith("_stderr") or isinstance(value, bool)
        or not isinstance(value, (int, float))):
      continue
    err = metrics.get(f"{name}_stderr" + (f",{filt}" if filt else ""))
    parts.append(f"{key} {value:.4f}" + (f" ± {err:.4f}" if isinstance(err, (int, float))
                                         and not isinstance(err, bool) else ""))
  docs = metrics.get("documents")
  return ", ".join(parts) + (f" ({docs:,} documents)" if isinstance(docs, int) else "")


def truncation_warning(what: str, truncation: dict | None) -> str | None:
  """One line saying how many requests were cut and by how much; None when none was."""
  t = truncation or {}
  if not t.get("truncated"):
    return None
  line = (f"warning: {what}: {t['truncated']:,} of {t.get('requests', 0):,} requests "
          f"truncated at {t.get('max_length')} tokens ({t.get('limited_by')}): "
          f"{t.get('tokens_cut', 0):,} tokens cut")
  if t.get("continuation_tokens_cut"):
    line += f", {t['continuation_tokens_cut']:,} of them continuation tokens (not scored)"
  if t.get("rolling_windows"):
    line += f"; rolling texts scored in {t['rolling_windows']:,} windows"
  return line


def format_table(results: Sequence[dict]) -> str:
  """One line per (step, split, text type) and per benchmark task, then a warning line
  per task whose requests were truncated."""
  head = (f"{'step':>8} {'tokens seen':>13} {'split':<11} {'type':<12} {'loss':>7} "
          f"{'ppl':>9} {'bits/byte':>9} {'tokens':>11} {'bytes':>12}")
  lines, warnings = [head, "-" * len(head)], []
  for r in results:
    for split, s in r.get("splits", {}).items():
      for typ, f in [("all", s)] + sorted(s.get("by_type", {}).items()):
        lines.append(f"{r['step']:>8} {r.get('tokens_seen', 0):>13,} {split:<11} {typ:<12} "
                     f"{f['loss']:>7.4f} {f['perplexity']:>9.2f} {f['bits_per_byte']:>9.4f} "
                     f"{f['tokens']:>11,} {f['bytes']:>12,}")
    for task, metrics in r.get("benchmarks", {}).items():
      lines.append(f"{r['step']:>8} {r.get('tokens_seen', 0):>13,} {'benchmark':<11} "
                   f"{task:<12} {format_metrics(metrics)}")
      warning = truncation_warning(f"step {r['step']} {task}", metrics.get("truncation"))
      if warning:
        warnings.append(warning)
  return "\n".join(lines + warnings)


def format_report(results: Sequence[dict], output_dir: str = "") -> str:
  """What the command prints: the table, then the file each step's results are in."""
  out = os.path.abspath(output_dir) if output_dir else ""
  return "\n".join([format_table(results)] + [
      f"results: {results_path(r['workdir'], r['step'], out)}" for r in results])


def evaluate_run(workdir: str, step: str | int = "latest", *, splits=("validation", "test"),
                 max_tokens: int = 0, batch_per_device: int = 0, benchmarks=(),
                 benchmark_limit: int = 0, benchmark_batch_size: int = 16,
                 benchmark_tasks_dir: str = "", output_dir: str = "", devices=None,
                 skip_done: bool = False, log=print) -> list[dict]:
  """Evaluates each requested step; writes and returns one result dict per step.

  skip_done: reuse a step's stored results when they hold every requested split (with
  the same max_tokens) and benchmark (for re-running --step=all as a run goes on).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config, tokenizer = load_config_and_tokenizer(workdir)
  steps = resolve_steps(workdir, step)
  source = None
  if splits:
    from mambaswelu_jax.data import sources  # pylint: disable=import-outside-toplevel
    source = sources.make_source(config.data)
  out = []
  for s in steps:
    done = _stored(results_path(workdir, s, output_dir)) if skip_done else {}
    if (done and all(done.get("splits", {}).get(sp, {}).get("max_tokens") == max_tokens
                     for sp in splits)
        and all(b in done.get("benchmarks", {}) for b in benchmarks)):
      log(f"step {s}: stored results reused")
      out.append(done)
      continue
    run = load_run(workdir, s, devices=devices, config=config, tokenizer=tokenizer)
    result = {"workdir": workdir, "step": run.step, "checkpoint": run.kind,
              "tokens_seen": run.step * run.tokens_per_step,
              "devices": f"{len(run.mesh.devices.reshape(-1))} x "
                         f"{run.mesh.devices.reshape(-1)[0].device_kind}",
              "splits": {}, "benchmarks": {}}
    for split in splits:
      r = evaluate_split(run, split, max_tokens=max_tokens, batch_per_device=batch_per_device,
                         source=source)
      result["splits"][split] = r
      log(f"step {run.step} {split}: loss {r['loss']:.4f}  perplexity {r['perplexity']:.2f}  "
          f"bits/byte {r['bits_per_byte']:.4f}  ({r['tokens']:,} tokens, {r['bytes']:,} bytes, "
          f"{r['tokens_per_second']:,.0f} tokens/s)")
    if benchmarks:
      from mambaswelu_jax import lm_eval_adapter  # pylint: disable=import-outside-toplevel
      result["benchmarks"] = lm_eval_adapter.run_benchmarks(
          run, list(benchmarks), limit=benchmark_limit or None, batch_size=benchmark_batch_size,
          include_path=benchmark_tasks_dir or None)
      for task, metrics in result["benchmarks"].items():
        log(f"step {run.step} {task}: {format_metrics(metrics)}")
      for task, metrics in result["benchmarks"].items():
        warning = truncation_warning(f"step {run.step} {task}", metrics.get("truncation"))
        if warning:
          log(warning)
    merged = write_results(results_path(workdir, run.step, output_dir), result)
    out.append(merged)
  return out


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("workdir", None, "The run's directory.")
  flags.DEFINE_string("step", "latest", "latest | final | all | a step number.")
  flags.DEFINE_list("splits", ["validation", "test"], "Splits to evaluate ('' for none).")
  flags.DEFINE_integer("max_tokens", 0, "Targets per split (0: the whole split).")
  flags.DEFINE_integer("batch_per_device", 0, "Eval rows per device (0: config.eval).")
  flags.DEFINE_list("benchmarks", [], "lm-eval tasks, e.g. lambada_openai,hellaswag,piqa,"
                    "winogrande (needs pip install '.[eval]' and the datasets).")
  flags.DEFINE_integer("benchmark_limit", 0, "Documents per benchmark task (0: all).")
  flags.DEFINE_integer("benchmark_batch_size", 16, "Rows per scoring batch for benchmarks.")
  flags.DEFINE_string("benchmark_tasks_dir", "", "A folder of extra lm-eval task YAMLs "
                      "(lm-eval's include_path), e.g. local copies of the datasets.")
  flags.DEFINE_string("output_dir", "", "Where <step>.json goes (default DIR/eval).")
  flags.DEFINE_bool("skip_done", False, "Reuse stored results of steps already evaluated "
                    "with these splits, max_tokens and benchmarks (for --step=all).")
  flags.mark_flag_as_required("workdir")
  return flags.FLAGS


def main(argv):
  from absl import app, logging  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only managers
  f = FLAGS
  from mambaswelu_jax.data.sources import DataError  # pylint: disable=import-outside-toplevel
  try:
    results = evaluate_run(f.workdir, f.step, splits=[s for s in f.splits if s],
                           max_tokens=f.max_tokens, batch_per_device=f.batch_per_device,
                           benchmarks=f.benchmarks, benchmark_limit=f.benchmark_limit,
                           benchmark_batch_size=f.benchmark_batch_size,
                           benchmark_tasks_dir=f.benchmark_tasks_dir, output_dir=f.output_dir,
                           skip_done=f.skip_done)
  except (EvalError, DataError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_report(results, f.output_dir))


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  FLAGS = _define_flags()
  from absl import app as _app  # pylint: disable=ungrouped-imports
  _app.run(main)
