"""The study's open questions: ablation configs differ from their base only where they
should; the L(N, D) fit recovers known parameters from synthetic data."""

import json

import numpy as np
import pytest

from configs import ablations
from mambaswelu_jax import config_validation as cv
from mambaswelu_jax.models import param_count


def resolved(arg):
  return cv.flatten(cv.resolve(ablations.get_config(arg)))


EXPECTED = {
    "silu": {"model.activation"},
    "fixed_k": {"model.swelu_learn_k"},
    "gated_conv": {"model.mixer"},
    "transformer": {"model.architecture", "model.n_heads", "model.mlp_hidden"},
}


@pytest.mark.parametrize("base", ablations.BASES)
@pytest.mark.parametrize("ablation", sorted(EXPECTED))
def test_ablation_differs_from_its_base_only_where_it_should(ablation, base):
  ref = resolved(f"none/{base}")
  got = resolved(f"{ablation}/{base}")
  assert set(ref) == set(got)
  changed = {k for k in ref if ref[k] != got[k]}
  # The transformer keeps the base width/depth when they match the budget; the set of
  # keys it may touch is fixed.
  allowed = EXPECTED[ablation] | ({"model.n_layers", "model.max_len"}
                                  if ablation == "transformer" else set())
  assert EXPECTED[ablation] - {"model.n_layers"} <= changed | {"model.mlp_hidden"}
  assert changed <= allowed, changed - allowed
  assert got["train.num_steps"] == ref["train.num_steps"]  # the same token budget
  for key in ("data.tokenizer_path", "data.source", "train.learning_rate", "seed"):
    assert got[key] == ref[key]


@pytest.mark.parametrize("scale", sorted(ablations.DATASET_PAIRS))
def test_dataset_pair_differs_only_in_its_data(scale):
  """The dataset-dependence question compares two bases that differ in the data alone
  (same model, tokenizer, token budget, optimiser)."""
  first, second = (resolved(f"none/{b}") for b in ablations.DATASET_PAIRS[scale])
  changed = {k for k in first if first[k] != second[k]}
  assert changed == ({"data.text_types"} if scale == "toy" else {"data.source"})
  assert first["train.num_steps"] == second["train.num_steps"]


def test_question_runs_are_unique_and_the_dataset_question_brings_its_first_arm():
  from study_lib import questions
  every = questions.specs("toy", seeds=(0, 1))
  assert len({s.name for s in every}) == len(every)
  only = questions.specs("full", ("dataset",), seeds=(0,))
  assert sorted(s.arg for s in only) == ["none/slimpajama_chinchilla", "none/wikipedia_chinchilla",
                                         "silu/slimpajama_chinchilla", "silu/wikipedia_chinchilla"]


def test_transformer_ablation_matches_the_base_parameter_count():
  base, t = ablations.get_config("none/toy"), ablations.get_config("transformer/toy")
  assert abs(param_count(t.model) / param_count(base.model) - 1) <= 0.05


def test_unknown_ablation_is_refused():
  with pytest.raises(ValueError, match="ABLATION"):
    ablations.get_config("relu")


def synthetic_surface(noise=0.0, seed=0):
  """Chinchilla-like truth on a 5 x 6 grid of (N, D)."""
  truth = dict(E=1.7, A=406.4, alpha=0.34, B=410.7, beta=0.28)
  rng = np.random.default_rng(seed)
  n = np.repeat(np.geomspace(1e6, 1e9, 5), 6)
  d = np.tile(np.geomspace(1e8, 1e11, 6), 5)
  loss = truth["E"] + truth["A"] * n ** -truth["alpha"] + truth["B"] * d ** -truth["beta"]
  return truth, n, d, loss + noise * rng.standard_normal(loss.shape)


