"""A run restored from its workdir: config, tokenizer and parameters, nothing else.

Reads only the workdir (the layout is `mambaswelu_jax.workdir`): the recorded config,
the tokenizer and the Orbax parameters of one step (`final/`, `snapshots/` or the
params part of a full `checkpoints/` state; no optimizer state is read). They are
restored replicated onto the devices of *this* process, so a workdir copied to another
machine or read on another device count works the same. The evaluator, the sampler
command and the lm-eval adapter build on `load_run`; none of them needs the trainer.

`cached` keeps compiled functions per (model config, devices), so several steps of a
run, or several runs of one model config, compile once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from kernels import scan as kscan
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.checkpointing import orbax_store
from mambaswelu_jax.checkpointing import run_config
from mambaswelu_jax.mesh import make_mesh, replicated
from mambaswelu_jax.models.handle import ModelHandle, fresh_handle
from mambaswelu_jax.models.registry import abstract_params as abstract_params_of
from mambaswelu_jax.models.registry import max_positions


class RunError(Exception):
  """A workdir, step or checkpoint that cannot be restored; the message says what is missing."""


@dataclasses.dataclass
class Run:
  """A restored run. `model` is an nnx module with the restored parameters."""
  workdir: str
  config: Any
  step: int
  kind: str            # one of workdir.PARAMS_KINDS
  tokenizer: Any
  handle: ModelHandle  # the graph and the variables that are not trained
  params: Any
  mesh: Any

  @functools.cached_property
  def model(self) -> nnx.Module:
    return self.handle.bind(self.params)

  @functools.cached_property
  def _forward(self):
    return jax.jit(lambda params, handle, tokens: handle.bind(params)(tokens))

  def logits(self, tokens) -> jax.Array:
    """The model's plain forward pass, compiled: int (b, L) -> float32 logits (b, L, V)."""
    return self._forward(self.params, self.handle, jnp.asarray(tokens, jnp.int32))

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))

  @property
  def num_devices(self) -> int:
    return len(self.mesh.devices.reshape(-1))

  @property
  def tokens_per_step(self) -> int:
    return int(self.config.train.global_batch_size) * int(self.config.data.seq_len)

  @property
  def max_length(self) -> int | None:
    """The most tokens the model reads at once, or None when it has no limit.

    The Transformer has model.max_len positions (its position table or rotary range and
    its KV cache), and so does a Mamba model with learned positions. The selective SSM
    without them has no limit: its recurrent state carries any length, so it is scored
    on whole sequences, however long, and never at the training length."""
    return max_positions(self.config.model)


# ----------------------------------------------------------------------------
# Which steps a workdir holds.
# ----------------------------------------------------------------------------


def available_steps(workdir: str) -> dict[int, list[str]]:
  """{step: [kinds holding params of that step]} over workdir.PARAMS_KINDS."""
  out: dict[int, list[str]] = {}
  for kind in layout.PARAMS_KINDS:
    for s in layout.steps(workdir, kind):
      out.setdefault(s, []).append(kind)
  return dict(sorted(out.items()))


def resolve_steps(workdir: str, step: str | int) -> list[int]:
  """`latest`, `final`, `all`, or a number -> the steps to read (checked to exist)."""
  steps = available_steps(workdir)
  if not steps:
    raise RunError(
        f"{workdir} holds no checkpoints: looked for params under "
        f"{', '.join(os.path.join(workdir, k) for k in layout.PARAMS_KINDS)}. Train the run "
        f"first (python -m mambaswelu_jax.main --workdir={workdir} ...).")
  step = str(step).strip().lower()
  if step in ("latest", ""):
    return [max(steps)]
  if step == "all":
    return list(steps)
  if step == layout.FINAL:
    final = layout.steps(workdir, layout.FINAL)
    if not final:
      raise RunError(f"{os.path.join(workdir, layout.FINAL)} holds no params (the run has "
                     f"not finished); saved steps: {_fmt_steps(steps)}")
    return [final[-1]]
  try:
    n = int(step)
  except ValueError:
    raise RunError(f"--step={step!r}: expected latest, final, all or a step number") from None
  if n not in steps:
    raise RunError(f"step {n} is not saved in {workdir}; saved steps: {_fmt_steps(steps)}")
  return [n]


