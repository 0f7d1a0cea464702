r"""lm-evaluation-harness adapter: zero-shot benchmarks for a run's checkpoint.

  pip install -e '.[eval]'
  python -m mambaswelu_jax.lm_eval_adapter --model mambaswelu \
      --model_args workdir=DIR,step=latest --batch_size 32 \
      --tasks lambada_openai,hellaswag,piqa,winogrande

The command is lm-eval's own command line (`lm_eval ...`, same flags) with this
module imported first, which registers the model name `mambaswelu` (lm-eval finds
models through its registry, so a plain `lm_eval` process would not know it). From
Python: `import mambaswelu_jax.lm_eval_adapter` and then `lm_eval.simple_evaluate(
model="mambaswelu", model_args="workdir=DIR", ...)`, or `run_benchmarks(run, tasks)`
(what `python -m mambaswelu_jax.eval --benchmarks=...` calls).

model_args: workdir (required), step (latest | final | N), max_length (tokens of
context scored at once; default the run's training length), max_gen_toks (default
256). Rows per scoring batch come from lm-eval's own `--batch_size` (its default is
1: pass e.g. `--batch_size 32`; "auto" means 16 here).

The model sees text as in training: EOS (the document separator) stands in front of
every request, as `prefix_token_id`. It implements

  loglikelihood          Σ log p(continuation | context) and greedy-or-not, from one
                         forward pass per batch (requests sorted longest first,
                         right-padded to power-of-two lengths);
  loglikelihood_rolling  the whole text in windows of max_length tokens, every token
                         predicted once (lm-eval's rolling windows);
  generate_until         greedy (or sampled, with do_sample / temperature) recurrent
                         decoding, cut at the first `until` string.

lm-eval (and torch, which it needs) is an optional extra; this module imports it
only when used, and registers the model only if it is importable.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from mambaswelu_jax import eval as eval_lib
from mambaswelu_jax import generate as generate_lib

log = logging.getLogger("mambaswelu_jax.lm_eval_adapter")

MODEL_NAME = "mambaswelu"


def _lm_eval():
  try:
    import lm_eval  # pylint: disable=import-outside-toplevel
    from lm_eval.api.model import TemplateLM  # pylint: disable=import-outside-toplevel
    from lm_eval.api.registry import register_model  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("lm-eval is not installed: pip install -e '.[eval]' "
                      "(or pip install torch==<a CPU build> lm-eval)") from e
  return lm_eval, TemplateLM, register_model


def _make_class():
  _, TemplateLM, register_model = _lm_eval()
  from lm_eval.api.registry import get_model  # pylint: disable=import-outside-toplevel
  try:  # this module imported twice (as __main__ and by name): one registered class
    existing = get_model(MODEL_NAME)
    if getattr(existing, "is_mambaswelu_adapter", False):
      return existing
  except (KeyError, ValueError):
    pass

  @register_model(MODEL_NAME)
  class MambaSweluLM(TemplateLM):
    """A restored MambaSWELU run as an lm-eval model."""

    backend = "causal"
    is_mambaswelu_adapter = True

    def __init__(self, workdir: str | None = None, step: Any = "latest", batch_size: Any = 16,
                 max_length: int = 0, max_gen_toks: int = 256, run=None, **kwargs):
      super().__init__()
      if kwargs:
        log.info("ignoring model_args %s", sorted(kwargs))
      if run is None:
        if not workdir:
          raise ValueError("model_args must name the run: workdir=DIR[,step=N]")
        run = eval_lib.load_run(workdir, step)
      self.run = run
      self.tokenizer = run.tokenizer
      try:
        self.batch_size = max(1, int(batch_size))
      except (TypeError, ValueError):   # lm-eval's "auto": a fixed size here
        self.batch_size = 16
      self._max_length = int(max_length) or run.max_length
      self.max_gen_toks = int(max_gen_toks)
      self._scorer = eval_lib.make_scorer(run)
      self._generator = generate_lib.Generator(run)

    # --- Tokens.

    @property
    def eot_token_id(self) -> int:
      return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
      return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
      return self._max_length

    @property
    def tokenizer_name(self) -> str:
      return f"{self.run.workdir}/tokenizer.model"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
      del add_special_tokens, kwargs
      return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens, **kwargs) -> str:
      del kwargs
      return self.tokenizer.decode(tokens)

    # --- Scoring.

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
      """lm-eval's split of context and continuation, with EOS (the document start in
      training) in front of the context, as lm-eval puts it in front of an empty one."""
      context_enc, continuation_enc = super()._encode_pair(context, continuation)
      return [self.prefix_token_id] + context_enc, continuation_enc

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              **kwargs) -> list[tuple[float, bool]]:
      del kwargs
      pairs = [(ctx, cont) for _, ctx, cont in requests]
      out = eval_lib.score_sequences(self.run, pairs, batch_size=self.batch_size,
                                     max_length=self.max_length, scorer=self._scorer,
                                     progress=_progress(len(pairs), "loglikelihood",
                                                        disable_tqdm))
      for (key, _, _), result in zip(requests, out):
        if key is not None:
          self.cache_hook.add_partial("loglikelihood", key, result)
      return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
      from lm_eval import utils  # pylint: disable=import-outside-toplevel
      windows, owners = [], []
      for i, req in enumerate(requests):
        (text,) = req.args
        for w in utils.get_rolling_token_windows(
            token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
            max_seq_len=self.max_length, context_len=1):
          windows.append(utils.make_disjoint_window(w))
          owners.append(i)
      scores = eval_lib.score_sequences(
          self.run, windows, batch_size=self.batch_size, max_length=self.max_length,
          scorer=self._scorer,
          progress=_progress(len(windows), "loglikelihood_rolling", disable_tqdm))
      totals = [0.0] * len(requests)
      for i, (logp, _) in zip(owners, scores):
        totals[i] += logp
      for req, total in zip(requests, totals):
        self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
      return totals

    # --- Generation.

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
      results: list[str | None] = [None] * len(requests)
      groups: dict = {}
      for i, req in enumerate(requests):
        context, gen_kwargs = req.args
        gk = dict(gen_kwargs or {})
        until = gk.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eot = self.tok_decode([self.eot_token_id])
        if eot and eot not in until:
          until.append(eot)
        max_new = int(gk.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(gk.pop("do_sample", False))
        temperature = float(gk.pop("temperature", 0.0)) if do_sample else 0.0
        top_k = int(gk.pop("top_k", 0) or 0) if do_sample else 0
        top_p = float(gk.pop("top_p", 1.0) or 1.0) if do_sample else 1.0
        ids = [self.prefix_token_id] + self.tok_encode(context)
        ids = ids[-max(1, self.max_length - max_new):]  # leave room, as lm-eval's HF model does
        key = (max_new, temperature, top_k, top_p)
        groups.setdefault(key, []).append((i, ids, until))
      for (max_new, temperature, top_k, top_p), items in groups.items():
        items.sort(key=lambda x: -len(x[1]))
        for s in range(0, len(items), self.batch_size):
          chunk = items[s:s + self.batch_size]
          outs, _, _ = self._generator.generate_ids(
              [ids for _, ids, _ in chunk], max_new, temperature=temperature, top_k=top_k,
              top_p=top_p, seed=0, stop_at_eos=True)
          for (i, _, until), out in zip(chunk, outs):
            text = self.tok_decode(out)
            for stop in until:
              if stop and stop in text:
                text = text[:text.index(stop)]
            results[i] = text
            self.cache_hook.add_partial("generate_until", requests[i].args, text)
      return results  # type: ignore[return-value]

  return MambaSweluLM


def _progress(total: int, desc: str, disable: bool):
  if disable or total == 0:
    return None
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  bar = tqdm(total=total, desc=desc)
  def step(n):
    bar.update(n)
    if bar.n >= total:
      bar.close()
  return step


_CLASS = None


def model_class():
  """The registered lm-eval model class (registers it on first call)."""
  global _CLASS  # pylint: disable=global-statement
  if _CLASS is None:
    _CLASS = _make_class()
  return _CLASS


def run_benchmarks(run, tasks: list[str], *, limit: int | None = None, batch_size: int = 16,
                   include_path: str | None = None, num_fewshot: int | None = None) -> dict:
  """{task: {metric: value}} from lm-eval's simple_evaluate on a restored run.

  include_path: a folder of extra task YAMLs (lm-eval's TaskManager include_path).
  """
  lm_eval, _, _ = _lm_eval()
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  lm = model_class()(run=run, batch_size=batch_size)
  manager = None
  if include_path:  # indexing lm-eval's own ~thousands of task files takes seconds: skip it
    local = TaskManager(include_path=include_path, include_defaults=False)
    if set(tasks) <= set(local.all_tasks):
      manager = local
  manager = manager or TaskManager(include_path=include_path)
  out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit,
                                num_fewshot=num_fewshot, task_manager=manager,
                                log_samples=False, bootstrap_iters=0)
  results = {}
  for task, metrics in (out or {}).get("results", {}).items():
    clean = {}
    for name, value in metrics.items():
      if name == "alias" or not isinstance(value, (int, float)):
        continue
      metric, _, filt = name.partition(",")
      clean[metric if filt in ("", "none") else f"{metric},{filt}"] = float(value)
    results[task] = clean
  return results


try:  # Register with lm-eval's registry when lm-eval is importable.
  import importlib.util as _ilu
  if _ilu.find_spec("lm_eval") is not None:
    model_class()
except Exception as _e:  # pylint: disable=broad-except
  log.debug("lm-eval model not registered: %s", _e)


def main() -> None:
  """lm-eval's command line with the `mambaswelu` model registered."""
  _lm_eval()
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=import-outside-toplevel
  cli_evaluate()


if __name__ == "__main__":
  sys.exit(main())