def test_scaling_law_fit_recovers_known_parameters():
  from study_lib import scaling
  truth, n, d, loss = synthetic_surface()
  fit = scaling.fit_scaling_law(n, d, loss)
  for k in ("E", "alpha", "beta"):
    assert getattr(fit, k) == pytest.approx(truth[k], rel=2e-3), k
  for k in ("A", "B"):
    assert getattr(fit, k) == pytest.approx(truth[k], rel=2e-2), k
  assert fit.r2 > 0.999999 and not fit.at_bound


def test_scaling_law_bootstrap_intervals_cover_the_truth_under_noise():
  from study_lib import scaling
  truth, n, d, loss = synthetic_surface(noise=0.005, seed=3)
  boot = scaling.bootstrap_scaling_law(n, d, loss, resamples=30, grid=10, seed=1)
  for k in ("alpha", "beta", "E"):
    lo, hi = boot.ci[k]
    assert lo <= truth[k] <= hi, (k, lo, hi)
    assert hi - lo < 0.5 * truth[k], (k, lo, hi)
  # Two surfaces with different alpha: the difference's CI excludes zero.
  other = loss - truth["A"] * n ** -truth["alpha"] + truth["A"] * n ** -0.5
  boot2 = scaling.bootstrap_scaling_law(n, d, other, resamples=30, grid=10, seed=2)
  cmp = scaling.compare_exponents(boot, boot2, "alpha")
  assert cmp["excludes_zero"] and cmp["difference"] == pytest.approx(0.16, abs=0.05)


def test_sweep_is_a_geometric_ladder_with_matched_transformers():
  from configs import scaling_sweep
  for toy in ("/toy", ""):
    sizes = {}
    rungs = range(len(scaling_sweep.WIDTHS)) if toy else (0, len(scaling_sweep.WIDTHS) - 1)
    for arch in scaling_sweep.ARCHS:
      sizes[arch] = [param_count(scaling_sweep.get_config(f"{arch}/{r}{toy}").model)
                     for r in rungs]
    assert len(sizes["mamba"]) >= (4 if toy else 2)
    ratios = np.diff(np.log(sizes["mamba"]))
    assert np.all(ratios > np.log(1.3)), sizes  # strictly growing, roughly geometric
    np.testing.assert_allclose(sizes["transformer"], sizes["mamba"], rtol=0.05)
  assert scaling_sweep.get_config("mamba/1/toy/tpp=2").data.tokens_per_parameter == 2.0
  assert len(scaling_sweep.TOY_RATIOS) >= 2 and len(scaling_sweep.RATIOS) >= 2
  a = cv.flatten(cv.resolve(scaling_sweep.get_config("mamba/1/toy")))
  b = cv.flatten(cv.resolve(scaling_sweep.get_config("transformer/1/toy")))
  assert {k for k in a if a[k] != b[k]} <= {
      "model.architecture", "model.n_heads", "model.mlp_hidden", "model.n_layers",
      "train.num_steps", "eval.every_steps", "checkpoint.every_steps"}


