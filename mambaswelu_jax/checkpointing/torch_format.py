r"""Checkpoints between the original PyTorch project and a workdir, both ways.

  python -m mambaswelu_jax.cli.torch_checkpoint import --checkpoint=model_step_N.pt \
      --config=configs/original_124m.py --workdir=DIR [--tokenizer=tok.model] \
      [--set model.swelu_learn_lambda=True] [--step=N]
  python -m mambaswelu_jax.cli.torch_checkpoint export --workdir=DIR --out=model.pt \
      [--safetensors=model.safetensors] [--step=latest|N]

import reads the original's `model_step_N.pt` / `final_model.pt` (a state dict alone, or
a dict holding one under "model_state_dict" / "state_dict" / "model" beside optimizer
state; a .safetensors file too), checks every key and shape against the config's model
and writes a new workdir: config.json (the resolved config), the params as the final
params of step N (from --step, the file's "step" entry, or the N of model_step_N.pt,
else 0) and, with --tokenizer, tokenizer.model. eval, generate and the lm-eval adapter
read it like any run; the trainer starts from it with --config.train.init_from=DIR.

export writes a workdir's params as a PyTorch state dict (torch.save) and/or a
safetensors file that the original's model class loads with load_state_dict.

Every key of the original's state dict has one place in the params (the mapping is
`torch_names`, documented in docs/torch-checkpoints.md): Linear weights are transposed,
the depthwise conv's (channels, 1, width) weight becomes (width, channels), the tied
lm_head.weight must equal embedding.weight. A file that is not such a checkpoint, a
missing or extra key, a shape that does not fit the config: one line on stderr, exit
status 2, nothing written. torch is imported only to read or write .pt files; this
module never imports the training loop.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import sys
import tempfile

import numpy as np

USAGE_EXIT_CODE = 2
STATE_DICT_ENTRIES = ("model_state_dict", "state_dict", "model")


class CheckpointError(ValueError):
  """A checkpoint, config or workdir that cannot be converted; one line."""


# ----------------------------------------------------------------------------
# The mapping.
# ----------------------------------------------------------------------------


def _swelu_names(prefix: str, torch_prefix: str, learn_lambda: bool) -> dict:
  out = {f"{prefix}/k_raw": (f"{torch_prefix}.k", "k")}
  if learn_lambda:
    out[f"{prefix}/lam"] = (f"{torch_prefix}.lam", "same")
  return out


def _norm_names(prefix: str, torch_prefix: str, norm: str) -> dict:
  out = {f"{prefix}/scale": (f"{torch_prefix}.weight", "same")}
  if norm == "layernorm":
    out[f"{prefix}/bias"] = (f"{torch_prefix}.bias", "same")
  return out


def torch_names(model_cfg) -> dict[str, tuple[str, str]]:
  """{our param path 'a/b/c': (original state-dict key, how it converts)}.

  How: "same" (same layout), "linear" (transposed: torch stores (out, in)), "conv"
  ((channels, 1, width) <-> (width, channels)), "k" (the SWELU exponent: as stored, or
  through softplus when model.swelu_k_param is "softplus"). lm_head.weight is not
  listed: it is the tied embedding."""
  m = model_cfg
  if m.architecture != "mamba":
    raise CheckpointError(f"model.architecture={m.architecture!r}: only the Mamba model "
                          f"has an original PyTorch counterpart")
  swelu = m.activation == "swelu"
  lam = swelu and bool(m.swelu_learn_lambda)
  names = {"embed/embedding": ("embedding.weight", "same")}
  if m.learned_positions:
    names["positions/embedding"] = ("pos_embedding.weight", "same")
  for i in range(m.n_layers):
    b, t = f"blocks/{i}", f"layers.{i}"
    names.update(_norm_names(f"{b}/norm", f"{t}.norm", m.norm))
    names[f"{b}/mixer/in_proj/kernel"] = (f"{t}.mamba.in_proj.weight", "linear")
    names[f"{b}/mixer/conv/kernel"] = (f"{t}.mamba.conv1d.weight", "conv")
    names[f"{b}/mixer/conv/bias"] = (f"{t}.mamba.conv1d.bias", "same")
    names[f"{b}/mixer/x_proj/kernel"] = (f"{t}.mamba.x_proj.weight", "linear")
    names[f"{b}/mixer/dt_proj/kernel"] = (f"{t}.mamba.dt_proj.weight", "linear")
    names[f"{b}/mixer/dt_proj/bias"] = (f"{t}.mamba.dt_proj.bias", "same")
    names[f"{b}/mixer/out_proj/kernel"] = (f"{t}.mamba.out_proj.weight", "linear")
    if m.mixer == "selective":
      names[f"{b}/mixer/A_log"] = (f"{t}.mamba.A_log", "same")
      names[f"{b}/mixer/D"] = (f"{t}.mamba.D", "same")
    if swelu:
      names.update(_swelu_names(f"{b}/mixer/conv_act", f"{t}.mamba.act", lam))
      names.update(_swelu_names(f"{b}/out_act", f"{t}.act", lam))
  names.update(_norm_names("final_norm", "norm_f", m.norm))
  for j in range(3):
    names[f"dense/layers/{j}/kernel"] = (f"dense{j + 1}.weight", "linear")
    names[f"dense/layers/{j}/bias"] = (f"dense{j + 1}.bias", "same")
    if swelu:
      names.update(_swelu_names(f"dense/acts/{j}", f"swelu{j + 1}", lam))
  return names


def _softplus64(x):
  x = np.asarray(x, np.float64)
  return np.logaddexp(x, 0.0)


def _inverse_softplus64(k):
  k = np.asarray(k, np.float64)
  return k + np.log(-np.expm1(-k))


def _abstract_flat(model_cfg) -> dict:
  """{path: ShapeDtypeStruct} of the config's params."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.registry import abstract_params  # pylint: disable=import-outside-toplevel
  flat = nnx.to_flat_state(abstract_params(model_cfg))
  return {"/".join(str(p) for p in path): v.get_value() if hasattr(v, "get_value") else v.value
          for path, v in flat}


