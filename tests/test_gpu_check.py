"""The GPU check script runs end to end (tiny shapes on any machine), and on a GPU the
compiled Pallas kernels agree with the xla implementation."""

import json
import os
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_smoke_writes_a_report(tmp_path):
  proc = subprocess.run([sys.executable, "experiments/gpu_check.py", "--smoke",
                         f"--out_dir={tmp_path}", "--train_micro_batches=8",
                         "--sweep_variants=16:4"], cwd=ROOT, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((tmp_path / "gpu_check.json").read_text())
  assert report["correctness"] and all(r["ok"] for r in report["correctness"])
  assert {r["dtype"] for r in report["correctness"]} == {"float32", "bfloat16"}
  assert {r["impl"] for r in report["train"]} == {"pallas_triton", "xla"}  # no Mosaic off a GPU
  assert all("tokens_per_s_per_device" in r for r in report["train"]), report["train"]
  assert report["timing"]["xla/float32"]["forward_x_floor"] > 0
  assert "speed-up over xla" in proc.stdout


def test_floor_bytes_count_what_the_scan_must_move():
  import gpu_check  # experiments/ is on the test path (pytest.ini)
  b, l, d, n = 2, 3, 5, 7
  f = gpu_check.floor_bytes((b, l, d, n), 2)
  # forward: u, delta, z, B, C in, y out (2 bytes each), last state out (float32)
  assert f["forward"] == 2 * (4 * b * l * d + 2 * b * l * n) + 4 * b * d * n
  # backward: the forward's reads and dy, dh_last in; du, ddelta, dz, dB, dC out
  assert f["forward_backward"] - f["forward"] == (
      2 * (4 * b * l * d + 2 * b * l * n) + 4 * b * d * n + 2 * (3 * b * l * d + 2 * b * l * n))


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("impl", ["pallas_triton", "pallas_mosaic"])
def test_compiled_pallas_kernels_match_xla_on_gpu(impl):
  import gpu_check  # experiments/ is on the test path (pytest.ini)
  if impl not in gpu_check.kernel_impls():
    pytest.skip(f"{impl} is not offered on this GPU")
  rows = gpu_check.check_correctness([(2, 333, 320, 16), (1, 1024, 2048, 16)],
                                     ["float32", "bfloat16"])
  bad = [r for r in rows if r["impl"] == impl and not r["ok"]]
  assert not bad, bad
