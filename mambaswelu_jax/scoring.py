"""Log-likelihoods of continuations: what the lm-eval adapter and the generation-quality
measures score with.

`score_sequences(run, [(context ids, continuation ids), ...])` gives, per request,
Σ log p(continuation | context) and whether greedy decoding reproduces the
continuation. Requests are scored whole, in one forward pass each batch, unless they
are longer than the model's own limit (`restore.Run.max_length`) or a caller's cap;
then their leftmost tokens are cut (`fit_request`) and the cut is counted. A model
without a position limit scores requests longer than LONGEST_FORWARD tokens through
its recurrent state, in pieces, with constant memory and the same numbers.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax.mesh import DATA_AXIS


def _bucket(n: int, minimum: int = 16) -> int:
  """The next power of two >= n: one compilation per bucket."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def scoring_limit(run: restore.Run, max_length: int = 0) -> int | None:
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


def continuation_logprobs(params, handle, inputs, targets):
  """(log p(target), target == argmax) per position, float32 / bool (b, L).

  log p = logit - logsumexp(logits): no second (b, L, vocab) array beside the logits."""
  logits = handle.bind(params)(inputs).astype(jnp.float32)
  picked = (jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
            - jax.nn.logsumexp(logits, -1))
  return picked, jnp.argmax(logits, -1) == targets


def recurrent_logprobs(params, handle, cache, inputs, targets):
  """continuation_logprobs one token at a time through the model's recurrent state:
  (cache after the piece, log p (b, T), greedy (b, T)) for inputs that continue `cache`.
  Memory does not grow with the length; the numbers are the forward pass's."""
  def step(cache, xs):
    token, target = xs
    logits, cache = handle.bind(params).decode_step(token, cache)
    logits = logits.astype(jnp.float32)
    picked = (jnp.take_along_axis(logits, target[:, None], -1)[:, 0]
              - jax.nn.logsumexp(logits, -1))
    return cache, (picked, jnp.argmax(logits, -1) == target)
  cache, (picked, greedy) = jax.lax.scan(step, cache, (inputs.T, targets.T))
  return cache, picked.T, greedy.T


def _score_recurrent(run: restore.Run, seq: Sequence[int], n: int,
                     piece: int) -> tuple[float, bool]:
  """One sequence longer than one forward pass may take: pieces of `piece` tokens, each
  continuing the recurrent state of the one before (every token sees its whole past)."""
  fn = restore.cached("recurrent_scorer", run, lambda: jax.jit(recurrent_logprobs), piece)
  length = len(seq) - 1
  inputs = np.zeros((1, -(-length // piece) * piece), np.int32)
  targets = np.zeros_like(inputs)
  inputs[0, :length], targets[0, :length] = seq[:-1], seq[1:]
  cache = run.model.init_cache(1)
  logp, greedy = [], []
  for start in range(0, inputs.shape[1], piece):
    cache, lp, gr = fn(run.params, run.handle, cache, inputs[:, start:start + piece],
                       targets[:, start:start + piece])
    logp.append(np.asarray(lp[0]))
    greedy.append(np.asarray(gr[0]))
  logp, greedy = np.concatenate(logp)[length - n:length], np.concatenate(greedy)[length - n:length]
  return float(np.sum(logp, dtype=np.float64)), bool(np.all(greedy))


def make_scorer(run: restore.Run):
  """jit(shard_map(continuation_logprobs)): rows split over the run's devices; it compiles
  once per (rows, length) shape and is shared by runs of one model config."""
  def build():
    return jax.jit(jax.shard_map(continuation_logprobs, mesh=run.mesh,
                                 in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS)),
                                 out_specs=P(DATA_AXIS), check_vma=False))
  return restore.cached("scorer", run, build)


# The longest input one forward pass scores (logits of this many tokens: 3.3 GB at a
# 50k vocabulary); a model without a position limit scores longer ones in pieces through
# its recurrent state (`recurrent_logprobs`).
LONGEST_FORWARD = 16384


def score_sequences(run: restore.Run,
                    requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
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
  n_dev = run.num_devices
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
        run.params, run.handle, jax.device_put(inputs, row_sharding),
        jax.device_put(targets, row_sharding)))
    for j, (i, seq, n) in enumerate(chunk):
      end = len(seq) - 1
      results[i] = (float(np.sum(logp[j, end - n:end], dtype=np.float64)),
                    bool(np.all(greedy[j, end - n:end])))
    if progress is not None:
      progress(len(chunk))
  if progress is not None and len(rows) < len(requests):
    progress(len(requests) - len(rows))   # empty continuations: nothing to score
  return results


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