def params_from_state_dict(model_cfg, state_dict: dict, where: str = "checkpoint") -> dict:
  """{our path: float array} from the original's state dict, every key and shape
  checked; CheckpointError names the first problem."""
  names = torch_names(model_cfg)
  abstract = _abstract_flat(model_cfg)
  if set(names) != set(abstract):  # the mapping covers the model exactly
    raise CheckpointError(f"internal: mapping and model differ at "
                          f"{sorted(set(names) ^ set(abstract))[:3]}")
  expected = {t for t, _ in names.values()} | {"lm_head.weight"}
  missing = [names[p][0] for p in names if names[p][0] not in state_dict]
  if "lm_head.weight" not in state_dict:
    missing.append("lm_head.weight")
  if missing:
    hint = (" (the as-run SWELU has no λ: drop --set model.swelu_learn_lambda=True)"
            if missing[0].endswith(".lam") else "")
    raise CheckpointError(f"{where}: key {missing[0]!r} is missing "
                          f"({len(missing)} missing in all){hint}")
  extra = sorted(k for k in state_dict if k not in expected)
  if extra:
    hint = (" (a SWELU with a learnable λ: add --set model.swelu_learn_lambda=True)"
            if extra[0].endswith(".lam") else "")
    raise CheckpointError(f"{where}: key {extra[0]!r} is not part of the config's model "
                          f"({len(extra)} extra in all){hint}")
  k_direct = model_cfg.get("swelu_k_param", "softplus") == "direct"
  out = {}
  for path, (key, how) in names.items():
    want = abstract[path]
    x = np.asarray(state_dict[key])
    if how == "linear":
      if x.ndim != 2:
        raise CheckpointError(f"{where}: {key!r} has shape {tuple(x.shape)}; expected "
                              f"{tuple(want.shape[::-1])} for the config's model")
      x = x.T
    elif how == "conv":
      if x.ndim != 3 or x.shape[1] != 1:
        raise CheckpointError(f"{where}: {key!r} has shape {tuple(x.shape)}; expected "
                              f"({want.shape[1]}, 1, {want.shape[0]}) for the config's model")
      x = x[:, 0, :].T
    elif how == "k":
      if x.size != 1:
        raise CheckpointError(f"{where}: {key!r} has shape {tuple(x.shape)}; expected a "
                              f"scalar SWELU k")
      x = x.reshape(())
      if not k_direct:
        if not float(x) > 0:
          raise CheckpointError(f"{where}: {key!r} = {float(x)} is not > 0, which "
                                f"model.swelu_k_param='softplus' requires (use 'direct')")
        x = _inverse_softplus64(x)
    if how in ("same", "k") and want.shape == () and x.size == 1:
      x = x.reshape(())
    if tuple(x.shape) != tuple(want.shape):
      shown = (tuple(want.shape[::-1]) if how == "linear" else
               (want.shape[1], 1, want.shape[0]) if how == "conv" else tuple(want.shape))
      raise CheckpointError(f"{where}: {key!r} has shape {tuple(np.shape(state_dict[key]))}; "
                            f"the config's model needs {shown}")
    if not np.issubdtype(x.dtype, np.floating):
      raise CheckpointError(f"{where}: {key!r} has dtype {x.dtype}, not a float")
    out[path] = np.array(x, dtype=want.dtype, order="C")  # 0-d stays 0-d
  emb, head = np.asarray(state_dict["embedding.weight"]), np.asarray(state_dict["lm_head.weight"])
  if emb.shape != head.shape or not np.array_equal(emb, head):
    raise CheckpointError(f"{where}: 'lm_head.weight' differs from 'embedding.weight'; the "
                          f"original ties them (one table)")
  return out


