"""Parameters, FLOPs and token budget of a run config, without allocating the model.

  python -m mambaswelu_jax.cli.summary --config=configs/slimpajama_chinchilla.py

The last line is `total_parameters: N`. With --memory it first prints the compiled
per-device memory of the train step on this backend (mambaswelu_jax/training/memory_check.py):
for the configured train.micro_batch_per_device and each smaller one the trainer's
out-of-memory pre-flight would try, without and (unless --nomemory_remat) with
model.remat, against the available memory. This compiles the step once per row.
"""

import collections
import math

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from mambaswelu_jax.models.flops import flops_per_token
from mambaswelu_jax.models.registry import abstract_params

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.",
                                          lock_config=True)
_MEMORY = flags.DEFINE_bool("memory", False, "Also compile the train step and print its "
                            "per-device memory for each micro-batch size.")
_MEMORY_REMAT = flags.DEFINE_bool("memory_remat", True, "With --memory: rows with "
                                  "model.remat=True as well.")

# Leaf name -> component, for the per-component table.
_COMPONENTS = {
    "embed": "embedding (tied LM head)", "positions": "learned positions",
    "in_proj": "mamba in_proj", "conv": "mamba conv1d", "x_proj": "mamba x_proj",
    "dt_proj": "mamba dt_proj", "A_log": "mamba A_log, D", "D": "mamba A_log, D",
    "out_proj": "mamba out_proj", "norm": "norms", "final_norm": "norms",
    "layers": "dense layers", "conv_act": "SWELU scalars", "out_act": "SWELU scalars",
    "acts": "SWELU scalars",
}


def parameters_by_component(model_cfg) -> "collections.OrderedDict[str, int]":
  counts = collections.OrderedDict()
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params(model_cfg)):
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    component = next((_COMPONENTS[n] for n in reversed(names) if n in _COMPONENTS),
                     "/".join(names))
    counts[component] = counts.get(component, 0) + int(math.prod(leaf.shape))
  order = list(dict.fromkeys(_COMPONENTS.values()))
  return collections.OrderedDict(sorted(
      counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def summarize(config) -> list:
  """Lines of the summary; the last one is `total_parameters: N`."""
  from mambaswelu_jax.config_validation import derived_num_steps, tokens_per_step
  m = config.model
  counts = parameters_by_component(m)
  total = sum(counts.values())
  seq_len = config.data.seq_len
  flops = flops_per_token(m, seq_len)
  step_tokens = tokens_per_step(config)
  lines = [f"model: {m.mixer} mixer, {m.n_layers} blocks + 3 dense, d_model {m.d_model}, "
           f"d_state {m.d_state}, expand {m.expand}, vocab {m.vocab_size}, "
           f"activation {m.activation}, norm {m.norm}",
           "parameters by component:"]
  lines += [f"  {name:<28} {n:>14,}  {100 * n / total:5.1f}%" for name, n in counts.items()]
  lines += [f"FLOPs per token: forward {flops['forward'] / 1e6:,.1f} M "
            f"(matmul {flops['matmul'] / 1e6:,.1f} M, scan {flops['scan'] / 1e6:,.2f} M, "
            f"elementwise {flops['elementwise'] / 1e6:,.2f} M), "
            f"training {flops['training'] / 1e6:,.1f} M",
            f"tokens per step: {step_tokens:,} ({config.train.global_batch_size} x {seq_len})"]
  steps = config.train.num_steps or derived_num_steps(config, total)
  how = "set" if config.train.num_steps else (
      f"derived: {config.data.tokens_per_parameter:g} tokens/param x {total:,} params")
  lines += [f"steps: {steps:,} ({how}); tokens {steps * step_tokens / 1e9:,.3f} B; "
            f"training compute {flops['training'] * steps * step_tokens:.3e} FLOPs",
            f"total_parameters: {total}"]
  return lines


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config=configs/X.py is required.")
  if _MEMORY.value:
    from mambaswelu_jax.training import memory_check  # pylint: disable=import-outside-toplevel
    remat = (False, True) if _MEMORY_REMAT.value else (False,)
    print("\n".join(memory_check.measure_table(_CONFIG.value, remat=remat)), flush=True)
  print("\n".join(summarize(_CONFIG.value)))


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-summary` console script)."""
  import sys  # pylint: disable=ungrouped-imports
  from mambaswelu_jax.config_validation import make_configs_importable
  make_configs_importable(sys.argv)
  app.run(main)


if __name__ == "__main__":
  run()
