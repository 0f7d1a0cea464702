r"""lm-evaluation-harness adapter: zero-shot benchmarks for a run's checkpoint.

  pip install -e '.[eval]'
  python -m mambaswelu_jax.cli.lm_eval --model mambaswelu \
      --model_args workdir=DIR,step=latest --batch_size 32 \
      --tasks lambada_openai,hellaswag,piqa,winogrande

The command (`mambaswelu_jax.cli.lm_eval`) is lm-eval's own command line (`lm_eval
...`, same flags) with this module imported first, which registers the model name `mambaswelu` (lm-eval finds
models through its registry, so a plain `lm_eval` process would not know it). From
Python: `import mambaswelu_jax.lm_eval_adapter` and then `lm_eval.simple_evaluate(
model="mambaswelu", model_args="workdir=DIR", ...)`, or `run_benchmarks(run, tasks)`
(what `python -m mambaswelu_jax.cli.eval --benchmarks=...` calls).

model_args: workdir (required), step (latest | final | N), max_length (a cap on the
tokens read at once; default none beyond the model's own limit), max_gen_toks (default
256). Rows per scoring batch come from lm-eval's own `--batch_size` (its default is
1: pass e.g. `--batch_size 32`; "auto" means 16 here).

Requests are scored whole. The selective SSM has no length limit (its recurrent state
carries any past), so its contexts and continuations are never cut, whatever the
training length was (one forward pass per request; past scoring.LONGEST_FORWARD tokens,
pieces that carry the recurrent state, in constant memory). The Transformer has
model.max_len positions: a longer request keeps its continuation and the context
nearest to it (lm-eval's leftmost cut). Every cut, there or under a max_length cap, is
counted (`truncation`, per task), reported in a warning line when scoring ends, and
stored with the task's results by `run_benchmarks`.

The model sees text as in training: EOS (the document separator) stands in front of
every request, as `prefix_token_id`. It implements

  loglikelihood          Σ log p(continuation | context) and greedy-or-not, from one
                         forward pass per batch (requests sorted longest first,
                         right-padded to power-of-two lengths);
  loglikelihood_rolling  the whole text in one piece, or, past a limit, in lm-eval's
                         rolling windows of the limit (every token predicted once);
  generate_until         greedy (or sampled, with do_sample / temperature) recurrent
                         decoding, cut at the first `until` string.

lm-eval (and torch, which it needs) is an optional extra: this module imports it
at the top and registers the model when imported, and nothing imports this module but
what runs benchmarks (eval's `--benchmarks` path imports it when asked).
"""

from __future__ import annotations

import logging
import os
from typing import Any

try:
  import lm_eval
  from lm_eval import utils as lm_eval_utils
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import get_model, register_model
  from lm_eval.tasks import TaskManager
except ImportError as _e:
  raise ImportError("lm-eval is not installed: pip install -e '.[eval]' "
                    "(or pip install torch==<a CPU build> lm-eval)") from _e

from mambaswelu_jax.checkpointing import restore
from mambaswelu_jax import scoring
from mambaswelu_jax import workdir as layout
from mambaswelu_jax.sampling import Generator

log = logging.getLogger("mambaswelu_jax.lm_eval_adapter")

