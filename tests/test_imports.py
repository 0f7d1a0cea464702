"""Imports run one way: no circle anywhere in the package, and no tool that reads a
workdir reaches the trainer.

The graph is read from the source with `ast` (nothing is imported or executed): every
module of mambaswelu_jax/, kernels/ and experiments/study_lib/ (named `study_lib.*`, as
the study scripts import it), with an edge for every import of another of them, those
inside functions included. `from mambaswelu_jax import x` is an edge to the submodule
`mambaswelu_jax.x` when x is a module, else to the package.

  python -m pytest -q -s tests/test_imports.py     # prints the graph (module -> imports)
  python tests/test_imports.py [CHECKOUT]          # the graph and circles of any checkout
"""

from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (folder under the checkout, the dotted name its modules are imported as)
PACKAGES = (("mambaswelu_jax", "mambaswelu_jax"), ("kernels", "kernels"),
            (os.path.join("experiments", "study_lib"), "study_lib"))
# Other spellings of a package's name (older scripts imported experiments.study_lib).
ALIASES = {"experiments.study_lib": "study_lib"}
TRAINER = "mambaswelu_jax.training.train"
# The tools that read a workdir; none of them, nor anything they import, is the trainer.
WORKDIR_READERS = ("mambaswelu_jax.cli.eval", "mambaswelu_jax.cli.generate",
                   "mambaswelu_jax.cli.gen_quality", "mambaswelu_jax.lm_eval_adapter",
                   "mambaswelu_jax.checkpointing.restore", "mambaswelu_jax.evaluation",
                   "mambaswelu_jax.scoring", "mambaswelu_jax.sampling")


def find_modules(root: str = ROOT) -> dict[str, str]:
  """{dotted module name: file} of every module under PACKAGES."""
  out = {}
  for folder, dotted in PACKAGES:
    base = os.path.join(root, folder)
    for dirpath, dirnames, filenames in os.walk(base):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
      rel = os.path.relpath(dirpath, base)
      parts = [dotted] + ([] if rel == "." else rel.split(os.sep))
      for name in sorted(filenames):
        if name.endswith(".py"):
          stem = name[:-3]
          out[".".join(parts if stem == "__init__" else parts + [stem])] = os.path.join(
              dirpath, name)
  return out


def _canonical(name: str) -> str:
  for alias, real in ALIASES.items():
    if name == alias or name.startswith(alias + "."):
      return real + name[len(alias):]
  return name


def _known(name: str, modules) -> str | None:
  """The longest prefix of `name` that is one of `modules`."""
  parts = _canonical(name).split(".")
  for n in range(len(parts), 0, -1):
    if ".".join(parts[:n]) in modules:
      return ".".join(parts[:n])
  return None


def imports_of(module: str, path: str, modules) -> set[str]:
  """The modules of `modules` that `module` imports, anywhere in its file."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  is_package = os.path.basename(path) == "__init__.py"
  out = set()
  for node in ast.walk(tree):
    targets = []
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = module.split(".")[:len(module.split(".")) - (node.level - is_package)]
        base = ".".join(package + ([base] if base else []))
      for alias in node.names:
        sub = _canonical(f"{base}.{alias.name}")
        targets.append(sub if sub in modules else base)
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
        node.func, "id", None)) in ("import_module", "import_from_checkout")
          and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)):
      targets = [node.args[0].value]
    for target in targets:
      found = _known(target, modules)
      if found and found != module:
        out.add(found)
  return out


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  modules = find_modules(root)
  return {m: imports_of(m, path, modules) for m, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One circle (a -> b -> ... -> a) per strongly connected component of the graph."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(v):  # Tarjan's algorithm (the graph is small: recursion is fine)
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        components.append(set(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  out = []
  for component in components:
    start = min(component)
    out.append(path_between(graph, start, start, within=component))
  return out


def path_between(graph, source: str, target: str, within=None) -> list[str] | None:
  """The shortest import chain source -> ... -> target (breadth first), or None."""
  previous, frontier = {}, [source]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph.get(v, ())):
        if within is not None and w not in within:
          continue
        if w == target:
          chain = [w, v]
          while chain[-1] != source:
            chain.append(previous[chain[-1]])
          return chain[::-1]
        if w not in previous:
          previous[w] = v
          nxt.append(w)
    frontier = nxt
  return None


def reachable(graph, sources) -> set[str]:
  seen, todo = set(), list(sources)
  while todo:
    v = todo.pop()
    if v not in seen:
      seen.add(v)
      todo += graph.get(v, ())
  return seen


def workdir_readers(graph) -> list[str]:
  return [m for m in graph if m in WORKDIR_READERS or m.startswith("study_lib.")
          or m == "study_lib"]


def format_graph(graph) -> str:
  return "\n".join(f"{m} -> {', '.join(sorted(graph[m])) or '-'}" for m in sorted(graph))


def report(root: str = ROOT) -> str:
  graph = import_graph(root)
  lines = [format_graph(graph), ""]
  found = cycles(graph)
  lines.append(f"circles: {len(found)}")
  lines += ["  " + " -> ".join(c) for c in found]
  readers = workdir_readers(graph)
  chains = [path_between(graph, r, TRAINER) for r in readers]
  chains = [c for c in chains if c]
  lines.append(f"workdir readers that reach {TRAINER}: {len(chains)} of {len(readers)}")
  lines += ["  " + " -> ".join(c) for c in chains]
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------


def test_graph_is_read():
  graph = import_graph()
  print("\n" + format_graph(graph))
  assert TRAINER in graph and "mambaswelu_jax.cli.eval" in graph
  assert "study_lib.collect" in graph and "kernels" in graph
  # `from mambaswelu_jax import x` names the submodule x, and imports inside functions
  # count (the evaluator imports the lm-eval adapter only for benchmarks).
  assert "mambaswelu_jax.checkpointing.restore" in graph["mambaswelu_jax.cli.eval"]
  assert "mambaswelu_jax.lm_eval_adapter" in graph["mambaswelu_jax.evaluation"]


def test_no_import_circles():
  found = cycles(import_graph())
  assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_workdir_tools_never_import_the_trainer():
  graph = import_graph()
  readers = workdir_readers(graph)
  assert {"mambaswelu_jax.cli.eval", "mambaswelu_jax.cli.generate", "mambaswelu_jax.cli.gen_quality",
          "mambaswelu_jax.lm_eval_adapter"} <= set(readers)
  chains = [c for c in (path_between(graph, r, TRAINER) for r in readers) if c]
  assert not chains, "tools that read a workdir reach the trainer:\n" + "\n".join(
      " -> ".join(c) for c in chains)
  assert TRAINER not in reachable(graph, readers)


if __name__ == "__main__":
  print(report(os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
