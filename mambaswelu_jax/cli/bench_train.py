r"""Times the real train step of a config on synthetic tokens: tokens/s, TFLOP/s per
device and MFU, without data, checkpoints or writers.

  python -m mambaswelu_jax.cli.bench_train --config=configs/slimpajama_chinchilla.py \
      --config.data.seq_len=128 --config.train.global_batch_size=2 \
      --config.train.micro_batch_per_device=1 --config.train.num_steps=100 --steps=5

The step is the trainer's own (`steps.make_train_step`: shard_map over every device,
gradient accumulation, donated state). The first step (compilation) is reported
separately.
"""

import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the first.")
flags.mark_flags_as_required(["config"])


def benchmark(config, steps: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax import config_validation  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.training import throughput  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.steps import make_train_step  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.training.state import create_train_state  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.mesh import make_mesh, to_global  # pylint: disable=import-outside-toplevel
  from mambaswelu_jax.models.flops import flops_per_token  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  config = config_validation.resolve(config, num_devices=len(devices),
                                     process_count=jax.process_count())
  accum = config_validation.check_batch(config, len(devices), jax.process_count())
  mesh = make_mesh(devices)
  parts, state, handle = create_train_state(config, mesh)
  step_fn = make_train_step(mesh, parts, accum)
  rows = int(config.train.global_batch_size) // jax.process_count()
  seq_len = int(config.data.seq_len)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.model.vocab_size, (rows, seq_len + 1), dtype=np.int32)
  batch = to_global({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh)
  t0 = time.perf_counter()
  state, m = step_fn(state, handle, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  flops = flops_per_token(config.model, int(config.data.seq_len))["training"]
  peak, source = throughput.peak_tflops(devices[0], jax.local_device_count(),
                                     config.train.peak_tflops_per_device)
  meter = throughput.ThroughputMeter(int(config.train.global_batch_size) * seq_len, flops,
                                  len(devices), peak)
  for _ in range(steps):
    state, m = step_fn(state, handle, batch)
    meter.count_step()
  jax.block_until_ready(m)
  timed = meter.scalars(steps)
  return {"parameters": parts.num_params, "devices": len(devices),
          "device_kind": devices[0].device_kind, "seq_len": seq_len,
          "global_batch": int(config.train.global_batch_size), "accumulation": accum,
          "compute_dtype": config.model.compute_dtype, "first_step_s": compile_s,
          "step_s": timed["step_time"], "tokens_per_second": timed["tokens_per_second"],
          "tflops_per_device": timed["tflops_per_device"], "peak_tflops_per_device": peak,
          "peak_from": source, "mfu": timed["mfu"],
          "loss": float(m["train_loss"])}


def main(argv):
  del argv
  result = benchmark(_CONFIG.value, _STEPS.value)
  for key, value in result.items():
    print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")


def run() -> None:
  """The command (`python -m ...` and the `mambaswelu-bench-train` console script)."""
  app.run(main)


if __name__ == "__main__":
  run()