MODEL_NAME = "mambaswelu"


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
      run = restore.load_run(workdir, step)
    self.run = run
    self.tokenizer = run.tokenizer
    try:
      self.batch_size = max(1, int(batch_size))
    except (TypeError, ValueError):   # lm-eval's "auto": a fixed size here
      self.batch_size = 16
    self._cap = int(max_length or 0)  # the user's cap; 0: only the model's own limit
    self._limit = scoring.scoring_limit(run, self._cap)
    self.limited_by = (None if self._limit is None else "model.max_len"
                        if self._limit == run.max_length else "max_length model_arg")
    self.max_gen_toks = int(max_gen_toks)
    # {task: counts} of what was cut (see _tally); run_benchmarks stores it per task.
    self.truncation: dict[str, dict] = {}
    self._task_names: list | None = None
    self._scorer = scoring.make_scorer(run)
    self._generator = Generator(run)

  # --- Tokens.

  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def max_length(self) -> int | None:
    """The most tokens read at once; None: no limit (the selective SSM, uncapped)."""
    return self._limit

  @property
  def tokenizer_name(self) -> str:
    return os.path.join(self.run.workdir, layout.TOKENIZER)

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

  # --- What was cut: counted per task, warned about per call.

  def _tally(self, kind: str, tasks, cuts) -> None:
    """Counts one scoring call: cuts[i] = (tokens cut, continuation tokens cut, windows)
    of request i (windows: rolling pieces past the first). A warning line ends a call
    that cut anything."""
    call = _zero_truncation(self._limit, self.limited_by)
    for task, (cut, cont_cut, windows) in zip(tasks, cuts):
      for t in (self.truncation.setdefault(
          task or "", _zero_truncation(self._limit, self.limited_by)), call):
        t["requests"] += 1
        t["truncated"] += int(cut > 0 or windows > 0)
        t["tokens_cut"] += cut
        t["continuation_tokens_cut"] += cont_cut
        t["rolling_windows"] += windows + 1 if windows else 0
    warning = scoring.truncation_warning(f"{MODEL_NAME} {kind}", call)
    if warning:
      log.warning(warning.removeprefix("warning: "))

  # --- Scoring.

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """lm-eval's own tokenization (TemplateLM), with the requests' task names kept for
    the truncation counts."""
    self._task_names = [getattr(r, "task_name", None) for r in requests]
    try:
      return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
    finally:
      self._task_names = None

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                            **kwargs) -> list[tuple[float, bool]]:
    del kwargs
    pairs = [(ctx, cont) for _, ctx, cont in requests]
    out = scoring.score_sequences(self.run, pairs, batch_size=self.batch_size,
                                   max_length=self._cap, scorer=self._scorer,
                                   progress=_progress(len(pairs), "loglikelihood",
                                                      disable_tqdm))
    tasks = self._task_names
    if tasks is None or len(tasks) != len(pairs):
      tasks = [None] * len(pairs)
    cuts = []
    for ctx, cont in pairs:
      _, scored, cut = scoring.fit_request(ctx, cont, self._limit)
      cuts.append((cut, len(cont) - scored if cont else 0, 0))
    self._tally("loglikelihood", tasks, cuts)
    for (key, _, _), result in zip(requests, out):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, result)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Σ log p of every token of each text after EOS: the whole text in one piece when
    it fits (always, for the selective SSM uncapped); past the limit, lm-eval's
    disjoint rolling windows of `limit` tokens (every token predicted once, each
    window's tokens seeing only the window)."""
    pieces, owners, cuts = [], [], []
    for i, req in enumerate(requests):
      (text,) = req.args
      ids = self.tok_encode(text)
      if self._limit is None or len(ids) <= self._limit:
        windows = [([self.prefix_token_id], ids)]
      else:
        windows = [lm_eval_utils.make_disjoint_window(w)
                   for w in lm_eval_utils.get_rolling_token_windows(
                       token_list=ids, prefix_token=self.prefix_token_id,
                       max_seq_len=self._limit, context_len=1)]
      # A window's unseen past: the tokens of [EOS] + ids before its first one.
      end, unseen = 1, 0
      for ctx, cont in windows:
        end += len(cont)
        unseen += end - len(ctx) - len(cont)
      pieces += windows
      owners += [i] * len(windows)
      cuts.append((unseen, 0, len(windows) - 1))
    scores = scoring.score_sequences(
        self.run, pieces, batch_size=self.batch_size, max_length=self._cap,
        scorer=self._scorer,
        progress=_progress(len(pieces), "loglikelihood_rolling", disable_tqdm))
    self._tally("loglikelihood_rolling", [getattr(r, "task_name", None) for r in requests],
                cuts)
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
    cuts = []
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
      cut = 0
      if self._limit is not None:  # leave room for the new tokens, as lm-eval's HF model does
        cut = max(0, len(ids) - max(1, self._limit - max_new))
        ids = ids[cut:]
      cuts.append((cut, 0, 0))
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
    self._tally("generate_until", [getattr(r, "task_name", None) for r in requests], cuts)
    return results  # type: ignore[return-value]


def _register() -> None:
  """Registers MambaSweluLM as `mambaswelu`, once: the module may be imported twice in
  one process (run as __main__ and imported by name), and lm-eval refuses a second,
  different class under a registered name."""
  try:
    existing = get_model(MODEL_NAME)
  except (KeyError, ValueError):
    existing = None
  if not getattr(existing, "is_mambaswelu_adapter", False):
    register_model(MODEL_NAME)(MambaSweluLM)


_register()


def model_class() -> type:
  """The lm-eval model class registered as `mambaswelu`."""
  return get_model(MODEL_NAME)


def _zero_truncation(limit: int | None, limited_by: str | None) -> dict:
  """The counts `truncation` keeps per task: requests scored; how many were cut; tokens
  cut (a request's past its scored tokens did not see, summed over its pieces); of them
  continuation tokens (loglikelihood: not scored); rolling windows of the texts that
  needed more than one."""
  return {"max_length": limit, "limited_by": limited_by, "requests": 0, "truncated": 0,
          "tokens_cut": 0, "continuation_tokens_cut": 0, "rolling_windows": 0}


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


_TRUE = ("1", "true", "yes", "on")


def offline_reason(timeout_s: float = 3.0) -> str | None:
  """Why the Hugging Face Hub cannot be reached (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE
  set, or no connection to it within `timeout_s`), or None when it can."""
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    if os.environ.get(var, "").strip().lower() in _TRUE:
      return f"{var} is set"
  import socket  # pylint: disable=import-outside-toplevel
  from urllib.parse import urlparse  # pylint: disable=import-outside-toplevel
  url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
  host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
  try:
    socket.create_connection((host, port), timeout=timeout_s).close()
  except OSError as e:
    return f"{host}:{port} cannot be reached ({e.strerror or e})"
  return None


def _datasets_of(manager, tasks) -> dict[str, str]:
  """{task: the Hub data set it reads} for the tasks lm-eval's index describes."""
  out = {}
  index = getattr(manager, "task_index", None) or {}
  for task in tasks:
    entry = index.get(task)
    cfg = getattr(entry, "cfg", None) or (entry.get("cfg") if isinstance(entry, dict) else None)
    if isinstance(cfg, dict) and cfg.get("dataset_path"):
      name = cfg.get("dataset_name")
      out[task] = cfg["dataset_path"] + (f" ({name})" if name and name != "default" else "")
  return out


def _go_offline():
  """What HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 would have done, for libraries that read
  those variables when imported: no retries against an unreachable Hub. Returns a
  function that puts everything back."""
  undo = []
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    old = os.environ.get(var)
    undo.append(lambda var=var, old=old: os.environ.pop(var, None) if old is None
                else os.environ.__setitem__(var, old))
    os.environ[var] = "1"
  for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                        ("datasets.config", ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))):
    try:
      import importlib  # pylint: disable=import-outside-toplevel
      mod = importlib.import_module(module)
    except ImportError:
      continue
    for name in names:
      if hasattr(mod, name):
        undo.append(lambda mod=mod, name=name, old=getattr(mod, name): setattr(mod, name, old))
        setattr(mod, name, True)

  def restore():
    for fn in reversed(undo):
      fn()
  return restore