def state_dict_from_params(model_cfg, flat_params: dict) -> dict[str, np.ndarray]:
  """The original's state dict (numpy float arrays) from {our path: array}."""
  names = torch_names(model_cfg)
  k_direct = model_cfg.get("swelu_k_param", "softplus") == "direct"
  out = {}
  for path, (key, how) in names.items():
    x = np.asarray(flat_params[path])
    if how == "linear":
      x = x.T
    elif how == "conv":
      x = x.T[:, None, :]
    elif how == "k" and not k_direct:
      x = _softplus64(x).astype(np.asarray(flat_params[path]).dtype)
    out[key] = np.array(x, order="C")
  out["lm_head.weight"] = out["embedding.weight"].copy()
  return out


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


def read_state_dict(path: str) -> tuple[dict, int | None]:
  """(state dict as numpy arrays, the step it records or None) of a .pt or
  .safetensors file."""
  if not os.path.isfile(path):
    raise CheckpointError(f"--checkpoint={path}: no such file")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      return dict(load_file(path)), None
    except ImportError as e:
      raise CheckpointError(f"reading {path} needs the safetensors package "
                            f"(pip install safetensors)") from e
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{path} is not a safetensors file: {type(e).__name__}: "
                            f"{str(e)[:200]}") from e
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError(f"reading {path} needs torch (a CPU build is enough)") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    raise CheckpointError(f"{path} is not a PyTorch checkpoint: {type(e).__name__}: "
                          f"{first}") from e
  step = None
  if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
    for name in STATE_DICT_ENTRIES:
      if isinstance(obj.get(name), dict):
        step = obj.get("step")
        obj = obj[name]
        break
  if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
    raise CheckpointError(f"{path} holds no state dict (tensors by name, alone or under "
                          f"one of {list(STATE_DICT_ENTRIES)})")
  out = {}
  for key, value in obj.items():
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
      value = value.float()
    out[key] = value.numpy()
  return out, int(step) if isinstance(step, int) else None


def step_from_name(path: str) -> int | None:
  match = re.search(r"step_(\d+)", os.path.basename(path))
  return int(match.group(1)) if match else None


def load_config_file(spec: str, overrides: list[str]):
  """configs/X.py[:arg] with KEY=VALUE overrides (values as Python literals)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise CheckpointError(f"--config={spec}: no such file")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)  # configs/X.py imports `configs.default`
  module_spec = importlib.util.spec_from_file_location("_torch_checkpoint_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"--config={spec} does not load: {type(e).__name__}: {e}") from e
  for item in overrides:
    key, eq, text = item.partition("=")
    if not eq:
      raise CheckpointError(f"--set {item}: expected KEY=VALUE")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    block, _, field = key.rpartition(".")
    try:
      target = config
      for part in block.split(".") if block else []:
        target = target[part]
      if field not in target:
        raise KeyError(key)
      target[field] = value
    except (KeyError, TypeError, AttributeError) as e:
      raise CheckpointError(f"--set {item}: no config key {key!r}") from e
  return config


# ----------------------------------------------------------------------------
# import / export.
# ----------------------------------------------------------------------------


def import_checkpoint(checkpoint: str, config, workdir: str, tokenizer: str = "",
                      step: int | None = None) -> int:
  """Writes a new workdir holding `checkpoint`'s weights as the final params; returns
  the step recorded. Nothing is written when anything does not fit."""
  from mambaswelu_jax import config_validation  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax import workdir as layout  # pylint: disable=import-outside-toplevel
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise CheckpointError(f"--workdir={workdir} exists and is not empty: import into a "
                          f"new directory")
  try:
    config = config_validation.resolve(config)
  except config_validation.ConfigError as e:
    raise CheckpointError(str(e)) from e
  state_dict, file_step = read_state_dict(checkpoint)
  flat = params_from_state_dict(config.model, state_dict, where=checkpoint)
  if tokenizer:
    _check_tokenizer(tokenizer, int(config.model.vocab_size))
  step = step if step is not None else (file_step if file_step is not None
                                        else step_from_name(checkpoint) or 0)
  params = _params_tree(config.model, flat)

  import ml_collections  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.checkpointing import orbax_store
  from mambaswelu_jax.checkpointing import run_config
  parent = os.path.dirname(os.path.abspath(workdir)) or "."
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".import-", dir=parent)
  try:
    run_config.record_config(staging, config, step)
    if tokenizer:
      shutil.copyfile(tokenizer, os.path.join(staging, layout.TOKENIZER))
    ckpts = orbax_store.Checkpoints(staging, ml_collections.ConfigDict(
        {"async_save": False, "max_to_keep": 1}))
    ckpts.save_final(step, params)
    ckpts.close()
    # Only the final params: the empty managers' directories go.
    for kind in (layout.CHECKPOINTS, layout.SNAPSHOTS):
      path = os.path.join(staging, kind)
      if os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
    if os.path.isdir(workdir):
      os.rmdir(workdir)
    os.rename(staging, workdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return step


def _check_tokenizer(path: str, vocab: int) -> None:
  if not os.path.isfile(path):
    raise CheckpointError(f"--tokenizer={path}: no such file")
  from mambaswelu_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  try:
    tok = tokenizer_lib.load_tokenizer(path)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"--tokenizer={path} does not load as a SentencePiece model: "
                          f"{type(e).__name__}") from e
  if tok.vocab_size != vocab:
    raise CheckpointError(f"--tokenizer={path} has {tok.vocab_size} tokens; the model's "
                          f"vocab_size is {vocab}")


def _params_tree(model_cfg, flat: dict):
  """The nnx params state of `model_cfg` holding the arrays of `flat`."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.registry import abstract_params  # pylint: disable=import-outside-toplevel
  state = abstract_params(model_cfg)
  items = []
  for path, var in nnx.to_flat_state(state):
    key = "/".join(str(p) for p in path)
    items.append((path, var.replace(jnp.asarray(flat[key]))))
  return nnx.from_flat_state(items)


