"""One-command GPU check of the selective scan and the study model's train step.

  python experiments/gpu_check.py [--out=gpu_check.json]      # on a GPU, ~3-5 minutes
  python experiments/gpu_check.py --smoke                     # tiny shapes, any machine

Needs jax, flax, optax, numpy, ml_collections and absl-py (pure Python: carry their wheels to a
machine without them). Sections:
  1. correctness of impl="pallas" (Triton) against impl="xla" (outputs, last state,
     gradients of every input) at three shapes, the study's (4, 1024, 2048, 16) among
     them; on Hopper and newer also impl="pallas_mosaic" (the Mosaic GPU kernel);
  2. median forward and forward+backward times of both at the study shape;
  3. the forward's achieved bandwidth (its compulsory HBM traffic / time) against a
     measured device copy;
  4. 20 steps of the study model's real train step (mambaswelu_jax.bench_train) with each
     implementation: tokens/s, TFLOP/s and MFU.
It prints one table last and writes everything as JSON.
"""

import argparse
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels import selective_scan
from study_lib.checkout import import_from_checkout

STUDY_SHAPE = (4, 1024, 2048, 16)
SHAPES = [(2, 333, 320, 16), (3, 1000, 768, 8), STUDY_SHAPE]
SMOKE_SHAPES = [(1, 19, 12, 4), (2, 33, 40, 16), (1, 64, 64, 16)]


def scan_inputs(shape, seed=0, dtype=jnp.float32):
  b, l, d, n = shape
  k = iter(jax.random.split(jax.random.key(seed), 8))
  f = lambda *s: jax.random.normal(next(k), s, dtype)
  A = -jnp.tile(jnp.arange(1, n + 1, dtype=jnp.float32), (d, 1))
  return dict(u=f(b, l, d), delta=f(b, l, d) - 1.0, A=A, B=f(b, l, n), C=f(b, l, n),
              D=f(d), z=f(b, l, d), delta_bias=0.1 * f(d))


def scan_fn(impl):
  def run(x):
    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                          delta_bias=x["delta_bias"], delta_softplus=True, impl=impl,
                          return_last_state=True)
  return run


def loss_and_grads(impl):
  def loss(x):
    y, h = scan_fn(impl)(x)
    w = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y * w) + jnp.sum(jnp.sin(h))
  return jax.jit(jax.value_and_grad(loss))


def kernel_impls():
  """The fused kernels to check: Triton ("pallas"), and Mosaic GPU on an sm_90+ GPU."""
  from kernels import scan as kscan
  impls = ["pallas"]
  if ("pallas_mosaic" in kscan.available_implementations()
      and jax.default_backend() == "gpu" and kscan._compute_capability() >= (9, 0)):
    impls.append("pallas_mosaic")
  return impls


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def check_correctness(shapes):
  rows = []
  for shape in shapes:
    x = scan_inputs(shape)
    y_x, h_x = jax.jit(scan_fn("xla"))(x)
    _, g_x = loss_and_grads("xla")(x)
    for impl in kernel_impls():
      y_p, h_p = jax.jit(scan_fn(impl))(x)
      _, g_p = loss_and_grads(impl)(x)
      errs = {"y": rel_err(y_p, y_x), "last_state": rel_err(h_p, h_x)}
      errs.update({f"d{k}": rel_err(g_p[k], g_x[k]) for k in g_x})
      rows.append({"impl": impl, "shape": shape, "max_rel_err": max(errs.values()),
                   "errors": errs, "ok": max(errs.values()) <= 1e-4})
      print(f"correctness {impl} {shape}: max relative error {max(errs.values()):.2e}",
            flush=True)
  return rows


def median_time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def time_scans(shape, repeats):
  x = scan_inputs(shape)
  out = {}
  for impl in (*kernel_impls(), "xla"):
    out[impl] = {"forward_s": median_time(jax.jit(scan_fn(impl)), x, repeats=repeats),
                 "forward_backward_s": median_time(loss_and_grads(impl), x, repeats=repeats)}
    print(f"timing {impl}: {out[impl]}", flush=True)
  return out


