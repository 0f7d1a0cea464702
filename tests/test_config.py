"""Run configs and config validation: every error names its key and the fix,
before anything compiles."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import default, demo, slimpajama_chinchilla, slimpajama_llama, wikipedia_llama
from mambaswelu_jax.checkpointing import run_config
from mambaswelu_jax import config_validation as cv
from mambaswelu_jax.config_validation import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIGS = {"slimpajama_llama": slimpajama_llama, "slimpajama_chinchilla": slimpajama_chinchilla,
               "wikipedia_llama": wikipedia_llama}


def _demo():
  return demo.get_config("tiny")


# --- the shipped configs ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(RUN_CONFIGS))
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_run_configs_resolve(name, arg):
  config = RUN_CONFIGS[name].get_config(arg)
  resolved = cv.resolve(config, num_devices=1)
  assert resolved.train.num_steps > 0
  assert resolved.data.source == ("wikipedia" if name.startswith("wikipedia") else "slimpajama")
  if arg == "smoke":  # the shrink keeps the data source and the code paths
    assert resolved.train.num_steps == 20
    assert resolved.train.global_batch_size // resolved.train.micro_batch_per_device == 2
  else:
    tpp = {"slimpajama_llama": 100, "slimpajama_chinchilla": 20, "wikipedia_llama": 100}[name]
    assert resolved.data.tokens_per_parameter == tpp
    assert resolved.train.global_batch_size * resolved.data.seq_len == 16384


def test_default_hyperparameters():
  c = default.get_config()
  assert (c.data.seq_len, c.train.global_batch_size, c.train.micro_batch_per_device) == (1024, 16, 4)
  assert (c.train.learning_rate, c.train.weight_decay, c.train.warmup_steps) == (3e-4, 0.1, 2000)
  assert (c.train.grad_clip_norm, c.model.compute_dtype, c.model.param_dtype) == (
      1.0, "bfloat16", "float32")
  assert (c.checkpoint.every_steps, c.eval.every_steps, c.train.log_every_steps) == (5000, 1000, 100)


def test_steps_from_tokens_per_parameter():
  """The original's 124,104,719 parameters give its 757,500 and 151,500 steps (rounded)."""
  n = 124_104_719
  llama, chin = slimpajama_llama.get_config(), slimpajama_chinchilla.get_config()
  assert cv.derived_num_steps(llama, num_params=n) == round(100 * n / 16384) == 757_475
  assert cv.derived_num_steps(chin, num_params=n) == round(20 * n / 16384) == 151_495
  assert abs(cv.derived_num_steps(llama, num_params=n) - 757_500) < 50
  assert abs(cv.derived_num_steps(chin, num_params=n) - 151_500) < 10


def test_original_124m_parameter_count_without_allocating():
  from configs import original_124m
  from mambaswelu_jax.models.registry import param_count
  assert param_count(original_124m.get_config().model) == 124_104_719


def test_num_steps_override_is_kept():
  c = slimpajama_chinchilla.get_config()
  c.train.num_steps = 12345
  assert cv.resolve(c).train.num_steps == 12345


def test_resolved_config_is_locked():
  r = cv.resolve(_demo())
  with pytest.raises(AttributeError):
    r.train.new_key = 1


def test_config_arguments():
  with pytest.raises(ValueError, match="smoke"):
    slimpajama_llama.get_config("smal")
  with pytest.raises(ValueError, match="tiny"):
    demo.get_config("smoke")


# --- unknown keys and wrong types --------------------------------------------


def test_unknown_key_in_file_names_the_near_key():
  c = _demo()
  c.train.learning_rat = 1e-3
  with pytest.raises(ConfigError, match=r"unknown config key 'train.learning_rat'.*"
                     r"Did you mean 'train.learning_rate'"):
    cv.resolve(c)


def test_unknown_block():
  c = _demo()
  c.optimizer = ml_collections.ConfigDict({"lr": 1.0})
  with pytest.raises(ConfigError, match="unknown config key 'optimizer.lr'"):
    cv.resolve(c)


def test_wrong_type_names_key_and_type():
  d = _demo().to_dict()
  d["train"]["num_steps"] = "100"
  with pytest.raises(ConfigError, match=r"'train.num_steps' has type str.*expected int"):
    cv.resolve(ml_collections.ConfigDict(d))
  d = _demo().to_dict()
  d["checkpoint"]["async_save"] = 1
  with pytest.raises(ConfigError, match=r"'checkpoint.async_save' has type int.*expected bool"):
    cv.resolve(ml_collections.ConfigDict(d))