def _fake_run(root, spec, num_params, losses, tokens_per_step=2048, seed=0):
  """A finished workdir with the files the report reads (config, metrics, final/)."""
  import json
  import os
  wd = os.path.join(root, spec.name)
  steps = len(losses) * 10
  os.makedirs(os.path.join(wd, "final", str(steps)))
  arch = "transformer" if "transformer" in spec.name else "mamba"
  cfg = {"seed": seed, "model": {"architecture": arch, "d_model": 16, "n_layers": 2},
         "train": {"global_batch_size": tokens_per_step // 128, "num_steps": steps},
         "data": {"seq_len": 128, "source": "embedded"}}
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump(cfg, f)
  with open(os.path.join(wd, "study_run.json"), "w") as f:
    json.dump({"num_params": int(num_params), "role": spec.role}, f)
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for i, v in enumerate(losses):
      step = 10 * (i + 1)
      f.write(json.dumps({"step": step, "tokens_seen": step * tokens_per_step,
                          "validation_loss": float(v)}) + "\n")


def test_questions_report_reads_ablations_and_fits_the_sweep(tmp_path):
  from study_lib import collect, questions
  specs = questions.specs("toy")
  rng = np.random.default_rng(0)
  effect = {"none": 0.0, "silu": 0.05, "fixed_k": 0.0, "gated_conv": 0.3, "transformer": -0.1,
            "original_head": 0.02, "fan_in_init": 0.01, "original_dropout": -0.02}
  effect_second = {"none": 0.5, "silu": 0.5 + 0.25}   # SiLU loses 0.2 more on the second set
  truth = dict(mamba=(2.0, 30.0, 0.4, 60.0, 0.3), transformer=(2.0, 30.0, 0.6, 60.0, 0.3))
  for s in specs:
    role = s.role.split(":")
    if role[0] in ("ablation", "dataset"):
      base = 4.0 + 0.01 * int(role[2]) ** 2
      jitter = 0.003 * (-1) ** int(role[2]) if role[1] == "silu" else 0.0
      shift = (effect if role[0] == "ablation" else effect_second)[role[1]]
      _fake_run(str(tmp_path), s, 1e5, [5.0, base + shift + jitter])
    else:
      e, a, al, b, be = truth[role[1]]
      n = 2e4 * 1.7 ** int(role[2])
      d = np.arange(1, 7) * 10 * 2048 * n / 2e4
      _fake_run(str(tmp_path), s, n, e + a * n ** -al + b * d ** -be
                + 0.001 * rng.standard_normal(6), tokens_per_step=int(2048 * n / 2e4))
  runs = collect.load_study(str(tmp_path), specs)
  assert len(runs) == len(specs)
  out = tmp_path / "report"
  path = questions.build_report(runs, str(out), resamples=10)
  text = open(path).read()
  answers = json.load(open(out / "answers.json"))
  assert answers["ablations"]["gated_conv"]["delta"] == pytest.approx(0.3)
  assert "base better" in answers["ablations"]["gated_conv"]["verdict"]
  assert "ablation better" in answers["ablations"]["transformer"]["verdict"]
  inter = answers["dataset"]["interaction"]
  assert inter["delta"] == pytest.approx(0.2) and inter["n"] == 3
  assert "larger on the second data set" in inter["verdict"]   # SiLU loses more there
  assert answers["dataset"]["toy_single"]["delta"] == pytest.approx(0.25, abs=0.003)  # ± jitter
  fits = answers["sweep"]["fits"]
  assert fits["mamba"]["alpha"] == pytest.approx(0.4, abs=0.1)
  assert fits["transformer"]["alpha"] == pytest.approx(0.6, abs=0.1)
  assert "Q5" in text and "Q1b" in text and "cannot" in text and "scaling_sweep.png" in text


@pytest.mark.slow
def test_toy_questions_end_to_end(tmp_path):
  """The real `run_study --questions=all` pipeline (detached runs, waves, report), with
  every run cut to a few steps; the full toy run is the committed docs/toy_questions."""
  import os
  import run_study  # pylint: disable=import-outside-toplevel
  from study_lib import questions, status as status_lib
  root, out = str(tmp_path / "q"), str(tmp_path / "report")
  code = run_study.main([f"--root={root}", f"--out={out}", "--poll=3", "--questions=all",
                         "--seeds=0", "--max_parallel=7",
                         "--override=--config.train.num_steps=6",
                         "--override=--config.train.warmup_steps=2",
                         "--override=--config.eval.every_steps=2"])
  assert code == 0
  for spec in questions.specs("toy", seeds=(0,)):
    st = status_lib.run_status(root, spec.name)
    assert st.state == "done", (spec.name, st.state, st.reason)
  text = open(os.path.join(out, "README.md")).read()
  for s in ("## 1. Runs", "Q1", "Q1b", "Q4", "Q5", "cannot"):
    assert s in text, s
