"""The package installs as a wheel (`pip install .`, not editable) and works without the
checkout: the wheel holds mambaswelu_jax and kernels only, config validation needs no
configs/ directory, and the summary command reads a checkout's config file."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
  assert proc.returncode == 0, (f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
  # Build from a copy, so the checkout gets no build/ or egg-info from the test.
  src = tmp_path / "src"
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      ".git", ".venv", "build", "runs", "*.egg-info", "__pycache__", ".pytest_cache"))
  dist = tmp_path / "dist"
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-w", str(dist), str(src)])
  (wheel,) = dist.glob("mambaswelu_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert tops == {"mambaswelu_jax", "kernels"}, tops
  for name in ("mambaswelu_jax/config_defaults.py", "mambaswelu_jax/models/registry.py",
               "mambaswelu_jax/cli/summary.py", "kernels/__init__.py"):
    assert name in names, name

  # A fresh environment with the wheel; its dependencies come from the test's own
  # environment (listed after the new one's site-packages, so the wheel is found first).
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
  python = str(venv / "bin" / "python")
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
              ).stdout.strip()
  with open(os.path.join(site, "dev_dependencies.pth"), "w", encoding="utf-8") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
        "--no-index", "--ignore-installed", str(wheel)])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH="")

  # Outside the checkout: no configs/ to import, yet a config validates and resolves.
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  check = (
      "import importlib.util, mambaswelu_jax\n"
      "from mambaswelu_jax import config_defaults, config_validation\n"
      "assert importlib.util.find_spec('configs') is None\n"
      "r = config_validation.resolve(config_defaults.get_config())\n"
      "print(mambaswelu_jax.__file__)\n"
      "print('num_steps', r.train.num_steps)\n")
  out = _run([python, "-c", check], cwd=outside, env=env).stdout
  assert out.splitlines()[0].startswith(site), out
  assert int(out.split("num_steps")[-1]) > 0

  # From the checkout root, as the README runs it: the config file imports `configs`.
  out = _run([python, "-m", "mambaswelu_jax.cli.summary",
              f"--config={os.path.join(ROOT, 'configs', 'demo.py')}"], cwd=ROOT, env=env).stdout
  assert out.strip().splitlines()[-1].startswith("total_parameters: "), out
  # The console script is the same command.
  out = _run([str(venv / "bin" / "mambaswelu-summary"),
              f"--config={os.path.join(ROOT, 'configs', 'demo.py')}"], cwd=ROOT, env=env).stdout
  assert out.strip().splitlines()[-1].startswith("total_parameters: "), out


def test_console_scripts_name_the_commands():
  """Every console script of setup.py is a command module's `run`, the function its
  `python -m` form calls."""
  import ast  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    scripts = re.findall(r'"(mambaswelu-[\w-]+) = ([\w.]+):(\w+)"', f.read())
  assert len(scripts) == 11, scripts
  for name, module, func in scripts:  # read, not imported: the commands define flags
    assert func == "run", name
    with open(os.path.join(ROOT, *module.split(".")) + ".py", encoding="utf-8") as f:
      text = f.read()
    functions = {n.name for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)}
    assert "run" in functions, module
    assert text.rstrip().endswith('if __name__ == "__main__":\n  run()'), module