def _fmt_steps(steps) -> str:
  steps = list(steps)
  return ", ".join(map(str, steps)) if len(steps) <= 20 else (
      f"{', '.join(map(str, steps[:10]))}, ..., {', '.join(map(str, steps[-5:]))} "
      f"({len(steps)} in all)")


# ----------------------------------------------------------------------------
# Config, tokenizer and params.
# ----------------------------------------------------------------------------


def load_config_and_tokenizer(workdir: str):
  """(config, tokenizer) of a workdir, or a RunError naming the missing file."""
  if not os.path.isdir(workdir):
    raise RunError(f"workdir {workdir} does not exist")
  cfg_path = os.path.join(workdir, layout.CONFIG)
  if not os.path.exists(cfg_path):
    raise RunError(f"{workdir} has no {layout.CONFIG}: not a run's workdir "
                   f"(a run records its resolved config there when it starts)")
  try:
    config = run_config.load_config(workdir)
  except (OSError, ValueError) as e:
    raise RunError(f"{cfg_path} does not read as JSON: {e}") from e
  tok_path = os.path.join(workdir, layout.TOKENIZER)
  if not os.path.exists(tok_path):
    raise RunError(f"{workdir} has no {layout.TOKENIZER}: the run's tokenizer is needed to "
                   f"evaluate or sample (copy the study tokenizer there, the one the run "
                   f"was trained with: data.tokenizer_path in {cfg_path})")
  from mambaswelu_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  try:
    tokenizer = tokenizer_lib.load_tokenizer(tok_path)
  except Exception as e:  # pylint: disable=broad-except
    raise RunError(f"{tok_path} does not load as a tokenizer: {type(e).__name__}: {e}") from e
  vocab = int(config.model.vocab_size)
  if tokenizer.vocab_size != vocab:
    raise RunError(f"{tok_path} has {tokenizer.vocab_size} tokens but the run's model has "
                   f"vocab_size {vocab}: it is not the run's tokenizer")
  return config, tokenizer


def load_run(workdir: str, step: str | int = "latest", devices: Sequence | None = None,
             config=None, tokenizer=None) -> Run:
  """Restores a run's params (replicated over `devices`, default all local devices)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if config is None or tokenizer is None:
    config, tokenizer = load_config_and_tokenizer(workdir)
  if str(step).strip().lower() == "all":
    raise RunError("load_run restores one step; use resolve_steps for --step=all")
  (step_n,) = resolve_steps(workdir, step)
  kinds = available_steps(workdir)[step_n]
  fused = {*kscan.FUSED_KERNELS, *kscan.ALIASES}
  if config.model.scan_impl in fused and jax.default_backend() != "gpu":
    # A run trained with a GPU kernel, read elsewhere: the same function via XLA.
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.scan_impl = "auto"

  mesh = make_mesh(list(devices) if devices is not None else jax.local_devices())
  sharding = replicated(mesh)
  abstract_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract_params_of(config.model))
  # Non-parameter variables are not checkpointed: rebuilt from the config.
  handle = fresh_handle(config.model, int(config.seed), sharding)

  errors = []
  for kind in kinds:
    try:
      got, params = orbax_store.restore_params(workdir, abstract_params, step_n, kind=kind)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"{os.path.join(workdir, kind, str(step_n))}: {type(e).__name__}: "
                    f"{str(e)[:300]}")
      continue
    return Run(workdir, config, got, kind, tokenizer, handle, params, mesh)
  raise RunError(f"params of step {step_n} do not restore (corrupt or incomplete "
                 f"checkpoint?):\n  " + "\n  ".join(errors))


# ----------------------------------------------------------------------------
# Compiled functions shared by runs of one model config on one set of devices.
# ----------------------------------------------------------------------------

_STEP_CACHE: dict = {}


def cached(kind: str, run: Run, build: Callable[[], Any], *extra) -> Any:
  """build() once per (kind, the run's model config, its devices, *extra)."""
  key = (kind, json.dumps(run.config.model.to_dict(), sort_keys=True, default=str),
         tuple(d.id for d in run.mesh.devices.flat)) + extra
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = build()
  return _STEP_CACHE[key]
