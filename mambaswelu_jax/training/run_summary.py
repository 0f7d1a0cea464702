"""The lines a person reads when a run ends: the figures, where the files are and the
commands that come next."""

from __future__ import annotations

import math
import os

from mambaswelu_jax import workdir as layout
from mambaswelu_jax.training.stop_signals import signal_name


def summary(workdir, step, num_steps, elapsed, stop_signal, first_loss, final_eval, config,
             prompt, sample) -> str:
  """What a person wants to read when the run ends: the figures, where the files are
  and the commands that come next."""
  lines = [f"{workdir}: step {step}/{num_steps} in {fmt_time(elapsed)}"
           + (f" (stopped by {signal_name(stop_signal)}; rerun the same command to resume)"
              if stop_signal else "")]
  vocab = int(config.model.vocab_size)
  if first_loss is not None:
    lines.append(f"  first train loss       {first_loss:.3f} nats/token "
                 f"(ln vocab = ln {vocab} = {math.log(vocab):.3f})")
  if final_eval:
    lines.append(f"  validation loss        {final_eval['validation_loss']:.3f} nats/token, "
                 f"perplexity {final_eval['validation_perplexity']:.2f}, "
                 f"{final_eval['validation_bits_per_byte']:.3f} bits/byte")
    if "validation_unigram_entropy" in final_eval:
      lines.append(f"  unigram entropy        {final_eval['validation_unigram_entropy']:.3f} "
                   f"nats/token (of the validation tokens: a model that ignores context)")
  if sample:
    lines.append(f"  sample: {prompt}{sample}".replace("\n", "\n    "))
  lines += [f"  metrics                {os.path.join(workdir, layout.METRICS)} "
            f"(log: {os.path.join(workdir, layout.TRAIN_LOG)})",
            f"  TensorBoard            tensorboard --logdir {os.path.join(workdir, layout.TENSORBOARD)}",
            f"  checkpoints            {os.path.join(workdir, layout.CHECKPOINTS)}"]
  if step >= num_steps:
    lines += [f"  evaluate               python -m mambaswelu_jax.cli.eval --workdir={workdir}",
              f"  generate               python -m mambaswelu_jax.cli.generate --workdir={workdir} "
              f"--prompt='...'"]
  return "\n".join(lines)


def fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_errors_line(workdir: str, faults) -> str:
  """The summary's line on failed checkpoint writes ('' when none failed)."""
  failed = int(faults.counters["checkpoint_write_errors"])
  if not failed:
    return ""
  saved = layout.steps(workdir)
  return (f"\n  write errors           {failed} checkpoint write(s) failed (full disk or "
          f"I/O error; see {layout.TRAIN_LOG}); newest checkpoint: "
          f"{saved[-1] if saved else 'none'}")