def copy_bandwidth(num_bytes, repeats):
  x = jnp.ones((num_bytes // 4,), jnp.float32)
  t = median_time(jax.jit(lambda v: v * 2.0), x, repeats=repeats)
  return 2 * x.size * 4 / t  # read + write


def forward_bytes(shape, chunk):
  """Compulsory HBM traffic of the forward: read u, delta, z, B, C; write y, the chunk
  entry states and the last state (float32)."""
  b, l, d, n = shape
  return 4 * (4 * b * l * d + 2 * b * l * n + b * (-(-l // chunk) + 1) * d * n)


def train_throughput(impl, steps, smoke):
  """The study model's real train step (mambaswelu_jax.bench_train) with `impl`."""
  from mambaswelu_jax import bench_train

  config = import_from_checkout("configs.default").get_config()
  config.model.scan_impl = impl
  if smoke:
    config.model.update(vocab_size=256, d_model=64, n_layers=2, dense_hidden=128)
    config.data.seq_len = 64
    config.train.global_batch_size, config.train.micro_batch_per_device = 4, 2
  config.train.num_steps = 100_000  # only sets the schedule; a few steps run
  config.train.micro_batch_per_device = min(config.train.micro_batch_per_device * 2,
                                            config.train.global_batch_size)
  result = {"impl": impl, **bench_train.benchmark(config, steps)}
  result["tokens_per_s_per_device"] = result["tokens_per_second"] / result["devices"]
  print(f"train step {impl}: {result}", flush=True)
  return result


def main():
  p = argparse.ArgumentParser(description="GPU check of the Pallas scan and train step.")
  p.add_argument("--smoke", action="store_true", help="tiny shapes (any machine)")
  p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--train_steps", type=int, default=20)
  args = p.parse_args()
  dev = jax.devices()[0]
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "jax": jax.__version__, "device": dev.device_kind, "backend": jax.default_backend(),
            "device_count": jax.device_count()}
  print(report, flush=True)
  shapes = SMOKE_SHAPES if args.smoke else SHAPES
  report["correctness"] = check_correctness(shapes)
  timing_shape = shapes[-1]
  repeats = 2 if args.smoke else args.repeats
  report["timing_shape"] = timing_shape
  report["timing"] = time_scans(timing_shape, repeats)
  bw = copy_bandwidth((16 if args.smoke else 1024) * 2**20, repeats)
  from kernels.scan import DEFAULT_CHUNK_SIZE
  fwd_bytes = forward_bytes(timing_shape, DEFAULT_CHUNK_SIZE)
  report["bandwidth"] = {
      "copy_GBps": bw / 1e9, "forward_bytes": fwd_bytes,
      "forward_floor_s": fwd_bytes / bw,
      **{f"{impl}_forward_GBps": fwd_bytes / report["timing"][impl]["forward_s"] / 1e9
         for impl in report["timing"]}}
  steps = 2 if args.smoke else args.train_steps
  report["train"] = [train_throughput(impl, steps, args.smoke)
                     for impl in (*kernel_impls(), "xla")]

  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  t, bwr = report["timing"], report["bandwidth"]
  lines = [
      f"GPU check: {report['device']} ({report['backend']}), jax {report['jax']}, "
      f"{report['date'][:10]}",
      "correctness (pallas vs xla, max relative error over y, state and 8 gradients):"]
  lines += [f"  {r['impl']:<14}{str(tuple(r['shape'])):<22} {r['max_rel_err']:.2e}  "
            f"{'ok' if r['ok'] else 'FAIL'}" for r in report["correctness"]]
  lines += [f"scan at {tuple(timing_shape)}:      forward ms   fwd+bwd ms   forward GB/s",
            *[f"  {impl:<28} {t[impl]['forward_s'] * 1e3:10.3f} "
              f"{t[impl]['forward_backward_s'] * 1e3:12.3f} {bwr[impl + '_forward_GBps']:12.1f}"
              for impl in t],
            *[f"  {impl} speed-up over xla: forward "
              f"{t['xla']['forward_s'] / t[impl]['forward_s']:.2f}x, fwd+bwd "
              f"{t['xla']['forward_backward_s'] / t[impl]['forward_backward_s']:.2f}x"
              for impl in kernel_impls()],
            f"  device copy {bwr['copy_GBps']:.1f} GB/s; forward memory floor "
            f"{bwr['forward_floor_s'] * 1e6:.1f} us",
            "train step (study model):  tokens/s/device   TFLOP/s/device   MFU    step ms",
            *[f"  {r['impl']:<24} {r['tokens_per_s_per_device']:14,.0f} "
              f"{r['tflops_per_device']:14.1f} {r['mfu']:7.1%} {r['step_s'] * 1e3:9.1f}"
              for r in report["train"]],
            f"JSON: {args.out}"]
  print("\n".join(lines))
  return 0 if all(r["ok"] for r in report["correctness"]) else 1


if __name__ == "__main__":
  sys.exit(main())
