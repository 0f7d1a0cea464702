"""One-command GPU check: both fused scans against xla, their speed against the memory
floor, and the study model's train step with each scan implementation.

  python experiments/gpu_check.py --out_dir=DIR [--budget_s=420]   # on a GPU
  python experiments/gpu_check.py --smoke --out_dir=DIR             # tiny shapes, any machine

Needs jax, flax, optax, orbax, numpy, absl-py and ml_collections (pure Python: carry its
wheel to a machine without it); run from the checkout (PYTHONPATH=.:experiments).
Sections, most important first; each is recorded as it finishes, so a run cut short by
--budget_s (or a crash in one part) still leaves everything before it in the report:
  1. environment: card, driver, CUDA, jax/jaxlib; what impl="auto" picks here;
  2. correctness of every fused kernel against xla (outputs, last state, the gradient of
     every input) at three shapes, the study's (4, 1024, 2048, 16) among them, with
     float32 and bfloat16 inputs;
  3. at the study shape, median forward and forward+backward times of each kernel and of
     xla, against the memory floor: the bytes the computation must move at the very
     least, divided by the device-copy bandwidth measured in the same run;
  4. the study model's real train step (sequence 1024, bf16, global batch 16) with each
     implementation at micro-batch 8 and 4, each in its own process (clean peak memory):
     compile time, tokens/s, TFLOP/s, MFU, peak memory against the memory pre-flight's
     prediction, and the top device ops of a jax.profiler trace of 3 steps.
Writes DIR/gpu_check.json and one .xplane.pb trace per implementation; prints one
table last.
"""

import argparse
import collections
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# The train steps run in child processes beside this one: no process may take the GPU's
# memory up front (and peak_bytes_in_use then measures what a step really uses).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from kernels import scan as kscan, selective_scan

STUDY_SHAPE = (4, 1024, 2048, 16)
SHAPES = [(2, 333, 320, 16), (3, 1000, 768, 8), STUDY_SHAPE]
SMOKE_SHAPES = [(1, 19, 12, 4), (2, 33, 40, 16), (1, 64, 64, 16)]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# max |kernel - xla| / max |xla| per output; bf16 outputs are rounded to 8 bits.
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
PROFILE_STEPS = 3


def scan_inputs(shape, dtype=jnp.float32, seed=0):
  b, l, d, n = shape
  k = iter(jax.random.split(jax.random.key(seed), 8))
  f = lambda *s: jax.random.normal(next(k), s, jnp.float32).astype(dtype)
  A = -jnp.tile(jnp.arange(1, n + 1, dtype=jnp.float32), (d, 1))
  return dict(u=f(b, l, d), delta=f(b, l, d) - 1.0, A=A, B=f(b, l, n), C=f(b, l, n),
              D=f(d).astype(jnp.float32), z=f(b, l, d),
              delta_bias=0.1 * f(d).astype(jnp.float32))


def scan_fn(impl):
  def run(x):
    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                          delta_bias=x["delta_bias"], delta_softplus=True, impl=impl,
                          return_last_state=True)
  return run


def forward_backward(impl):
  """jit(x, dy, dh -> (y, h, all input cotangents)): one forward and one backward."""
  def run(x, dy, dh):
    (y, h), vjp = jax.vjp(scan_fn(impl), x)
    return y, h, vjp((dy, dh))[0]
  return jax.jit(run)


def cotangents(x, seed=1):
  y, h = jax.eval_shape(scan_fn("xla"), x)
  k1, k2 = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(k1, y.shape, jnp.float32).astype(y.dtype),
          jax.random.normal(k2, h.shape, jnp.float32).astype(h.dtype))


def kernel_impls():
  """The fused kernels this build and device offer (Mosaic GPU needs sm_90+)."""
  impls = [i for i in ("pallas_triton", "pallas_mosaic") if i in kscan.available_implementations()]
  if jax.default_backend() == "gpu" and kscan._compute_capability() < (9, 0):
    impls = [i for i in impls if i not in kscan._NEEDS_SM90]
  return impls


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if not np.all(np.isfinite(a)):
    return float("inf")
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