def test_int_for_float_is_fine():
  c = _demo().to_dict()
  c["train"]["learning_rate"] = 1
  cv.check_structure(ml_collections.ConfigDict(c))


def test_ml_collections_refuses_wrong_type_on_assignment():
  c = _demo()
  with pytest.raises(TypeError):
    c.train.num_steps = "ten"


def test_missing_key():
  d = _demo().to_dict()
  del d["eval"]["max_batches"]
  with pytest.raises(ConfigError, match="'eval.max_batches' is missing"):
    cv.resolve(ml_collections.ConfigDict(d))


# --- values ---------------------------------------------------------------------


@pytest.mark.parametrize("key,value,needle", [
    ("train.learning_rate", 0.0, "must be > 0"),
    ("train.warmup_steps", 8, "warmup must end before train.num_steps = 8"),
    ("train.min_lr_ratio", 2.0, r"\[0, 1\]"),
    ("train.b2", 1.0, r"\[0, 1\)"),
    ("train.log_every_steps", 0, "must be > 0"),
    ("checkpoint.every_steps", 0, "must be > 0"),
    ("checkpoint.max_to_keep", 0, "keep at least 1"),
    ("eval.batch_per_device", 0, "must be > 0"),
    ("data.seq_len", 0, "must be > 0"),
    ("model.compute_dtype", "fp8", r"choose one of \['bfloat16', 'float32', 'float16'\]"),
    ("model.scan_impl", "cuda", "choose one of"),
    ("model.d_model", 0, "must be > 0"),
    ("train.nonfinite_lr_factor", 0.0, r"\(0, 1\]"),
    ("train.max_consecutive_nonfinite", -1, "must be >= 0"),
    ("checkpoint.on_write_error", "retry", r"choose one of \['continue', 'stop'\]"),
])
def test_bad_values_name_the_key(key, value, needle):
  c = _demo()
  block, field = key.split(".")
  c[block][field] = value
  with pytest.raises(ConfigError, match=rf"'{key}' = .*{needle}.*--config\.{key}="):
    cv.resolve(c)


# --- the batch split -----------------------------------------------------------


def test_accumulation_from_the_split():
  c = default.get_config()
  assert cv.check_batch(c, 1) == 4
  assert cv.check_batch(c, 2) == 2
  assert cv.check_batch(c, 4) == 1


def test_indivisible_micro_batch():
  c = _demo()
  c.train.global_batch_size, c.train.micro_batch_per_device = 16, 3
  with pytest.raises(ConfigError, match=r"'train.global_batch_size' = 16 cannot be split into "
                     r"micro-batches of train.micro_batch_per_device = 3 on 2 device.*"
                     r"micro_batch_per_device in \[1, 2, 4, 8\]"):
    cv.resolve(c, num_devices=2)


def test_global_batch_not_divisible_by_devices():
  c = _demo()
  c.train.global_batch_size, c.train.micro_batch_per_device = 6, 1
  with pytest.raises(ConfigError, match=r"multiple of 4 \(the device count\)"):
    cv.resolve(c, num_devices=4)


def test_global_batch_not_divisible_by_processes():
  c = _demo()
  c.train.global_batch_size, c.train.micro_batch_per_device = 3, 1
  with pytest.raises(ConfigError, match="processes"):
    cv.check_batch(c, num_devices=1, process_count=2)


# --- workdir config records ----------------------------------------------------


def test_workdir_refuses_another_config(tmp_path):
  c = cv.resolve(_demo())
  assert not run_config.check_config(str(tmp_path), c)
  assert not (tmp_path / "config.json").exists()  # checking writes nothing
  run_config.record_config(str(tmp_path), c, step=0)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["num_steps"] == c.train.num_steps
  assert run_config.check_config(str(tmp_path), c)  # same config: fine
  other = _demo()
  other.train.learning_rate = 1e-2
  with pytest.raises(run_config.WorkdirConfigMismatch,
                     match=r"(?s)train.learning_rate: 0.003 -> 0.01.*--config.checkpoint."
                           r"allow_config_change=True"):
    run_config.check_config(str(tmp_path), cv.resolve(other))
  # Logging, evaluation, checkpoint cadence and the micro-batch may change on resume.
  ok = _demo()
  ok.train.log_every_steps, ok.eval.every_steps, ok.train.micro_batch_per_device = 1, 1, 1
  ok.checkpoint.every_steps = 1
  assert run_config.check_config(str(tmp_path), cv.resolve(ok))
  other.checkpoint.allow_config_change = True
  assert run_config.check_config(str(tmp_path), cv.resolve(other))
  # An accepted change is recorded beside the old config, not over it.
  old_text = (tmp_path / "config.json").read_text()
  run_config.record_config(str(tmp_path), cv.resolve(other), step=5)
  assert json.loads((tmp_path / "config.json").read_text())["train"]["learning_rate"] == 0.01
  kept = list((tmp_path / "config_history").iterdir())
  assert len(kept) == 1 and kept[0].name.startswith("config.until_step_5.")
  assert kept[0].read_text() == old_text
  run_config.record_config(str(tmp_path), cv.resolve(other), step=6)  # unchanged: no copy
  assert len(list((tmp_path / "config_history").iterdir())) == 1


