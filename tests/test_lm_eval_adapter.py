"""The lm-eval-harness adapter on local tasks that mirror lambada_openai, hellaswag, piqa
and winogrande (their fields and prompt construction) on small made-up items, for a
trained MambaSWELU run and a trained Transformer baseline run alike.

Requests longer than the training length are scored whole by the MambaSWELU run (no
position limit); the Transformer cuts past model.max_len and counts what it cut.

Skipped when lm-eval is not installed (pip install -e '.[eval]'; CI installs it)."""

import json
import math
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')",
                                  exc_type=ImportError)

from lm_eval.api.instance import Instance  # pylint: disable=wrong-import-position

from mambaswelu_jax import evaluation  # pylint: disable=wrong-import-position
from mambaswelu_jax import sampling  # pylint: disable=wrong-import-position
from mambaswelu_jax import lm_eval_adapter  # pylint: disable=wrong-import-position
from mambaswelu_jax.checkpointing import restore  # pylint: disable=wrong-import-position
from mambaswelu_jax import scoring  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Made-up items in each task's own fields.
# Made-up text far longer than the runs' training length (32 tokens) and, whole, than the
# Transformer's model.max_len (1024 positions).
LONG_TEXT = "".join(f"Return the value of item {i} to the caller, then close file {i % 7}. "
                    for i in range(64))
LAMBADA = [
    {"text": "The cat sat on the mat and looked at the door. Then the cat"},
    {"text": "def add(a, b):\n    return a + b\n\nprint(add(1, 2)) returns three"},
    {"text": "Open the file, read every line, and close the file"},
    {"text": LONG_TEXT + "Every line is read, and the file is closed"},
]
HELLASWAG = [
    {"ind": 1, "activity_label": "Cooking pasta", "ctx_a": "A man fills a pot with water.",
     "ctx_b": "he", "ctx": "A man fills a pot with water. he", "split": "val", "split_type": "indomain",
     "label": "2", "endings": ["sings to the moon [title] loudly.", "paints the wall.",
                               "puts the pot on the stove.", "rides away on a horse."]},
    {"ind": 2, "activity_label": "Reading", "ctx_a": "A woman opens a book.", "ctx_b": "she",
     "ctx": "A woman opens a book. she", "split": "val", "split_type": "indomain", "label": "0",
     "endings": ["reads the first page.", "eats the book.", "throws it  into a lake.",
                 "becomes a book."]},
]
PIQA = [
    {"goal": "How do you open a jar?", "sol1": "Twist the lid.", "sol2": "Sing to the lid.",
     "label": 0},
    {"goal": "How do you dry wet hands?", "sol1": "Wash them again.",
     "sol2": "Use a towel.", "label": 1},
    {"goal": "How do you print in Python?", "sol1": "print(x)", "sol2": "echo x", "label": 0},
]
WINOGRANDE = [
    {"sentence": "The trophy does not fit in the case because the _ is too big.",
     "option1": "trophy", "option2": "case", "answer": "1"},
    {"sentence": "Anna gave Maria a book because _ had finished reading it.",
     "option1": "Anna", "option2": "Maria", "answer": "1"},
]

HELLASWAG_UTILS = '''
import re


def clean(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\\\[.*?\\\\]", "", text)
    return text.replace("  ", " ")


def process_docs(dataset):
    def one(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {"query": clean(doc["activity_label"] + ": " + ctx),
                "choices": [clean(e) for e in doc["endings"]],
                "gold": int(doc["label"])}
    return dataset.map(one)
'''

WINOGRANDE_UTILS = '''
def doc_to_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def doc_to_target(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def doc_to_choice(doc):
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + o for o in (doc["option1"], doc["option2"])]
'''


def _task_yaml(name, split, data, body):
  return textwrap.dedent(f"""\
      task: {name}
      dataset_path: json
      dataset_name: null
      dataset_kwargs:
        data_files:
          {split}: {data}
      {split}_split: {split}
      """) + textwrap.dedent(body)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
  return write_local_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