def workdir_state_dict(workdir: str, step: str = "latest") -> tuple[dict, int, object]:
  """(the original's state dict, step, config) of a workdir's params."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.checkpointing import orbax_store
  from mambaswelu_jax.checkpointing import run_config
  from mambaswelu_jax.checkpointing import restore  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.registry import abstract_params  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise CheckpointError(f"--workdir={workdir} is not a run's workdir (no config.json)")
  config = run_config.load_config(workdir)
  names = torch_names(config.model)  # refuses the Transformer before restoring
  del names
  try:
    (step_n,) = restore.resolve_steps(workdir, step)
    got, params = orbax_store.restore_params(workdir, abstract_params(config.model), step_n)
  except (restore.RunError, FileNotFoundError, ValueError) as e:
    raise CheckpointError(f"--workdir={workdir}: {str(e).splitlines()[0]}") from e
  flat = {"/".join(str(p) for p in path): np.asarray(jax.device_get(v.get_value()))
          for path, v in nnx.to_flat_state(params)}
  return state_dict_from_params(config.model, flat), got, config


def _atomic(path: str, write) -> str:
  """write(tmp) then rename to `path`; returns the staging name (removed on error)."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix="partial-export-", suffix="-" + os.path.basename(path),
                             dir=directory)
  os.close(fd)
  try:
    write(tmp)
  except BaseException:
    os.remove(tmp)
    raise
  return tmp


def export_checkpoint(workdir: str, out: str = "", safetensors_path: str = "",
                      step: str = "latest") -> int:
  """Writes the workdir's params to `out` (torch.save of the state dict) and/or
  `safetensors_path`; returns the step exported."""
  if not out and not safetensors_path:
    raise CheckpointError("export: give --out=FILE.pt and/or --safetensors=FILE.safetensors")
  for path in (out, safetensors_path):
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
      raise CheckpointError(f"{path}: its directory does not exist")
  if out:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise CheckpointError("--out needs torch (a CPU build is enough); "
                            "--safetensors does not") from e
  if safetensors_path:
    try:
      from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise CheckpointError("--safetensors needs the safetensors package "
                            "(pip install safetensors)") from e
  state_dict, got, _ = workdir_state_dict(workdir, step)
  staged = []
  try:
    if out:
      import collections  # pylint: disable=import-outside-toplevel
      tensors = collections.OrderedDict((k, torch.from_numpy(v.copy()))
                                        for k, v in state_dict.items())
      staged.append((_atomic(out, lambda p: torch.save(tensors, p)), out))
    if safetensors_path:
      staged.append((_atomic(safetensors_path,
                             lambda p: save_file(state_dict, p, metadata={"step": str(got)})),
                     safetensors_path))
  except BaseException:
    for tmp, _ in staged:
      os.remove(tmp)
    raise
  for tmp, final in staged:
    os.replace(tmp, final)
  return got