def run_benchmarks(run, tasks: list[str], *, limit: int | None = None, batch_size: int = 16,
                   include_path: str | None = None, num_fewshot: int | None = None,
                   max_length: int = 0, bootstrap_iters: int = 1000) -> dict:
  """{task: results} from lm-eval's simple_evaluate on a restored run.

  A task's results: its metrics as lm-eval names them (`acc`, `acc_norm`, `perplexity`,
  ...; `metric,filter` past the default filter), each metric's standard error beside it
  (`acc_stderr`; closed form for means, `bootstrap_iters` serial resamples for the
  others; 0: none), `documents` (how many were evaluated) and `truncation` (what was cut
  from its requests: `_zero_truncation`). A warning line is logged for each task with
  truncated requests.

  include_path: a folder of extra task YAMLs (lm-eval's TaskManager include_path).
  max_length: a cap on the tokens read at once (the model arg of the same name).
  """
  lm = model_class()(run=run, batch_size=batch_size, max_length=max_length)
  manager = None
  if include_path:  # indexing lm-eval's own ~thousands of task files takes seconds: skip it
    local = TaskManager(include_path=include_path, include_defaults=False)
    if set(tasks) <= set(local.all_tasks):
      manager = local
  manager = manager or TaskManager(include_path=include_path)
  # Offline (no network, or HF_*_OFFLINE set): the data sets must be local already; fail
  # fast naming them instead of retrying the Hub for minutes.
  offline = offline_reason()
  hub_sets = _datasets_of(manager, tasks) if offline else {}
  back_online = _go_offline() if offline else (lambda: None)
  # lm-eval bootstraps in a multiprocessing pool unless told not to; forking a process
  # that runs JAX can hang, so the resamples run here, serially (seeded: reproducible).
  old = os.environ.get("DISABLE_MULTIPROC")
  os.environ["DISABLE_MULTIPROC"] = "1"
  try:
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit,
                                  num_fewshot=num_fewshot, task_manager=manager,
                                  log_samples=False, bootstrap_iters=bootstrap_iters)
  except Exception as e:  # pylint: disable=broad-except
    if not offline:
      raise
    from mambaswelu_jax.data.sources import DataError  # pylint: disable=import-outside-toplevel
    named = ", ".join(f"{t}: {d}" for t, d in hub_sets.items()) or ", ".join(tasks)
    raise DataError(
        f"benchmarks offline ({offline}): the data set(s) {named} are not in the local "
        f"datasets cache ({type(e).__name__}). Offline, pass --benchmark_tasks_dir=DIR with "
        f"local task YAMLs (docs/evaluation.md), or download the data sets once with "
        f"network (they stay in the datasets cache, HF_DATASETS_CACHE) and rerun.") from e
  finally:
    back_online()
    if old is None:
      os.environ.pop("DISABLE_MULTIPROC", None)
    else:
      os.environ["DISABLE_MULTIPROC"] = old
  out = out or {}
  groups = set(out.get("group_subtasks", {})) - set(lm.truncation)
  results = {}
  for task, metrics in out.get("results", {}).items():
    clean = {}
    for name, value in metrics.items():
      metric, comma, filt = name.partition(",")
      # lm-eval names every metric `metric,filter`; other keys (alias, sample_len) are
      # its bookkeeping. A stderr it could not compute is the string "N/A".
      if not comma or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      clean[metric if filt in ("", "none") else name] = float(value)
    n = out.get("n-samples", {}).get(task, {}).get("effective")
    if isinstance(n, int):
      clean["documents"] = n
    if task not in groups:
      clean["truncation"] = dict(lm.truncation.get(
          task, _zero_truncation(lm.max_length, lm.limited_by)))
      warning = scoring.truncation_warning(task, clean["truncation"])
      if warning:
        log.warning(warning.removeprefix("warning: "))
    results[task] = clean
  return results
