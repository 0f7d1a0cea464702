"""What runs on the GPU is lowered for CUDA here, on a CPU (design invariant 8).

`jax.export(..., platforms=["cuda"])` lowers without a GPU. For every fused kernel this
build has, the forward and the backward are exported on shapes with channel, state and
length tails, in float32 and bfloat16; the checks are that each kernel is there as its
custom call (one per forward, one per backward) and that no interpreted kernel is left
(its ops carry the INTERPRET_SCOPE name; a CPU lowering of the same function is the
positive control). `impl="auto"` is exported for CUDA (the kernel) and CPU (xla, no
kernel, no interpreter); `selective_state_update` and the study model's training step
as the trainer builds it (train.make_train_step over a 2-device mesh, gradient
accumulation 2) are exported for CUDA as well.

Run with `-s` to print the table of custom calls found (kernel, dtype, shape).
"""

import collections
import json
import os
import re
import subprocess
import sys

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export  # jax < 0.8 has no `jax.export` attribute

import kernels
from kernels import scan as kscan
from kernels.fused import INTERPRET_SCOPE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The custom call each fused kernel lowers to on CUDA.
KERNEL_TARGETS = {"pallas_triton": "__gpu$xla.gpu.triton",
                  "pallas_mosaic": "mosaic_gpu_v2"}
FUSED = [k for k in kscan.available_implementations() if k in KERNEL_TARGETS]
# These targets have no compatibility guarantee across JAX versions (the export's
# safety check): fine for a lowering test, which never serialises for later.
DISABLED = [jax_export.DisabledSafetyCheck.custom_call(t) for t in KERNEL_TARGETS.values()]

SHAPES = [  # (batch, length, channels, state): block_d is min(32, next_pow2(channels))
    (2, 33, 13, 5),    # one channel block with a tail, state 5 of 8, length 33 = 2*16+1
    (1, 64, 64, 16),   # two full channel blocks, no tail anywhere
    (2, 17, 40, 3),    # two channel blocks, the second 8 of 32; state 3 of 4
    (1, 20, 64, 64),   # a large state (Mosaic GPU: unoptimised tile loads, T = 4)
]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_TABLE = []  # rows for the -s table


@pytest.fixture(scope="module", autouse=True)
def _print_table():
  yield
  if not _TABLE:
    return
  head = ("implementation", "dtype", "shape (b,l,d,n)", "exported", "custom calls (count)")
  rows = [head] + _TABLE
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
  print(f"\nCUDA lowering (jax {jax.__version__}, from {jax.default_backend()}):")
  for r in rows:
    print("  " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def custom_calls(text, targets=tuple(KERNEL_TARGETS.values())):
  """Counter of (target, kernel name) over the kernels' custom calls in a module."""
  found = collections.Counter()
  for line in text.splitlines():
    m = re.search(r"stablehlo\.custom_call @([\w$.\-]+)\(", line)
    if m and m.group(1) in targets:
      found[(m.group(1), _kernel_name(line[m.end():]))] += 1
  return found


def _kernel_name(call):
  """Triton names its kernel in the call's config; a Mosaic GPU call is told apart by
  its number of outputs (forward 3, backward 8)."""
  name = re.search(r'\bname = "([\w.<>\-]+)"', call)
  if name:
    return name.group(1)
  results = call.rsplit("->", 1)[-1]
  return f"{results.count('tensor<')} outputs"


def export_text(fn, args, platform="cuda"):
  """StableHLO (with locations) of `fn` lowered for `platform`: a CUDA export, or for
  the host a plain lowering (an export refuses the GPU interpreter's host callback)."""
  if platform == "cuda":
    exp = jax_export.export(jax.jit(fn), platforms=[platform], disabled_checks=DISABLED)(
        *args)
    return exp.mlir_module()
  assert platform == jax.default_backend()
  return jax.jit(fn).lower(*args).as_text(debug_info=True)


def shapes_of(b, l, d, n, dtype):
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  return (s(b, l, d), s(b, l, d), s(d, n), s(b, l, n), s(b, l, n), s(d), s(b, l, d), s(d))


def scan_fn(impl, grad):
  def forward(u, delta, A, B, C, D, z, bias):
    return kernels.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                                  delta_softplus=True, impl=impl, return_last_state=True)

  if not grad:
    return forward

  def loss(*args):
    y, h = forward(*args)
    return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h)

  return jax.value_and_grad(loss, argnums=tuple(range(8)))