# ----------------------------------------------------------------------------------
# 1. Environment.


def environment():
  dev = jax.devices()[0]
  env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "jax": jax.__version__,
         "backend": jax.default_backend(), "device": dev.device_kind,
         "device_count": jax.device_count(),
         "compute_capability": getattr(dev, "compute_capability", None),
         "available_implementations": list(kscan.available_implementations()),
         "kernel_import_errors": dict(kscan._KERNEL_IMPORT_ERRORS),
         "auto_kernels_order": list(kscan.AUTO_KERNELS)}
  import jaxlib  # pylint: disable=import-outside-toplevel
  env["jaxlib"] = jaxlib.__version__  # jax needs it: always there
  try:
    env["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError) as e:
    env["nvidia_smi"] = f"unavailable: {e}"
  try:
    info = jax.print_environment_info(return_string=True)
    env["cuda"] = [line.strip() for line in info.splitlines()
                   if "cuda" in line.lower() or "CUDA" in line][:8]
  except Exception as e:  # pylint: disable=broad-except
    env["cuda"] = f"unavailable: {e}"
  # What `auto` resolves to on this host when lowered for CUDA.
  env["auto_picks"] = (kscan.auto_kernel() or "xla") if env["backend"] == "gpu" else "xla"
  return env


# ----------------------------------------------------------------------------------
# 2. Correctness.


def check_correctness(shapes, dtypes):
  rows = []
  for shape in shapes:
    for dname in dtypes:
      x = scan_inputs(shape, DTYPES[dname])
      dy, dh = cotangents(x)
      want = forward_backward("xla")(x, dy, dh)
      for impl in kernel_impls():
        row = {"impl": impl, "shape": list(shape), "dtype": dname}
        try:
          y, h, g = forward_backward(impl)(x, dy, dh)
          errs = {"y": rel_err(y, want[0]), "last_state": rel_err(h, want[1])}
          errs.update({f"d{k}": rel_err(g[k], want[2][k]) for k in g})
          row.update(errors=errs, max_rel_err=max(errs.values()),
                     ok=max(errs.values()) <= TOLERANCE[dname])
        except Exception as e:  # pylint: disable=broad-except
          row.update(error=f"{type(e).__name__}: {str(e)[:2000]}", ok=False,
                     max_rel_err=float("inf"))
        rows.append(row)
        print(f"correctness {impl} {shape} {dname}: max relative error "
              f"{row['max_rel_err']:.2e} {'ok' if row['ok'] else 'FAIL'}"
              + (f" ({row['error'][:300]})" if "error" in row else ""), flush=True)
  return rows


# ----------------------------------------------------------------------------------
# 3. Timing against the memory floor.


def median_time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def floor_bytes(shape, itemsize):
  """The least HBM traffic of the scan at `shape` with inputs of `itemsize` bytes.

  forward:  read u, delta, z, B, C; write y and the last state (float32).
  backward: read them again and dy, dh_last; write du, ddelta, dz, dB, dC.
  (A, D and the dt bias are per channel: negligible.) What a kernel keeps between
  the passes (chunk-entry states) is its own choice and not counted."""
  b, l, d, n = shape
  seq, vec, state = b * l * d * itemsize, b * l * n * itemsize, b * d * n * 4
  forward = 3 * seq + 2 * vec + seq + state
  backward = (3 * seq + 2 * vec + seq + state) + (3 * seq + 2 * vec)
  return {"forward": forward, "forward_backward": forward + backward}


def copy_bandwidth(num_bytes, repeats):
  """Bytes/s of a device-to-device copy (read + write of a float32 array)."""
  x = jnp.ones((num_bytes // 4,), jnp.float32)
  t = median_time(jax.jit(lambda v: v * 2.0), x, repeats=repeats)
  return 2 * x.size * 4 / t


def time_scans(shape, dtypes, repeats, copy_Bps):
  out = {}
  for dname in dtypes:
    x = scan_inputs(shape, DTYPES[dname])
    dy, dh = cotangents(x)
    floors = floor_bytes(shape, jnp.dtype(DTYPES[dname]).itemsize)
    for impl in (*kernel_impls(), "xla"):
      key = f"{impl}/{dname}"
      try:
        fwd = median_time(jax.jit(scan_fn(impl)), x, repeats=repeats)
        fb = median_time(forward_backward(impl), x, dy, dh, repeats=repeats)
        out[key] = {"forward_s": fwd, "forward_backward_s": fb,
                    "forward_floor_bytes": floors["forward"],
                    "forward_backward_floor_bytes": floors["forward_backward"],
                    "forward_x_floor": fwd / (floors["forward"] / copy_Bps),
                    "forward_backward_x_floor":
                        fb / (floors["forward_backward"] / copy_Bps)}
      except Exception as e:  # pylint: disable=broad-except
        out[key] = {"error": f"{type(e).__name__}: {str(e)[:1000]}"}
      print(f"timing {key}: {out[key]}", flush=True)
    for impl in kernel_impls():
      k, xla = out.get(f"{impl}/{dname}", {}), out.get(f"xla/{dname}", {})
      if "forward_s" in k and "forward_s" in xla:
        k["forward_speedup_over_xla"] = xla["forward_s"] / k["forward_s"]
        k["forward_backward_speedup_over_xla"] = (xla["forward_backward_s"]
                                                  / k["forward_backward_s"])
  return out


def sweep_triton(shape, repeats, copy_Bps, variants):
  """The Triton kernel's launch settings side by side at `shape` (float32): channels
  per program and warps per program."""
  from kernels.pallas_scan import pallas_selective_scan  # pylint: disable=import-outside-toplevel
  x = scan_inputs(shape)
  dy, dh = cotangents(x)
  floors = floor_bytes(shape, 4)
  rows = []
  for block_d, num_warps in variants:
    def run(x, block_d=block_d, num_warps=num_warps):
      return pallas_selective_scan(
          x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
          True, kscan.DEFAULT_CHUNK_SIZE, block_d=block_d, num_warps=num_warps)

    def fb(x, dy, dh, run=run):
      (y, h), vjp = jax.vjp(run, x)
      return y, h, vjp((dy, dh))[0]

    row = {"block_d": block_d, "num_warps": num_warps}
    try:
      row["forward_s"] = median_time(jax.jit(run), x, repeats=repeats)
      row["forward_backward_s"] = median_time(jax.jit(fb), x, dy, dh, repeats=repeats)
      row["forward_x_floor"] = row["forward_s"] / (floors["forward"] / copy_Bps)
      row["forward_backward_x_floor"] = (row["forward_backward_s"]
                                         / (floors["forward_backward"] / copy_Bps))
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    print(f"sweep triton {row}", flush=True)
    rows.append(row)
  return rows


# ----------------------------------------------------------------------------------
# 4. The study model's train step (one process per implementation and micro-batch).


def study_config(impl, micro_batch, smoke):
  from study_lib.checkout import import_from_checkout  # pylint: disable=import-outside-toplevel
  config = import_from_checkout("configs.default").get_config()
  config.model.scan_impl = impl
  config.train.num_steps = 100_000  # only sets the schedule
  if smoke:
    config.model.update(vocab_size=256, d_model=64, n_layers=2, dense_hidden=128)
    config.data.seq_len = 64
  config.train.global_batch_size = 16
  config.train.micro_batch_per_device = micro_batch
  return config


def top_device_ops(trace_dir, limit=15):
  """[(op name, total ms, share)] of the device lines of the newest xplane in `trace_dir`."""
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if not paths:
    return [], None
  data = ProfileData.from_file(paths[-1])
  totals = collections.Counter()
  for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    lines = list(plane.lines)
    # "XLA Ops" names each HLO op once; without it, the kernels of the CUDA streams.
    ops = [l for l in lines if l.name == "XLA Ops"] or [
        l for l in lines if l.name.startswith("Stream")]
    for line in ops:
      for event in line.events:
        totals[event.name] += event.duration_ns
  total = sum(totals.values()) or 1
  return ([(name, ns / 1e6, ns / total) for name, ns in totals.most_common(limit)],
          paths[-1])


def train_worker(impl, micro_batch, smoke, steps, trace_dir):
  """Runs in its own process: compiles, times and traces the train step; prints JSON."""
  from mambaswelu_jax import config_validation
  from mambaswelu_jax.training import throughput
  from mambaswelu_jax.training import memory_check  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.mesh import make_mesh, to_global  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.flops import flops_per_token  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.steps import make_train_step  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.training.state import create_train_state  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  config = study_config(impl, micro_batch, smoke)
  config = config_validation.resolve(config, num_devices=len(devices), process_count=1)
  accum = config_validation.check_batch(config, len(devices), 1)
  mesh = make_mesh(devices)
  parts, state, handle = create_train_state(config, mesh)
  step = make_train_step(mesh, parts, accum)
  g, seq_len = int(config.train.global_batch_size), int(config.data.seq_len)
  compiled, compile_s = memory_check.compile_step(step.jitted, state, handle, mesh, g, seq_len)
  predicted = memory_check.memory_of(compiled, micro_batch, accum, False, compile_s)
  tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (g, seq_len + 1),
                                             dtype=np.int32)
  batch = to_global({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh)
  one = jax.device_put(jnp.ones((), jnp.float32), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  t0 = time.perf_counter()
  state, m = compiled(state, handle, batch, one)
  jax.block_until_ready(m)
  first_step_s = time.perf_counter() - t0
  for _ in range(2):
    state, m = compiled(state, handle, batch, one)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, handle, batch, one)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  stats = devices[0].memory_stats() or {}
  flops = flops_per_token(config.model, seq_len)["training"]
  peak, peak_from = throughput.peak_tflops(devices[0], 1, 0.0)
  tokens_per_s = g * seq_len / step_s
  result = {"impl": impl, "micro_batch": micro_batch, "accumulation": accum,
            "global_batch": g, "seq_len": seq_len, "parameters": parts.num_params,
            "compile_s": compile_s, "first_step_s": first_step_s, "step_s": step_s,
            "step_s_min": float(np.min(times)), "steps_timed": steps,
            "tokens_per_s_per_device": tokens_per_s / len(devices),
            "tflops_per_device": tokens_per_s * flops / 1e12 / len(devices),
            "peak_tflops": peak, "peak_from": peak_from,
            "mfu": tokens_per_s * flops / 1e12 / len(devices) / peak,
            "flops_per_token": flops,
            "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
            "preflight_predicted_bytes": predicted.total,
            "preflight": {"argument": predicted.argument, "output": predicted.output,
                          "alias": predicted.alias, "temp": predicted.temp,
                          "code": predicted.code},
            "loss": float(m["train_loss"])}
  if trace_dir:
    try:
      with jax.profiler.trace(trace_dir):
        for _ in range(PROFILE_STEPS):
          state, m = compiled(state, handle, batch, one)
        jax.block_until_ready(m)
      ops, path = top_device_ops(trace_dir)
      result["profile_top_ops"] = ops
      result["profile_path"] = path
    except Exception as e:  # pylint: disable=broad-except
      result["profile_error"] = f"{type(e).__name__}: {str(e)[:500]}"
  print("RESULT " + json.dumps(result), flush=True)


def train_in_subprocess(impl, micro_batch, args, timeout_s, trace_dir):
  cmd = [sys.executable, os.path.abspath(__file__), f"--train_worker={impl}",
         f"--micro_batch={micro_batch}", f"--train_steps={args.train_steps}",
         f"--trace_dir={trace_dir or ''}"] + (["--smoke"] if args.smoke else [])
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"impl": impl, "micro_batch": micro_batch,
            "error": f"timed out after {timeout_s:.0f} s"}
  wall = time.perf_counter() - t0
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      result = json.loads(line[len("RESULT "):])
      result["process_wall_s"] = wall
      return result
  return {"impl": impl, "micro_batch": micro_batch, "returncode": proc.returncode,
          "error": (proc.stdout[-1500:] + proc.stderr[-3000:])}


# ----------------------------------------------------------------------------------


def summary_lines(report):
  env = report["environment"]
  lines = [f"GPU check: {env['device']} ({env['backend']}, {env.get('nvidia_smi', '')}), "
           f"jax {env['jax']}, jaxlib {env['jaxlib']}, {env['date']}",
           f"auto picks: {env['auto_picks']} (order {env['auto_kernels_order']})",
           "correctness against xla (max relative error over y, state and 8 gradients):"]
  lines += [f"  {r['impl']:<14} {str(tuple(r['shape'])):<20} {r['dtype']:<9} "
            f"{r['max_rel_err']:.2e}  {'ok' if r['ok'] else 'FAIL'}"
            for r in report.get("correctness", [])]
  t = report.get("timing", {})
  if t:
    lines.append(f"scan at {tuple(report['timing_shape'])} (device copy "
                 f"{report['copy_GBps']:.0f} GB/s):  fwd ms  x floor  fwd+bwd ms  x floor"
                 "  speed-up over xla (fwd, fwd+bwd)")
    for key, v in t.items():
      if "error" in v:
        lines.append(f"  {key:<24} ERROR {v['error'][:200]}")
        continue
      sp = (f"{v['forward_speedup_over_xla']:.1f}x, {v['forward_backward_speedup_over_xla']:.1f}x"
            if "forward_speedup_over_xla" in v else "")
      lines.append(f"  {key:<24} {v['forward_s'] * 1e3:8.3f} {v['forward_x_floor']:7.2f} "
                   f"{v['forward_backward_s'] * 1e3:10.3f} {v['forward_backward_x_floor']:8.2f}"
                   f"  {sp}")
  tr = report.get("train", [])
  if tr:
    lines.append("train step (study model, seq 1024, global batch 16, bf16):")
    lines.append("  impl            micro  tokens/s/GPU  TFLOP/s   MFU   step ms  compile s"
                 "  peak GiB  pre-flight GiB")
    for r in tr:
      if "error" in r:
        lines.append(f"  {r['impl']:<15} {r['micro_batch']:>5}  ERROR {r['error'][-300:]}")
        continue
      gib = lambda b: (b or 0) / 2 ** 30
      lines.append(f"  {r['impl']:<15} {r['micro_batch']:>5} {r['tokens_per_s_per_device']:13,.0f}"
                   f" {r['tflops_per_device']:8.1f} {r['mfu']:6.1%} {r['step_s'] * 1e3:8.1f}"
                   f" {r['compile_s']:9.1f} {gib(r['peak_bytes_in_use']):9.2f}"
                   f" {gib(r['preflight_predicted_bytes']):14.2f}")
    for r in tr:
      for name, ms, share in r.get("profile_top_ops", [])[:8]:
        lines.append(f"  profile {r['impl']} micro {r['micro_batch']}: {share:6.1%} "
                     f"{ms:9.2f} ms  {name[:90]}")
  return lines


def main():
  p = argparse.ArgumentParser(description="GPU check of the fused scans and the train step.")
  p.add_argument("--smoke", action="store_true", help="tiny shapes (any machine)")
  p.add_argument("--out_dir", default=os.environ.get("OUT", "."))
  p.add_argument("--budget_s", type=float, default=480.0,
                 help="stop starting new sections after this many seconds")
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--train_steps", type=int, default=10)
  p.add_argument("--sections", default="correctness,timing,sweep,train")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--sweep_variants", default="16:4,64:4,32:2",
                 help="Triton settings to time beside the default: block_d:num_warps,...")
  p.add_argument("--train_impls", default="pallas_triton,pallas_mosaic,xla")
  p.add_argument("--train_micro_batches", default="8,4")
  p.add_argument("--train_worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--micro_batch", type=int, default=8, help=argparse.SUPPRESS)
  p.add_argument("--trace_dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.train_worker:
    train_worker(args.train_worker, args.micro_batch, args.smoke, args.train_steps,
                 args.trace_dir or None)
    return 0

  start = time.perf_counter()
  left = lambda: args.budget_s - (time.perf_counter() - start)
  os.makedirs(args.out_dir, exist_ok=True)
  out = os.path.join(args.out_dir, "gpu_check.json")
  sections = args.sections.split(",")
  report = {"command": " ".join(sys.argv), "environment": environment()}

  def save():
    with open(out, "w") as f:
      json.dump(report, f, indent=2)

  print(json.dumps(report["environment"], indent=1), flush=True)
  save()
  shapes = SMOKE_SHAPES if args.smoke else SHAPES
  if "correctness" in sections:
    report["correctness"] = check_correctness(shapes, args.dtypes.split(","))
    save()
  if "timing" in sections and left() > 60:
    repeats = 2 if args.smoke else args.repeats
    report["timing_shape"] = list(shapes[-1])
    copy_Bps = copy_bandwidth((16 if args.smoke else 2048) * 2 ** 20, repeats)
    report["copy_GBps"] = copy_Bps / 1e9
    report["timing"] = time_scans(shapes[-1], args.dtypes.split(","), repeats, copy_Bps)
    save()
  if "sweep" in sections and left() > 60:
    copy_Bps = report.get("copy_GBps", 0) * 1e9 or copy_bandwidth(
        (16 if args.smoke else 2048) * 2 ** 20, 5)
    variants = [tuple(int(x) for x in v.split(":")) for v in args.sweep_variants.split(",")]
    report["sweep_triton"] = sweep_triton(shapes[-1], 2 if args.smoke else args.repeats,
                                          copy_Bps, variants)
    save()
  if "train" in sections:
    report["train"] = []
    # Off a GPU the Mosaic kernel runs in its (slow) interpreter: left out of the smoke.
    impls = [i for i in (*kernel_impls(), "xla")
             if jax.default_backend() == "gpu" or i != "pallas_mosaic"]
    micro_batches = [int(m) for m in args.train_micro_batches.split(",")]
    impls = [i for i in impls if i in args.train_impls.split(",")]
    for micro in micro_batches:
      for impl in impls:
        if left() < 30:
          report["train"].append({"impl": impl, "micro_batch": micro,
                                  "error": "skipped: --budget_s spent"})
          continue
        trace_dir = tempfile.mkdtemp(prefix=f"trace_{impl}_") if micro == micro_batches[0] else None
        r = train_in_subprocess(impl, micro, args, min(left(), 240), trace_dir)
        if r.get("profile_path"):
          dest = os.path.join(args.out_dir, f"trace_{impl}.xplane.pb")
          if os.path.getsize(r["profile_path"]) < 15 * 2 ** 20:
            shutil.copy(r["profile_path"], dest)
            r["profile_path"] = dest
        report["train"].append(r)
        print(f"train {impl} micro {micro}: " + json.dumps(
            {k: v for k, v in r.items() if k != "profile_top_ops"})[:1500], flush=True)
        save()
  report["wall_s"] = time.perf_counter() - start
  save()
  print("\n".join(summary_lines(report)))
  print(f"JSON: {out}")
  ok = all(r["ok"] for r in report.get("correctness", []))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