def write_local_tasks(d):
  """Writes the four mini tasks (YAML, JSONL data, helper modules) into folder `d`."""
  for name, rows in (("lambada", LAMBADA), ("hellaswag", HELLASWAG), ("piqa", PIQA),
                     ("winogrande", WINOGRANDE)):
    with open(d / f"{name}.jsonl", "w", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
  (d / "mini_hellaswag_utils.py").write_text(HELLASWAG_UTILS)
  (d / "mini_winogrande_utils.py").write_text(WINOGRANDE_UTILS)
  (d / "mini_lambada_openai.yaml").write_text(_task_yaml(
      "mini_lambada_openai", "test", d / "lambada.jsonl", """\
      output_type: loglikelihood
      doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
      doc_to_target: "{{' '+text.split(' ')[-1]}}"
      metric_list:
        - metric: perplexity
          aggregation: perplexity
          higher_is_better: false
        - metric: acc
          aggregation: mean
          higher_is_better: true
      """))
  (d / "mini_hellaswag.yaml").write_text(_task_yaml(
      "mini_hellaswag", "validation", d / "hellaswag.jsonl", """\
      output_type: multiple_choice
      process_docs: !function mini_hellaswag_utils.process_docs
      doc_to_text: "{{query}}"
      doc_to_target: "{{label}}"
      doc_to_choice: "choices"
      metric_list:
        - metric: acc
          aggregation: mean
          higher_is_better: true
        - metric: acc_norm
          aggregation: mean
          higher_is_better: true
      """))
  (d / "mini_piqa.yaml").write_text(_task_yaml(
      "mini_piqa", "validation", d / "piqa.jsonl", """\
      output_type: multiple_choice
      doc_to_text: "Question: {{goal}}\\nAnswer:"
      doc_to_target: label
      doc_to_choice: "{{[sol1, sol2]}}"
      metric_list:
        - metric: acc
          aggregation: mean
          higher_is_better: true
        - metric: acc_norm
          aggregation: mean
          higher_is_better: true
      """))
  (d / "mini_winogrande.yaml").write_text(_task_yaml(
      "mini_winogrande", "validation", d / "winogrande.jsonl", """\
      output_type: multiple_choice
      doc_to_text: !function mini_winogrande_utils.doc_to_text
      doc_to_target: !function mini_winogrande_utils.doc_to_target
      doc_to_choice: !function mini_winogrande_utils.doc_to_choice
      metric_list:
        - metric: acc
          aggregation: mean
          higher_is_better: true
      """))
  return str(d)


@pytest.fixture(scope="module", params=["mamba", "transformer"])
def workdir(request):
  """Every test runs on a trained MambaSWELU run and on the Transformer baseline's."""
  return request.getfixturevalue("trained_workdir" if request.param == "mamba"
                                 else "trained_transformer_workdir")


@pytest.fixture(scope="module")
def run(workdir):
  return restore.load_run(workdir, "latest")


@pytest.fixture(scope="module")
def lm(run):
  return lm_eval_adapter.model_class()(run=run, batch_size=4)


def _direct_logprob(run, ids, n_cont):
  """Σ log p of the last n_cont ids from one plain forward pass."""
  logits = run.logits([ids[:-1]])[0].astype(jnp.float32)
  logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
  rows = np.arange(len(ids) - 1)[-n_cont:]
  return float(logp[rows, np.asarray(ids[1:])[-n_cont:]].sum()), bool(
      np.all(np.argmax(logp[rows], -1) == np.asarray(ids[1:])[-n_cont:]))


def _fit(run, ids):
  """What the model can read of a request: all of it for the MambaSWELU run (no position
  limit); the last model.max_len + 1 ids for the Transformer."""
  limit = int(run.config.model.max_len) if _is_transformer(run) else None
  return ids[-(limit + 1):] if limit else ids


def _is_transformer(run):
  return run.config.model.architecture == "transformer"


def _req(kind, args, i=0):
  return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def test_registered():
  from lm_eval.api.registry import get_model
  assert get_model("mambaswelu") is lm_eval_adapter.model_class()


def test_loglikelihood_equals_the_models_forward(run, lm):
  tok = run.tokenizer
  pairs = [("The cat sat on the", " mat"), ("def f(x):\n    return", " x + 1"),
           ("", "import os"), ("a " * 40, "b c d"), ("x", " y")]
  out = lm.loglikelihood([_req("loglikelihood", p, i) for i, p in enumerate(pairs)])
  for (ctx, cont), (logp, greedy) in zip(pairs, out):
    stripped = ctx.rstrip()       # lm-eval moves a context's trailing spaces to the continuation
    ctx, cont = stripped, ctx[len(stripped):] + cont
    if ctx:
      whole, c = tok.encode(ctx + cont), tok.encode(ctx)
      ids, n = [tok.eos_id] + whole, len(whole) - len(c)
    else:
      ids, n = [tok.eos_id] + tok.encode(cont), len(tok.encode(cont))
    ids = _fit(run, ids)
    want, want_greedy = _direct_logprob(run, ids, n)
    np.testing.assert_allclose(logp, want, rtol=2e-5, atol=2e-5)
    assert greedy == want_greedy
  # The order of the requests (and so the batches they share) does not change the numbers.
  again = lm.loglikelihood([_req("loglikelihood", p) for p in reversed(pairs)])
  np.testing.assert_allclose([x[0] for x in again[::-1]], [x[0] for x in out], rtol=2e-5)


def test_loglikelihood_rolling(run, lm):
  tok = run.tokenizer
  short = "print('hello')"
  ids = [tok.eos_id] + tok.encode(short)
  (got,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (short,))])
  np.testing.assert_allclose(got, _direct_logprob(run, ids, len(ids) - 1)[0], rtol=2e-5)
  # A text of 3+ training lengths (within the Transformer's positions): one piece, every
  # token seeing its whole past, on both runs.
  long = "def g(a, b, c):\n    return (a * b) - c / 2.0\n" * 6
  tokens = tok.encode(long)
  n = len(tokens)
  assert 2 * int(run.config.data.seq_len) < n < int(run.config.model.max_len)
  (whole,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (long,))])
  ids = [tok.eos_id] + tokens
  np.testing.assert_allclose(whole, _direct_logprob(run, ids, n)[0], rtol=2e-5)
  # Under an explicit cap: lm-eval's disjoint windows of `cap` predicted tokens (the first
  # after EOS, the others after the one token before them), counted.
  cap = 24
  capped = lm_eval_adapter.model_class()(run=run, batch_size=2, max_length=cap)
  (windowed,) = capped.loglikelihood_rolling([_req("loglikelihood_rolling", (long,))])
  starts = list(range(0, n, cap))
  want = sum(_direct_logprob(run, ([tok.eos_id] + tokens[:cap]) if s == 0 else tokens[s - 1:s + cap],
                             len(tokens[s:s + cap]))[0] for s in starts)
  np.testing.assert_allclose(windowed, want, rtol=2e-5)
  # Windows cut the context (a briefly trained model barely uses it: a small difference).
  assert windowed != pytest.approx(whole, rel=1e-9)
  assert capped.truncation[""] == {
      "max_length": cap, "limited_by": "max_length model_arg", "requests": 1, "truncated": 1,
      "tokens_cut": sum(starts), "continuation_tokens_cut": 0, "rolling_windows": len(starts)}