def _describe(calls):
  return ", ".join(f"{t}:{n} x{c}" for (t, n), c in sorted(calls.items())) or "none"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", FUSED)
def test_kernels_lower_for_cuda_with_tails(impl, dtype):
  """One export per shape of value_and_grad (forward + backward kernels) and one of the
  forward alone: exactly one kernel call per pass, nothing interpreted, no loop left
  outside the kernels."""
  target = KERNEL_TARGETS[impl]
  for grad, shapes in ((False, SHAPES[:1]), (True, SHAPES)):
    for shape in shapes:
      text = export_text(scan_fn(impl, grad), shapes_of(*shape, DTYPES[dtype]))
      calls = custom_calls(text)
      _TABLE.append((impl, dtype, shape, "value_and_grad" if grad else "forward",
                     _describe(calls)))
      assert set(t for t, _ in calls) == {target}, calls
      assert sum(calls.values()) == (2 if grad else 1), calls
      fwd, bwd = (("_forward_kernel", "_backward_kernel") if impl == "pallas_triton"
                  else ("3 outputs", "8 outputs"))
      want = {fwd: 1, bwd: 1} if grad else {fwd: 1}
      assert {n: c for (_, n), c in calls.items()} == want, calls
      assert INTERPRET_SCOPE not in text
      assert "stablehlo.while" not in text  # the interpreter's grid and step loops


@pytest.mark.parametrize("impl", FUSED)
def test_the_same_function_lowered_for_cpu_is_interpreted(impl):
  """The positive control of the checks above: lowering for CPU keeps the interpreted
  kernel (the scope name; Triton's interpreter is loops, Mosaic GPU's runs in a host
  callback) and no GPU kernel call."""
  text = export_text(scan_fn(impl, True), shapes_of(*SHAPES[0], jnp.float32), "cpu")
  assert not custom_calls(text)
  assert INTERPRET_SCOPE in text
  if impl == "pallas_triton":
    assert "stablehlo.while" in text
  else:
    assert "callback" in text  # the GPU interpreter in a host callback


def test_auto_is_the_kernel_on_cuda_and_xla_elsewhere():
  assert kscan.auto_kernel() in FUSED  # this build has a kernel auto may pick
  args = shapes_of(*SHAPES[0], jnp.float32)
  cuda = export_text(scan_fn("auto", True), args, "cuda")
  calls = custom_calls(cuda)
  _TABLE.append(("auto", "float32", SHAPES[0], "value_and_grad", _describe(calls)))
  assert sum(calls.values()) == 2 and \
      set(t for t, _ in calls) == {KERNEL_TARGETS[kscan.auto_kernel()]}, calls
  assert INTERPRET_SCOPE not in cuda
  cpu = export_text(scan_fn("auto", True), args, "cpu")
  assert not custom_calls(cpu) and INTERPRET_SCOPE not in cpu
  xla = export_text(scan_fn("xla", True), args, "cpu")
  assert cpu.count("stablehlo.while") == xla.count("stablehlo.while") > 0


@pytest.fixture
def only_kernels(monkeypatch):
  """Pretend this JAX has only the given fused kernels (as after Triton's removal)."""
  def restrict(*names):
    monkeypatch.setattr(kscan, "_KERNELS", {k: v for k, v in kscan._KERNELS.items()
                                            if k in names})
    kscan.auto_kernel.cache_clear()
  yield restrict
  kscan.auto_kernel.cache_clear()


