"""The README's and the reference pages' code runs as written: their Python blocks run
on a trained run (the demo's workdir replaced by the test's), and their commands name
modules, scripts, config keys, demo steps and files that exist."""

import os
import re

import pytest

from mambaswelu_jax import config_validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
                         if n.endswith(".md") and n != "study-plan.md"]
README = "\n".join(open(os.path.join(ROOT, p), encoding="utf-8").read() for p in PAGES)


def blocks(language: str) -> list[str]:
  return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
  """Every shell command of the README's bash blocks, continuation lines joined."""
  out = []
  for block in blocks("bash"):
    for command in block.replace("\\\n", " ").splitlines():
      command = command.split(" #")[0].strip()
      if command and not command.startswith("#"):
        out.append(command)
  return out


def test_python_blocks_run_on_a_trained_run(trained_workdir, capsys):
  assert blocks("python"), "the README has Python examples"
  for block in blocks("python"):
    exec(compile(block.replace("runs/demo", trained_workdir), "README.md", "exec"), {})  # pylint: disable=exec-used
  assert capsys.readouterr().out


def test_commands_name_what_exists():
  modules = set(re.findall(r"python -m (mambaswelu_jax[\w.]*)", " ".join(commands())))
  assert {"mambaswelu_jax.main", "mambaswelu_jax.eval", "mambaswelu_jax.generate"} <= modules
  for module in modules:
    path = os.path.join(ROOT, *module.split("."))
    assert os.path.exists(path + ".py") or os.path.exists(os.path.join(path, "__main__.py")), module
  for script in set(re.findall(r"python (experiments/[\w/]+\.py)", " ".join(commands()))):
    assert os.path.exists(os.path.join(ROOT, script)), script
  for config in set(re.findall(r"--config=(configs/[a-z_0-9]+\.py)", README)):  # not X.py
    assert os.path.exists(os.path.join(ROOT, config)), config


def test_config_keys_in_commands_exist():
  known = set(config_validation.flatten(config_validation.reference_config()))
  keys = set(re.findall(r"--config\.([\w.]+)=", README)) - {"a.b"}  # a.b: the placeholder
  assert keys, "the README shows config overrides"
  assert not keys - known, f"README overrides unknown config keys: {sorted(keys - known)}"


def test_demo_commands_ask_for_steps_the_demo_saves():
  from configs import demo
  config = demo.get_config()
  saved = {s for s in range(1, config.train.num_steps + 1)
           if s % config.checkpoint.every_steps == 0 or s % config.checkpoint.snapshot_every_steps == 0}
  for command in commands():
    if "--workdir=runs/demo" in command:
      for step in re.findall(r"--step=(\d+)", command):
        assert int(step) in saved, f"{command}: the demo saves steps {sorted(saved)}"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_exist(page):
  text = open(os.path.join(ROOT, page), encoding="utf-8").read()
  for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
    assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), link)), f"{page}: {link}"