def _long_requests(tok, seq_len):
  """A context of ~1,900 tokens before a continuation of ~120, and a short context before a
  ~1,100-token continuation: both continuations are longer than the training length."""
  ctx_a = LONG_TEXT + "Now the caller"
  cont_a = " returns " + " and ".join(f"item {i}" for i in range(30))
  ctx_b = "Notes:"
  cont_b = " " + LONG_TEXT[:len(LONG_TEXT) * 5 // 8]
  out = []
  for ctx, cont in ((ctx_a, cont_a), (ctx_b, cont_b)):
    whole, c = tok.encode(ctx + cont), tok.encode(ctx)
    assert whole[:len(c)] == c
    n = len(whole) - len(c)
    assert n > seq_len
    out.append((ctx, cont, [tok.eos_id] + whole, n))
  return out


def test_long_requests_are_scored_whole_or_cut_and_counted(run, lm, caplog):
  """The MambaSWELU run scores a request of ~2,000 tokens (training length 32) exactly as
  one forward pass over all of it; the Transformer keeps the last model.max_len + 1 ids of
  a longer request, says so, and counts every token it cut."""
  tok = run.tokenizer
  seq_len = int(run.config.data.seq_len)
  reqs = _long_requests(tok, seq_len)
  model = lm_eval_adapter.model_class()(run=run, batch_size=4)
  with caplog.at_level("WARNING", logger="mambaswelu_jax.lm_eval_adapter"):
    out = model.loglikelihood([_req("loglikelihood", (ctx, cont), i)
                               for i, (ctx, cont, _, _) in enumerate(reqs)])
  cut = cont_cut = 0
  for (ctx, cont, ids, n), (logp, greedy) in zip(reqs, out):
    kept = _fit(run, ids)
    scored = min(n, len(kept) - 1)
    cut += len(ids) - len(kept)
    cont_cut += n - scored
    want, want_greedy = _direct_logprob(run, kept, scored)
    np.testing.assert_allclose(logp, want, rtol=2e-5, atol=2e-5)
    assert greedy == want_greedy
  counts = model.truncation[""]
  warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
  if _is_transformer(run):
    max_len = int(run.config.model.max_len)
    assert all(len(ids) > max_len + 1 for _, _, ids, _ in reqs) and cont_cut > 0
    assert counts == {"max_length": max_len, "limited_by": "model.max_len", "requests": 2,
                      "truncated": 2, "tokens_cut": cut, "continuation_tokens_cut": cont_cut,
                      "rolling_windows": 0}
    assert warned == [f"mambaswelu loglikelihood: 2 of 2 requests truncated at "
                      f"{max_len} tokens (model.max_len): {cut:,} tokens cut, {cont_cut:,} of "
                      f"them continuation tokens (not scored)"]
  else:   # nothing cut, nothing said
    assert run.max_length is None and model.max_length is None
    assert cut == 0 and counts["truncated"] == 0 and counts["requests"] == 2 and not warned
    # Past the longest single forward pass (shrunk here to 512 tokens) the same numbers
    # come through the recurrent state, piece after piece.
    pieces = scoring.score_sequences(run, [(ids[:-n], ids[-n:]) for _, _, ids, n in reqs],
                                      longest_forward=512)
    for (_, _, ids, _), (whole, greedy), (logp, want_greedy) in zip(reqs, out, pieces):
      assert len(ids) > 2 * 512
      np.testing.assert_allclose(logp, whole, rtol=1e-5, atol=1e-3)
      assert greedy == want_greedy
  # An explicit cap (the max_length model arg) cuts and counts on either run.
  cap = 64
  capped = lm_eval_adapter.model_class()(run=run, batch_size=4, max_length=cap)
  got = capped.loglikelihood([_req("loglikelihood", (ctx, cont)) for ctx, cont, _, _ in reqs])
  for (_, _, ids, n), (logp, _) in zip(reqs, got):
    np.testing.assert_allclose(logp, _direct_logprob(run, ids[-(cap + 1):], min(n, cap))[0],
                               rtol=2e-5, atol=2e-5)
  t = capped.truncation[""]
  assert (t["limited_by"], t["truncated"], t["tokens_cut"]) == (
      "max_length model_arg", 2, sum(len(ids) - (cap + 1) for _, _, ids, _ in reqs))
  assert t["continuation_tokens_cut"] == sum(n - cap for _, _, _, n in reqs)


def test_generate_until_is_greedy_recurrent_decoding(run, lm):
  g = sampling.Generator(run)
  ctxs = ["def main(", "import"]
  reqs = [_req("generate_until", (c, {"until": ["\n\n"], "max_gen_toks": 12}), i)
          for i, c in enumerate(ctxs)]
  outs = lm.generate_until(reqs)
  for c, o in zip(ctxs, outs):
    (ids,), _, _ = g.generate_ids([g.encode_prompt(c)], 12, temperature=0.0)
    want = run.tokenizer.decode(ids).split("\n\n")[0]
    assert o == want


def test_local_tasks_through_the_eval_command(workdir, run, tasks_dir, tmp_path):
  """`eval --benchmarks` runs lm-eval's simple_evaluate on the four local tasks and
  stores the metrics with their standard errors, the documents and what was truncated;
  accuracy and perplexity agree with our own forward pass; the printed report shows
  metrics (no lm-eval bookkeeping), the truncation warning and the real results file."""
  tasks = ["mini_lambada_openai", "mini_hellaswag", "mini_piqa", "mini_winogrande"]
  logged = []
  (result,) = evaluation.evaluate_run(workdir, "latest", splits=(), benchmarks=tasks,
                                      benchmark_tasks_dir=tasks_dir, benchmark_batch_size=4,
                                      output_dir=str(tmp_path), log=logged.append)
  path = tmp_path / f"{result['step']}.json"
  with open(path, encoding="utf-8") as f:
    res = json.load(f)["benchmarks"]
  assert set(res) == set(tasks)
  assert {"acc", "acc_stderr", "perplexity", "perplexity_stderr"} <= set(
      res["mini_lambada_openai"])
  assert {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr"} <= set(res["mini_hellaswag"])
  assert {"acc", "acc_norm"} <= set(res["mini_piqa"])
  for task, metrics in res.items():
    assert 0.0 <= metrics["acc"] <= 1.0 and metrics["acc_stderr"] >= 0.0
    assert "sample_len" not in metrics and "alias" not in metrics
    assert metrics["documents"] == {"mini_lambada_openai": 4, "mini_hellaswag": 2,
                                    "mini_piqa": 3, "mini_winogrande": 2}[task]
  # Truncation, exactly: only the long LAMBADA item is longer than the Transformer's
  # max_len; the MambaSWELU run reads it whole.
  tok = run.tokenizer
  n_ids = len([tok.eos_id] + tok.encode(LAMBADA[-1]["text"]))
  trunc = res["mini_lambada_openai"]["truncation"]
  assert trunc["requests"] == len(LAMBADA)
  if _is_transformer(run):
    max_len = int(run.config.model.max_len)
    assert n_ids > max_len + 1
    assert (trunc["truncated"], trunc["tokens_cut"], trunc["max_length"]) == (
        1, n_ids - (max_len + 1), max_len)
  else:
    assert (trunc["truncated"], trunc["tokens_cut"], trunc["max_length"]) == (0, 0, None)
  for task in ("mini_hellaswag", "mini_piqa", "mini_winogrande"):
    assert res[task]["truncation"]["truncated"] == 0
  # What the command prints: metrics with their stderr, a warning line for the cut
  # request, and the file the results are in.
  report = evaluation.format_report([result], str(tmp_path))
  assert "sample_len" not in report and "documents" in report
  piqa = res["mini_piqa"]
  assert f"acc {piqa['acc']:.4f} ± {piqa['acc_stderr']:.4f}" in report
  assert report.splitlines()[-1] == f"results: {path}" and path.exists()
  warning = [line for line in report.splitlines() if line.startswith("warning:")]
  logged_warning = [line for line in logged if line.startswith("warning:")]
  if _is_transformer(run):
    assert warning == logged_warning == [
        f"warning: step {result['step']} mini_lambada_openai: 1 of {len(LAMBADA)} requests "
        f"truncated at {max_len} tokens (model.max_len): {n_ids - (max_len + 1):,} tokens cut"]
  else:
    assert warning == logged_warning == []
  # PIQA accuracy recomputed from our own scores: argmax over " " + solution.
  tok = run.tokenizer
  hits = []
  for doc in PIQA:
    ctx = f"Question: {doc['goal']}\nAnswer:"
    scores = []
    for sol in (doc["sol1"], doc["sol2"]):
      whole, c = tok.encode(ctx + " " + sol), tok.encode(ctx)
      scores.append(_direct_logprob(run, _fit(run, [tok.eos_id] + whole), len(whole) - len(c))[0])
    hits.append(int(np.argmax(scores)) == doc["label"])
  assert res["mini_piqa"]["acc"] == pytest.approx(np.mean(hits))
  # LAMBADA perplexity = exp(-mean log p(last word)).
  lls = []
  for doc in LAMBADA:
    words = doc["text"].split(" ")
    ctx, cont = " ".join(words[:-1]), " " + words[-1]
    whole, c = tok.encode(ctx + cont), tok.encode(ctx)
    lls.append(_direct_logprob(run, _fit(run, [tok.eos_id] + whole), len(whole) - len(c))[0])
  assert res["mini_lambada_openai"]["perplexity"] == pytest.approx(math.exp(-np.mean(lls)),
                                                                   rel=1e-4)


@pytest.mark.slow
def test_lm_eval_command_line(workdir, tasks_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "mambaswelu_jax.cli.lm_eval", "--model", "mambaswelu",
         "--model_args", f"workdir={workdir},step=4", "--batch_size", "4",
         "--tasks", "mini_piqa,mini_lambada_openai", "--include_path", tasks_dir,
         "--output_path", str(tmp_path / "out")]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mini_piqa" in proc.stdout and "acc" in proc.stdout
