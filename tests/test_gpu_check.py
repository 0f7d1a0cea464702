"""The GPU check script runs end to end (tiny shapes on any machine), and on a GPU the
compiled Pallas kernels agree with the xla implementation."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_smoke_writes_a_report(tmp_path):
  out = tmp_path / "check.json"
  proc = subprocess.run([sys.executable, "experiments/gpu_check.py", "--smoke",
                         f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert all(r["ok"] for r in report["correctness"])
  assert {r["impl"] for r in report["train"]} == {"pallas", "xla"}
  assert "pallas speed-up over xla" in proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_compiled_pallas_kernels_match_xla_on_gpu():
  import gpu_check  # experiments/ is on the test path (pytest.ini)
  for shape in [(2, 333, 320, 16), (1, 1024, 2048, 16)]:
    x = gpu_check.scan_inputs(shape)
    (y_p, h_p), (y_x, h_x) = (jax.jit(gpu_check.scan_fn(i))(x) for i in ("pallas", "xla"))
    assert gpu_check.rel_err(y_p, y_x) < 1e-4 and gpu_check.rel_err(h_p, h_x) < 1e-4
    (_, g_p), (_, g_x) = (gpu_check.loss_and_grads(i)(x) for i in ("pallas", "xla"))
    for k in g_x:
      assert gpu_check.rel_err(g_p[k], g_x[k]) < 1e-4, k
  assert np.isfinite(np.asarray(y_p)).all()
