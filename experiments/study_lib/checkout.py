"""The checkout the study scripts belong to, and its packages that are not installed.

`python experiments/x.py` puts experiments/ on the module path (so the scripts import
`study_lib` and each other), and `mambaswelu_jax` comes from the installed package.
The run configs (configs/) and the test helpers (tests/) belong to the checkout, not
to the package: `import_from_checkout("configs.toy_study")` imports one from this
checkout's directory. The top-level package (and configs, which the others import) is
loaded from its location once and registered under its own name, so the
`from configs import default` inside a config file resolves; the checkout root is not
put on the module path (that would make experiments/ and every other directory there
importable too). Standard library only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_package(name: str) -> None:
  if name in sys.modules:
    return
  location = os.path.join(ROOT, name)
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(location, "__init__.py"), submodule_search_locations=[location])
  if spec is None or spec.loader is None:
    raise ImportError(f"no package {name!r} in the checkout {ROOT}")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise


def import_from_checkout(name: str) -> ModuleType:
  """The module `name` (e.g. "configs.toy_study", "tests.test_fault_tolerance") of this
  checkout; where the checkout root is on the module path already (pytest), the usual
  import."""
  for package in dict.fromkeys(("configs", name.split(".")[0])):
    found = importlib.util.find_spec(package)
    if found is None or not (found.origin or "").startswith(ROOT + os.sep):
      _load_package(package)
  return importlib.import_module(name)
