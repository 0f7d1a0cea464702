"""CPU benchmark of the selective scan: `xla` against two textbook formulations.

  naive        lax.scan over materialised (B, L, D, N) tensors, differentiated by JAX
               (this is impl="reference")
  associative  lax.associative_scan over the materialised (a, b) pairs
  xla          impl="xla": chunked recurrence, custom VJP with chunk-boundary states

Times forward and forward+backward (median of several runs after compilation) and
reports the compiled program's memory (arguments + outputs + temporaries, from XLA's
memory analysis). Usage:

  python experiments/bench_scan.py [--shapes=2x512x512x16,1x1024x1024x16] [--repeats=5]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels import selective_scan
from kernels.scan import DEFAULT_CHUNK_SIZE, _discretize


def associative_scan(u, delta, A, B, C, D, z, delta_bias):
  dt = _discretize(delta, delta_bias, True, jnp.float32)
  a = jnp.exp(dt[..., None] * A)
  b = (dt * u)[..., None] * B[:, :, None, :]

  def combine(left, right):
    return right[0] * left[0], right[0] * left[1] + right[1]

  _, h = jax.lax.associative_scan(combine, (a, b), axis=1)
  y = jnp.einsum("bldn,bln->bld", h, C) + D * u
  return y * jax.nn.silu(z)


def impl_fn(name, chunk):
  if name == "associative":
    return associative_scan
  def f(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                          delta_softplus=True, impl=name, chunk_size=chunk)
  return f


def make_inputs(b, l, d, n, seed=0):
  r = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  A = -jnp.asarray(np.tile(np.arange(1, n + 1, dtype=np.float32), (d, 1)))
  return (f(b, l, d), f(b, l, d) - 2.0, A, f(b, l, n), f(b, l, n), f(d), f(b, l, d),
          f(d) * 0.1)


def measure(fn, args, repeats):
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
            + mem.temp_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), peak


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default="2x512x512x16,1x1024x1024x16",
                 help="BxLxDxN,... (the second default is the study's 1024 length and "
                      "half its 2048 channels, to fit this machine)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK_SIZE)
  p.add_argument("--impls", default="naive,associative,xla",
                 help="of naive, associative, xla, pallas_triton, pallas_mosaic")
  args = p.parse_args()
  # The fused kernels (pallas_triton, pallas_mosaic) run interpreted off a GPU: slow.
  names = {"naive": "reference", "associative": "associative", "xla": "xla",
           "pallas_triton": "pallas_triton", "pallas_mosaic": "pallas_mosaic"}
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, chunk {args.chunk}")
  rows = []
  for shape in args.shapes.split(","):
    b, l, d, n = map(int, shape.split("x"))
    inputs = make_inputs(b, l, d, n)
    results = {}
    for label in args.impls.split(","):
      f = impl_fn(names[label], args.chunk)
      fwd = lambda *a, f=f: jnp.sum(f(*a))
      grad = jax.grad(lambda *a, f=f: jnp.sum(f(*a) ** 2), argnums=tuple(range(8)))
      t_f, m_f = measure(fwd, inputs, args.repeats)
      t_b, m_b = measure(grad, inputs, args.repeats)
      results[label] = (t_f, t_b, m_b)
      print(f"  {shape:>16} {label:>12}: fwd {t_f*1e3:9.2f} ms  fwd+bwd {t_b*1e3:9.2f} ms"
            f"  fwd+bwd memory {m_b/2**20:9.1f} MiB", flush=True)
    rows.append((shape, results))

  print("\nshape             impl          fwd ms  fwd+bwd ms   memory MiB"
        "   fwd+bwd speed-up of xla   memory vs naive")
  for shape, results in rows:
    xf, xb, xm = results.get("xla", (None,) * 3)
    for label, (tf, tb, mb) in results.items():
      speed = f"{tb / xb:6.2f}x" if xb else "   -"
      memr = f"{mb / results['naive'][2]:6.3f}" if "naive" in results else "   -"
      print(f"{shape:<17} {label:<12} {tf*1e3:8.2f} {tb*1e3:11.2f} {mb/2**20:12.1f}"
            f"   {speed:>24}   {memr:>15}")


if __name__ == "__main__":
  main()