def test_checkpoints_without_config_refused(tmp_path):
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  with pytest.raises(run_config.WorkdirConfigMismatch, match="no config.json"):
    run_config.check_config(str(tmp_path), cv.resolve(_demo()))


# --- the command line -----------------------------------------------------------


def _main(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "mambaswelu_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_errors_before_compiling(tmp_path):
  w = str(tmp_path / "w")
  r = _main("--config=configs/demo.py:tiny", f"--workdir={w}", "--config.train.learning_rat=1")
  assert r.returncode != 0 and "learning_rat" in r.stderr
  r = _main("--config=configs/demo.py:tiny", f"--workdir={w}", "--config.train.num_steps=ten")
  assert r.returncode != 0 and "num_steps" in r.stderr
  r = _main("--config=configs/demo.py:tiny", f"--workdir={w}",
            "--config.train.micro_batch_per_device=3")
  assert r.returncode == 2, r.stderr[-2000:]
  assert "train.global_batch_size" in r.stderr and "micro_batch_per_device in" in r.stderr
  # Missing data: the source says so (a DataError), exit status 2, nothing compiled.
  r = _main("--config=configs/slimpajama_chinchilla.py:smoke", f"--workdir={w}2",
            f"--config.data.data_dir={tmp_path / 'nothing'}")
  assert r.returncode == 2, r.stderr[-2000:]
  assert "error:" in r.stderr and "first step" not in r.stderr


def test_data_streams_must_fit_processes_and_batch():
  c = _demo()
  c.train.data_streams = 3
  with pytest.raises(ConfigError, match=r"'train.data_streams' = 3 .*use one of \[2, 4, 8\]"):
    cv.check_batch(c, num_devices=2, process_count=2)
  c.train.data_streams = 4
  assert cv.check_batch(c, num_devices=2, process_count=2) == 2


def test_missing_data_names_the_key(tmp_path):
  """A tokenizer file or a data directory that is not there: an error naming the key,
  before the model is built."""
  from mambaswelu_jax.training import train
  from mambaswelu_jax.data.sources import DataError
  c = _demo()
  c.data.tokenizer_path = str(tmp_path / "missing.model")
  with pytest.raises(DataError, match="data.tokenizer_path"):
    train.train_and_evaluate(c, str(tmp_path / "a"))
  c = _demo()
  c.data.source = "slimpajama"
  c.data.data_dir = str(tmp_path / "nothing")
  with pytest.raises(DataError, match="data.data_dir"):
    train.train_and_evaluate(c, str(tmp_path / "b"))


def test_a_config_recorded_before_a_key_existed_reads_as_it_ran(tmp_path):
  """A workdir's config.json written before model.dense_residual, model.init,
  model.dropout, ... existed is completed with the values those runs computed with (a
  residual head, fan-in init, no dropout), not today's defaults; any other missing key
  gets its default. Resuming it with today's study defaults is refused, naming the
  change."""
  from configs import demo  # pylint: disable=import-outside-toplevel
  recorded = cv.resolve(demo.get_config("tiny")).to_dict()
  for key in ("dense_residual", "init", "dropout", "swelu_eps", "swelu_k_param"):
    del recorded["model"][key]
  del recorded["train"]["compilation_cache_dir"]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  loaded = run_config.load_config(str(tmp_path))
  assert loaded.model.dense_residual is True and loaded.model.init == "fan_in"
  assert loaded.model.dropout == 0.0 and loaded.model.swelu_eps == 0.0
  assert loaded.train.compilation_cache_dir == cv.reference_config().train.compilation_cache_dir
  cv.check_structure(loaded)  # every key, nothing unknown
  today = demo.get_config("tiny")
  today.model.dense_residual = False
  with pytest.raises(run_config.WorkdirConfigMismatch, match="model.dense_residual: True -> False"):
    run_config.check_config(str(tmp_path), cv.resolve(today))
