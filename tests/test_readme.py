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
  assert {"mambaswelu_jax.main", "mambaswelu_jax.cli.eval", "mambaswelu_jax.cli.generate"} <= modules
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


_FILE_SUFFIX = re.compile(r"\.(py|md|json|jsonl|model|log|txt|yaml|zst|gz|csv|tmp)$")


def _top_level_names(path: str) -> dict:
  """{name: the ast node} of a module's top-level definitions, assignments and imports."""
  import ast  # pylint: disable=import-outside-toplevel
  tree = ast.parse(open(path, encoding="utf-8").read())
  names = {}
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names[node.name] = node
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
        for t in ast.walk(target):
          if isinstance(t, ast.Name):
            names[t.id] = node
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      for alias in node.names:
        names[(alias.asname or alias.name).split(".")[0]] = node
    elif isinstance(node, (ast.Try, ast.If)):
      for sub in ast.walk(node):
        if isinstance(sub, (ast.Import, ast.ImportFrom)):
          for alias in sub.names:
            names[(alias.asname or alias.name).split(".")[0]] = sub
  return names


def _class_members(node) -> set:
  import ast  # pylint: disable=import-outside-toplevel
  out = set()
  for sub in node.body:
    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      out.add(sub.name)
    elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
      out.add(sub.target.id)
    elif isinstance(sub, ast.Assign):
      out |= {t.id for t in sub.targets if isinstance(t, ast.Name)}
  for fn in node.body:  # attributes set in methods: self.x = ...
    for sub in ast.walk(fn):
      if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
          and sub.value.id == "self"):
        out.add(sub.attr)
  return out


def missing_name(dotted: str) -> str | None:
  """Why a dotted name the pages cite (`restore.load_run`, `kernels.scan.AUTO_KERNELS`)
  does not exist in this checkout, or None when it exists or is not ours to check."""
  import ast  # pylint: disable=import-outside-toplevel
  parts = dotted.split(".")
  if parts[0] in ("mambaswelu_jax", "kernels", "configs", "experiments"):
    path, i = os.path.join(ROOT, parts[0]), 1
  elif (os.path.exists(os.path.join(ROOT, "mambaswelu_jax", parts[0] + ".py"))
        or os.path.isdir(os.path.join(ROOT, "mambaswelu_jax", parts[0]))):
    path, i = os.path.join(ROOT, "mambaswelu_jax", parts[0]), 1
  else:
    return None  # another library's name, or a variable in an example
  while i < len(parts) and (os.path.isdir(os.path.join(path, parts[i]))
                            or os.path.exists(os.path.join(path, parts[i] + ".py"))):
    path, i = os.path.join(path, parts[i]), i + 1
  module = path + ".py" if os.path.exists(path + ".py") else os.path.join(path, "__init__.py")
  if i == len(parts):
    return None if os.path.exists(module) else f"no module {module}"
  names = _top_level_names(module) if os.path.exists(module) else {}
  node = names.get(parts[i])
  if node is None:
    return f"{os.path.relpath(module, ROOT)} has no top-level {parts[i]!r}"
  if isinstance(node, ast.ClassDef) and i + 1 < len(parts) and parts[i + 1] not in _class_members(node):
    return f"class {parts[i]} in {os.path.relpath(module, ROOT)} has no {parts[i + 1]!r}"
  return None


def test_dotted_names_in_the_pages_exist():
  """Every `module.name` the pages cite exists (config keys such as `train.num_steps`
  are checked by test_config_keys_in_commands_exist's reference config)."""
  known = set(config_validation.flatten(config_validation.reference_config()))
  wrong = []
  for page in PAGES:
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    for dotted in sorted(set(re.findall(r"`((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)(?:\([^`]*\))?`", text))):
      if _FILE_SUFFIX.search(dotted) or dotted in known or any(
          k.startswith(dotted + ".") for k in known):
        continue
      why = missing_name(dotted)
      if why:
        wrong.append(f"{page}: `{dotted}`: {why}")
  assert not wrong, "\n".join(wrong)


def test_the_workdir_table_is_the_layout():
  """docs/training.md shows `workdir.LAYOUT`, the one table of a workdir's entries."""
  from mambaswelu_jax import workdir  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8") as f:
    assert workdir.layout_table() in f.read()
