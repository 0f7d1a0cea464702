r"""Decoding speed: the recurrent cache against re-running the full forward per token,
and evaluation throughput.

  python experiments/bench_decode.py [--config=configs/demo.py] [--new_tokens=256,1024]
      [--batch=1] [--prompt_len=8] [--eval_batches=8] [--json_out=FILE]
  # the study model: --config=configs/default.py --config.model.vocab_size=32000

Both decoders are compiled once before timing (compilation excluded) and run greedy
from random-init parameters (speed does not depend on the weights):

  recurrent   `sampling.generate_tokens`: the prompt through `decode_step`, then one
              `decode_step` per new token inside a `lax.scan` (constant work per token).
  reforward   `sampling.reforward_tokens`: what the original project did, the full
              forward over the whole sequence for every new token. To be fair to it the
              sequence buffer grows in power-of-two buckets (each bucket compiled
              before timing), so a step costs a forward over at most twice its length,
              not over the final length.

Both produce the same greedy tokens (checked here). Eval throughput is the eval
step (`eval.type_sums`: forward, token NLL and per-type sums) on
eval.batch_per_device x seq_len batches, tokens per second of wall time after
compilation.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax import sampling
from mambaswelu_jax import steps
from mambaswelu_jax.mesh import make_mesh, to_global
from mambaswelu_jax.models import build_model, count_parameters
from mambaswelu_jax.models.handle import split_model
from study_lib.checkout import import_from_checkout

import_from_checkout("configs")  # the config files import configs.common and configs.default
_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Run config.")
_NEW = flags.DEFINE_list("new_tokens", ["256", "1024"], "New tokens per measurement.")
_BATCH = flags.DEFINE_integer("batch", 1, "Sequences decoded together.")
_PROMPT = flags.DEFINE_integer("prompt_len", 8, "Prompt tokens.")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 8, "Eval batches timed (0: skip).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of each measurement (best kept).")
_JSON = flags.DEFINE_string("json_out", "", "Write the figures here.")


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times), out


def random_run(config):
  """A restore.Run with random-init parameters (no workdir)."""
  mesh = make_mesh(jax.local_devices()[:1])
  model = build_model(config.model, nnx.Rngs(0))
  handle, params = jax.device_put(split_model(model), NamedSharding(mesh, P()))
  return restore.Run("", config, 0, "init", None, handle, params, mesh), count_parameters(
      params)


def bench_recurrent(run, prompt, new, repeats):
  args = (run.params, run.handle, jnp.asarray(prompt),
          jnp.full((prompt.shape[0],), prompt.shape[1], jnp.int32), jax.random.key(0),
          jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0), jnp.int32(-1))
  fn = jax.jit(functools.partial(sampling.generate_tokens,
                                 max_new_tokens=new)).lower(*args).compile()
  seconds, tokens = _best(lambda: fn(*args), repeats)
  return seconds, np.asarray(tokens)


def bench_reforward(run, prompt, new, repeats):
  """Bucketed growing buffer: segments [len, bucket) decoded with a buffer of `bucket`."""
  b, p = prompt.shape
  segments, length = [], p
  while length < p + new:
    size = max(64, 1 << (length).bit_length())      # strictly longer than `length`
    steps = min(size - length, p + new - length)
    segments.append((size, length, steps))
    length += steps
  fns = {}
  for size, start, steps in segments:
    fn = jax.jit(functools.partial(sampling.reforward_tokens,
                                   max_new_tokens=steps))
    args = (run.params, run.handle, jnp.zeros((b, size), jnp.int32), jnp.int32(start),
            jax.random.key(0), jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    fns[(size, start)] = fn.lower(*args).compile()

  def go():
    seq = np.asarray(prompt)
    for size, start, steps in segments:
      buf = np.zeros((b, size), np.int32)
      buf[:, :start] = seq
      out = fns[(size, start)](run.params, run.handle, jnp.asarray(buf), jnp.int32(start),
                               jax.random.key(0), jnp.float32(0.0), jnp.int32(0),
                               jnp.float32(1.0))
      seq = np.concatenate([seq, np.asarray(out)], 1)
    return seq[:, p:]

  return _best(go, repeats)


def bench_eval(run, n_batches, repeats):
  cfg = run.config
  rows = int(cfg.eval.batch_per_device)
  seq = int(cfg.data.seq_len)
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(0, cfg.model.vocab_size, (rows, seq), dtype=np.int32),
           "targets": rng.integers(0, cfg.model.vocab_size, (rows, seq), dtype=np.int32),
           "weights": np.ones((rows, seq), np.float32),
           "target_bytes": np.full((rows, seq), 4, np.int32),
           "text_type": np.zeros((rows, seq), np.int32)}
  arrays = to_global(batch, run.mesh)
  fn = steps.make_eval_step(run.mesh).lower(run.params, run.handle, arrays).compile()

  def go():
    out = None
    for _ in range(n_batches):
      out = fn(run.params, run.handle, arrays)
    return out

  seconds, _ = _best(go, repeats)
  return n_batches * rows * seq / seconds, rows, seq


def main(argv):
  del argv
  config = _CONFIG.value
  run, n_params = random_run(config)
  dev = jax.local_devices()[0]
  print(f"model: d_model {config.model.d_model}, {config.model.n_layers} layers, vocab "
        f"{config.model.vocab_size}, {n_params:,} parameters, {config.model.compute_dtype} "
        f"matmuls; device: {dev.device_kind} ({jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU cores); batch {_BATCH.value}, prompt {_PROMPT.value} tokens")
  prompt = np.random.default_rng(1).integers(
      0, config.model.vocab_size, (_BATCH.value, _PROMPT.value)).astype(np.int32)
  results = {"device": dev.device_kind, "params": n_params, "batch": _BATCH.value,
             "prompt_len": _PROMPT.value, "decode": []}
  print(f"{'new tokens':>10} {'recurrent tok/s':>16} {'reforward tok/s':>16} {'speed-up':>9} "
        f"{'same tokens':>12}")
  for new in map(int, _NEW.value):
    t_rec, tok_rec = bench_recurrent(run, prompt, new, _REPEATS.value)
    t_ref, tok_ref = bench_reforward(run, prompt, new, max(1, _REPEATS.value - 2))
    rec = _BATCH.value * new / t_rec
    ref = _BATCH.value * new / t_ref
    same = bool(np.array_equal(tok_rec, tok_ref))
    results["decode"].append({"new_tokens": new, "recurrent_tokens_per_s": rec,
                              "reforward_tokens_per_s": ref, "speedup": t_ref / t_rec,
                              "same_tokens": same})
    print(f"{new:>10} {rec:>16,.0f} {ref:>16,.0f} {t_ref / t_rec:>8.1f}x {str(same):>12}",
          flush=True)
  if _EVAL_BATCHES.value:
    tps, rows, seq = bench_eval(run, _EVAL_BATCHES.value, _REPEATS.value)
    results["eval_tokens_per_s"] = tps
    print(f"eval: {tps:,.0f} tokens/s ({rows} x {seq} tokens per batch)")
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