def test_auto_without_a_kernel_warns_once_and_is_xla(only_kernels, caplog):
  only_kernels()
  with caplog.at_level(logging.WARNING, logger="kernels.scan"):
    text = export_text(scan_fn("auto", True), shapes_of(*SHAPES[0], jnp.float32))
    export_text(scan_fn("auto", False), shapes_of(*SHAPES[0], jnp.float32))
  assert not custom_calls(text) and INTERPRET_SCOPE not in text
  warnings = [r for r in caplog.records if "no fused kernel is usable" in r.getMessage()]
  assert len(warnings) == 1, caplog.text


def test_pallas_is_an_alias_of_pallas_triton():
  assert kscan._resolve_impl("pallas") == "pallas_triton"
  assert kscan._resolve_impl("auto") == "auto"


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_selective_state_update_lowers_for_cuda(dtype):
  b, d, n = 2, 13, 5
  s = lambda *shape: jax.ShapeDtypeStruct(shape, DTYPES[dtype])
  args = (jax.ShapeDtypeStruct((b, d, n), jnp.float32), s(b, d), s(b, d), s(d, n), s(b, n),
          s(b, n), s(d), s(b, d), s(d))

  def step(state, u, delta, A, B, C, D, z, bias):
    return kernels.selective_state_update(state, u, delta, A, B, C, D=D, z=z,
                                          delta_bias=bias, delta_softplus=True)

  text = export_text(step, args)
  calls = custom_calls(text)
  _TABLE.append(("selective_state_update", dtype, (b, 1, d, n), "forward",
                 _describe(calls)))
  assert not calls and "stablehlo.while" not in text


# The study model's train step, built by the trainer on a 2-device CPU mesh (a subprocess:
# this process's device count is fixed at start) and exported for CUDA with abstract
# arguments (nothing is initialised: the study model is ~100M parameters).
_TRAIN_STEP_SCRIPT = r"""
import collections, json, re, sys, time
import jax, jax.numpy as jnp
from jax import export as jax_export
from jax.sharding import NamedSharding, PartitionSpec as P
from configs import default
from mambaswelu_jax import mesh as mesh_lib, steps
from mambaswelu_jax.training import state as train_state

def export_step(impl, accum=2, micro=1):
  config = default.get_config()
  config.model.scan_impl = impl
  return export_config(config, accum, micro)

def export_config(config, accum, micro):
  devices = jax.devices()[:2]
  mesh = mesh_lib.make_mesh(devices)
  seq = config.data.seq_len
  boxed = []

  def build():
    parts, state, handle = train_state.create_train_state(config, mesh)
    boxed.append(parts)
    return state, handle

  t0 = time.time()
  state, handle = jax.eval_shape(build)
  step = steps.make_train_step(mesh, boxed[0], accum)
  rows = len(devices) * accum * micro
  tokens = jax.ShapeDtypeStruct((rows, seq), jnp.int32,
                                sharding=NamedSharding(mesh, P(mesh_lib.DATA_AXIS)))
  replicated = lambda t: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())), t)
  lr = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  disabled = [jax_export.DisabledSafetyCheck.custom_call(t) for t in sys.argv[2:]]
  exp = jax_export.export(step.jitted, platforms=["cuda"], disabled_checks=disabled)(
      replicated(state), replicated(handle), {"inputs": tokens, "targets": tokens}, lr)
  text = exp.mlir_module()
  calls = collections.Counter()
  for line in text.splitlines():
    m = re.search(r"stablehlo\.custom_call @([\w$.\-]+)\(", line)
    if m:
      n = re.search(r'\bname = "([\w.<>\-]+)"', line[m.end():])
      n = n.group(1) if n else f"{line.rsplit('->', 1)[-1].count('tensor<')} outputs"
      calls[m.group(1) + ":" + n] += 1
  return {"impl": config.model.scan_impl, "calls": calls, "nr_devices": exp.nr_devices,
          "n_layers": config.model.n_layers, "seq_len": seq,
          "interpreted": text.count("PALLAS_INTERPRET"), "seconds": time.time() - t0}
print(json.dumps([export_step(impl) for impl in sys.argv[1].split(",")]))
""".replace("PALLAS_INTERPRET", INTERPRET_SCOPE)


