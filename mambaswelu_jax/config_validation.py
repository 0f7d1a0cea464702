"""Checks a run config before anything compiles, and fills in derived values.

Every error is a `ConfigError` whose message names the offending key and says how
to fix it. `resolve(config, num_devices=..., process_count=...)` returns a new,
locked ConfigDict with `train.num_steps` filled in; the resolved config is what a
workdir records.

Imports jax, flax, numpy and ml_collections only.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from typing import Any

import ml_collections

from kernels import scan as kscan
from mambaswelu_jax import config_defaults


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


# Keys that may change when a run resumes: they steer logging, checkpoint
# cadence, evaluation and the device split, not the trained numbers.
# A trailing ".*" matches a whole block.
RESUMABLE_CHANGES = (
    "train.log_every_steps",
    "train.stop_at_step",
    "train.init_from",   # read only when a run starts (no checkpoint yet)
    "train.peak_tflops_per_device",
    "train.micro_batch_per_device",
    "train.max_consecutive_nonfinite",
    "train.nonfinite_lr_factor",
    "train.max_nonfinite_reloads",
    "train.data_order_log",
    "train.memory_check",
    "train.memory_limit_bytes",
    "train.compilation_cache_dir",
    "model.scan_impl",
    "model.scan_chunk",
    "model.remat",
    "checkpoint.*",
    "eval.*",
)

# Choices documented in mambaswelu_jax/config_defaults.py.
_CHOICES = {
    "model.compute_dtype": ("bfloat16", "float32", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.scan_impl": kscan.IMPLEMENTATIONS,
    "model.activation": ("swelu", "silu"),
    "model.mixer": ("selective", "gated_conv"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.mlp": ("gelu", "swiglu"),
    "checkpoint.on_write_error": ("continue", "stop"),
}


def _choices() -> dict:
  """The valid values of the keys that name a choice: the models' own registries where
  they have one (imported here, not at import time: flax is heavy)."""
  from mambaswelu_jax.models.layers import INITS  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.registry import ARCHITECTURES  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.swelu import K_PARAMS  # pylint: disable=import-outside-toplevel
  return {**_CHOICES, "model.architecture": tuple(ARCHITECTURES), "model.init": INITS,
          "model.swelu_k_param": K_PARAMS}


# ----------------------------------------------------------------------------
# Structure: unknown keys and wrong types, against mambaswelu_jax/config_defaults.py.
# ----------------------------------------------------------------------------


def reference_config() -> ml_collections.ConfigDict:
  """The schema every run config must follow: `mambaswelu_jax/config_defaults.py`."""
  return config_defaults.get_config()


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'train.learning_rate': 3e-4, ...} for a (nested) ConfigDict or dict."""
  out = {}
  items = config.items() if hasattr(config, "items") else []
  for key, value in items:
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _type_ok(ref: Any, value: Any) -> bool:
  if ref is None or value is None:
    return True
  if isinstance(ref, bool):
    return isinstance(value, bool)
  if isinstance(ref, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(ref, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(ref, str):
    return isinstance(value, str)
  if isinstance(ref, (tuple, list)):
    return isinstance(value, (tuple, list))
  return True


def check_structure(config: ml_collections.ConfigDict,
                    reference: ml_collections.ConfigDict | None = None) -> None:
  """Unknown keys and wrong types, checked against the reference config."""
  reference = reference if reference is not None else reference_config()
  ref = flatten(reference)
  ref_blocks = {k.rsplit(".", 1)[0] for k in ref if "." in k}
  got = flatten(config)
  for key, value in got.items():
    if key not in ref:
      if key in ref_blocks:
        raise ConfigError(f"config key '{key}' must be a block (ConfigDict), got "
                          f"{value!r}; set its fields, e.g. --config.{key}.<field>=...")
      near = difflib.get_close_matches(key, list(ref), n=1)
      hint = f" Did you mean '{near[0]}'?" if near else ""
      raise ConfigError(
          f"unknown config key '{key}'.{hint} Keys come from "
          f"mambaswelu_jax/config_defaults.py; remove it or add it there.")
    if not _type_ok(ref[key], value):
      raise ConfigError(
          f"config key '{key}' has type {type(value).__name__} ({value!r}); expected "
          f"{type(ref[key]).__name__} like the default {ref[key]!r}. Fix it in the "
          f"config file or with --config.{key}=<{type(ref[key]).__name__}>.")
  missing = sorted(set(ref) - set(got))
  if missing:
    raise ConfigError(
        f"config key '{missing[0]}' is missing (and {len(missing) - 1} more). Start "
        f"run configs from `configs.default.get_config()` so every key exists.")


# ----------------------------------------------------------------------------
# Values.
# ----------------------------------------------------------------------------


def _require(ok: bool, key: str, value: Any, need: str) -> None:
  if not ok:
    raise ConfigError(f"config key '{key}' = {value!r} is invalid: {need}. "
                      f"Set it with --config.{key}=... or in the config file.")


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def check_batch(config: ml_collections.ConfigDict, num_devices: int,
                process_count: int = 1) -> int:
  """Returns the gradient-accumulation count; raises when the split is impossible."""
  t = config.train
  g, m = t.global_batch_size, t.micro_batch_per_device
  _require(g > 0, "train.global_batch_size", g, "it must be positive")
  _require(m > 0, "train.micro_batch_per_device", m, "it must be positive")
  if g % (m * num_devices):
    if g % num_devices:
      fix = (f"set train.global_batch_size to a multiple of {num_devices} (the device "
             f"count), e.g. {num_devices * max(1, round(g / num_devices))}")
    else:
      fix = (f"with {num_devices} device(s) use train.micro_batch_per_device in "
             f"{_divisors(g // num_devices)}, or set train.global_batch_size to a multiple of {m * num_devices}")
    raise ConfigError(
        f"config key 'train.global_batch_size' = {g} cannot be split into micro-batches "
        f"of train.micro_batch_per_device = {m} on {num_devices} device(s) "
        f"({g} is not a multiple of {m} x {num_devices} = {m * num_devices}); {fix}.")
  if g % process_count:
    raise ConfigError(
        f"config key 'train.global_batch_size' = {g} is not divisible by the "
        f"{process_count} processes of this run; use a multiple of {process_count}.")
  s = int(t.data_streams)
  _require(s >= 0, "train.data_streams", s, "it must be >= 0 (0: one per process)")
  if s and (s % process_count or g % s):
    raise ConfigError(
        f"config key 'train.data_streams' = {s} must be a multiple of the {process_count} "
        f"process(es) and divide train.global_batch_size = {g}; use one of "
        f"{[d for d in _divisors(g) if d % process_count == 0]} (or 0: one per process).")
  return g // (m * num_devices)


def check_values(config: ml_collections.ConfigDict) -> None:
  t, c, e, d, m = config.train, config.checkpoint, config.eval, config.data, config.model
  _require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "it must be > 0")
  _require(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "it must be >= 0")
  _require(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio", t.min_lr_ratio,
           "it must lie in [0, 1]")
  _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "it must be >= 0")
  _require(0.0 <= t.b1 < 1.0, "train.b1", t.b1, "it must lie in [0, 1)")
  _require(0.0 <= t.b2 < 1.0, "train.b2", t.b2, "it must lie in [0, 1)")
  _require(t.eps > 0, "train.eps", t.eps, "it must be > 0")
  _require(t.grad_clip_norm >= 0, "train.grad_clip_norm", t.grad_clip_norm,
           "it must be >= 0 (0 disables clipping)")
  _require(t.num_steps >= 0, "train.num_steps", t.num_steps,
           "it must be >= 0 (0 derives it from data.tokens_per_parameter)")
  _require(t.log_every_steps > 0, "train.log_every_steps", t.log_every_steps, "it must be > 0")
  _require(t.stop_at_step >= 0, "train.stop_at_step", t.stop_at_step,
           "it must be >= 0 (0: run to train.num_steps)")
  _require(t.peak_tflops_per_device >= 0, "train.peak_tflops_per_device",
           t.peak_tflops_per_device, "it must be >= 0 (0: from the device kind)")
  if "max_consecutive_nonfinite" in t:
    _require(t.max_consecutive_nonfinite >= 0, "train.max_consecutive_nonfinite",
             t.max_consecutive_nonfinite, "it must be >= 0 (0: never reload)")
    _require(0.0 < t.nonfinite_lr_factor <= 1.0, "train.nonfinite_lr_factor",
             t.nonfinite_lr_factor, "it must lie in (0, 1]")
    _require(t.max_nonfinite_reloads >= 0, "train.max_nonfinite_reloads",
             t.max_nonfinite_reloads, "it must be >= 0")
  if "memory_limit_bytes" in t:
    _require(t.memory_limit_bytes >= 0, "train.memory_limit_bytes", t.memory_limit_bytes,
             "it must be >= 0 (bytes per device; 0: the device's own memory)")
  _require(c.every_steps > 0, "checkpoint.every_steps", c.every_steps, "it must be > 0")
  _require(c.max_to_keep >= 1, "checkpoint.max_to_keep", c.max_to_keep, "keep at least 1")
  _require(c.snapshot_every_steps >= 0, "checkpoint.snapshot_every_steps",
           c.snapshot_every_steps, "it must be >= 0 (0: no snapshots)")
  _require(e.every_steps >= 0, "eval.every_steps", e.every_steps,
           "it must be >= 0 (0: evaluate only at the end)")
  _require(e.max_batches >= 0, "eval.max_batches", e.max_batches,
           "it must be >= 0 (0: the whole validation split)")
  _require(e.batch_per_device > 0, "eval.batch_per_device", e.batch_per_device,
           "it must be > 0")
  _require(e.sample_tokens >= 0, "eval.sample_tokens", e.sample_tokens, "it must be >= 0")
  _require(e.sample_temperature >= 0, "eval.sample_temperature", e.sample_temperature,
           "it must be >= 0 (0: greedy)")
  _require(d.seq_len > 0, "data.seq_len", d.seq_len, "it must be > 0")
  if t.num_steps == 0:
    _require(d.tokens_per_parameter > 0, "data.tokens_per_parameter",
             d.tokens_per_parameter, "it must be > 0 when train.num_steps is 0 (derived)")
  _require(m.vocab_size > 0, "model.vocab_size", m.vocab_size, "it must be > 0")
  if "dropout" in m:
    _require(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout,
             "it must lie in [0, 1) (0: no dropout)")
  if "swelu_eps" in m:
    _require(0.0 <= m.swelu_eps <= 1e-3, "model.swelu_eps", m.swelu_eps,
             "it must lie in [0, 1e-3] (0: |z|^k with the capped slope; the original: 1e-8)")
  for key in ("d_model", "n_layers", "d_state", "d_conv", "expand"):
    if key in m:
      _require(m[key] > 0, f"model.{key}", m[key], "it must be > 0")
  if m.architecture == "transformer":
    _require(m.n_heads > 0 and m.d_model % m.n_heads == 0, "model.n_heads", m.n_heads,
             f"it must be > 0 and divide model.d_model = {m.d_model}")
    _require(m.learned_positions or (m.d_model // m.n_heads) % 2 == 0, "model.n_heads",
             m.n_heads, "rotary positions need an even head width d_model / n_heads")
    _require(m.mlp_hidden >= 0, "model.mlp_hidden", m.mlp_hidden, "it must be >= 0 (0: default)")
    _require(m.max_len >= d.seq_len, "model.max_len", m.max_len,
             f"the Transformer's KV cache and positions must cover data.seq_len = {d.seq_len}")
  if m.learned_positions:
    _require(m.max_len >= d.seq_len, "model.max_len", m.max_len,
             f"the learned position table must cover data.seq_len = {d.seq_len}")
  for key, choices in _choices().items():
    block, field = key.split(".")
    if field in config[block]:
      value = config[block][field]
      _require(value in choices, key, value, f"choose one of {list(choices)}")


# ----------------------------------------------------------------------------
# Derived values.
# ----------------------------------------------------------------------------


def tokens_per_step(config: ml_collections.ConfigDict) -> int:
  return int(config.train.global_batch_size) * int(config.data.seq_len)


def derived_num_steps(config: ml_collections.ConfigDict, num_params: int | None = None) -> int:
  """tokens_per_parameter x parameters / tokens per optimizer step, rounded."""
  if num_params is None:
    # Imported here: the model (and JAX) only when the count is needed.
    from mambaswelu_jax.models.registry import param_count  # pylint: disable=import-outside-toplevel
    num_params = param_count(config.model)
  return max(1, int(round(config.data.tokens_per_parameter * num_params / tokens_per_step(config))))


def resolve(config: ml_collections.ConfigDict, *, num_devices: int = 1, process_count: int = 1,
            check_keys: bool = True, data_streams: int = 0) -> ml_collections.ConfigDict:
  """Validates `config` and returns a locked copy with derived values filled in:
  train.num_steps from the token budget when 0, and train.data_streams when 0 from
  `data_streams` (the streams of the run a workdir holds) or one per process."""
  if check_keys:
    check_structure(config)
  check_values(config)
  config = ml_collections.ConfigDict(config.to_dict())
  if config.train.data_streams == 0:
    config.train.data_streams = int(data_streams) or int(process_count)
  check_batch(config, num_devices, process_count)
  if config.train.num_steps == 0:
    config.train.num_steps = derived_num_steps(config)
  n = config.train.num_steps
  _require(config.train.warmup_steps < n or config.train.warmup_steps == 0,
           "train.warmup_steps", config.train.warmup_steps,
           f"warmup must end before train.num_steps = {n}")
  config.lock()
  return config


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """Keys whose values differ, ignoring RESUMABLE_CHANGES; 'key: old -> new' strings."""
  def ignored(key):
    return any(key == pat or (pat.endswith(".*") and key.startswith(pat[:-1]))
               for pat in RESUMABLE_CHANGES)

  out = []
  for key in sorted(set(old) | set(new)):
    if ignored(key):
      continue
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
      same = math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b
    else:
      same = (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)
    if not same:
      out.append(f"{key}: {a!r} -> {b!r}")
  return out


def make_configs_importable(argv) -> None:
  """Lets a config file load from anywhere: config files import `configs.*` (the
  checkout's configs/ package, not installed with the library), so the checkout that
  holds this package is put on sys.path (last), and so is the folder above a config
  file's own `configs/` folder (a copy of configs/ elsewhere)."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  roots = [here] if os.path.isdir(os.path.join(here, "configs")) else []
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = os.path.abspath(os.path.expanduser(arg.split("=", 1)[1].split(":", 1)[0]))
      folder = os.path.dirname(path)
      if os.path.basename(folder) == "configs":
        roots.insert(0, os.path.dirname(folder))
  for root in roots:
    if root not in sys.path:
      sys.path.append(root)