def test_study_model_train_step_lowers_for_cuda_with_the_kernels():
  """configs/default.py's model (6 Mamba blocks; scan_impl "auto", and each other fused
  kernel by name): one forward and one backward kernel call per block."""
  impls = ["auto"] + [k for k in FUSED if k != kscan.auto_kernel()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  r = subprocess.run([sys.executable, "-c", _TRAIN_STEP_SCRIPT, ",".join(impls),
                      *KERNEL_TARGETS.values()],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  for out in json.loads(r.stdout.strip().splitlines()[-1]):
    kernel = kscan.auto_kernel() if out["impl"] == "auto" else out["impl"]
    target = KERNEL_TARGETS[kernel]
    calls = {k: v for k, v in out["calls"].items()
             if k.split(":")[0] in KERNEL_TARGETS.values()}
    _TABLE.append((f"train step ({out['impl']} = {kernel})", "bf16 matmuls, f32 scan",
                   f"2 dev x accum 2 x (1, {out['seq_len']})", "train_step",
                   ", ".join(f"{k} x{v}" for k, v in sorted(calls.items()))))
    assert out["nr_devices"] == 2
    layers = out["n_layers"]
    assert sum(calls.values()) == 2 * layers and all(k.startswith(target + ":")
                                                      for k in calls), calls
    fwd, bwd = (("_forward_kernel", "_backward_kernel") if kernel == "pallas_triton"
                else ("3 outputs", "8 outputs"))
    assert calls == {f"{target}:{fwd}": layers, f"{target}:{bwd}": layers}, calls
    assert out["interpreted"] == 0


# Python modules of each Pallas backend; blocking them imitates a JAX without it.
_BACKEND_MODULES = {
    "triton": ("jax.experimental.pallas.triton", "jax._src.pallas.triton"),
    "mosaic_gpu": ("jax.experimental.pallas.mosaic_gpu", "jax._src.pallas.mosaic_gpu"),
}
_BLOCK_BACKEND = r"""
import importlib.abc, json, os, sys
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.startswith(tuple(os.environ["BLOCKED_MODULES"].split(","))):
      raise ImportError(f"{name} is not in this build (blocked by the test)")
sys.meta_path.insert(0, _Block())
from kernels import scan as _k
print("OFFERED " + json.dumps([_k.available_implementations(), _k.auto_kernel()]))
"""


@pytest.mark.parametrize("removed, survivor", [("triton", "pallas_mosaic"),
                                               ("mosaic_gpu", "pallas_triton")])
def test_each_kernel_survives_the_removal_of_the_other_backend(removed, survivor):
  """A fresh process whose JAX lacks one Pallas backend (an import hook): the other
  kernel is offered, `auto` picks it, and the study model's train step lowers for CUDA
  with it (one forward and one backward kernel per block)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             BLOCKED_MODULES=",".join(_BACKEND_MODULES[removed]))
  r = subprocess.run([sys.executable, "-c", _BLOCK_BACKEND + _TRAIN_STEP_SCRIPT, "auto",
                      *KERNEL_TARGETS.values()],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  offered, auto = json.loads(r.stdout.split("OFFERED ", 1)[1].splitlines()[0])
  assert survivor in offered and len([k for k in offered if k in KERNEL_TARGETS]) == 1
  assert auto == survivor
  (out,) = json.loads(r.stdout.strip().splitlines()[-1])
  calls = {k: v for k, v in out["calls"].items()
           if k.split(":")[0] in KERNEL_TARGETS.values()}
  assert sum(calls.values()) == 2 * out["n_layers"], calls
  assert all(k.startswith(KERNEL_TARGETS[survivor] + ":") for k in calls), calls
