"""configs/original_124m.py against an independent PyTorch model of the original's
as-run architecture, and the checkpoint command (mambaswelu_jax/checkpointing/torch_format.py).

The PyTorch model below is written from the description of the original (a gated
depthwise causal conv per block with x_proj/dt_proj present but unused, SWELU
λ·sign(z)·(1 − exp(−(|z| + 1e-8)^k)), the head dense1 -> swelu1 -> dense2 -> swelu2 ->
dense3 -> swelu3 -> tied lm_head, dropout 0.1, N(0, 0.02) Linears); its state-dict
names are the ones the checkpoint command maps.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
from torch import nn  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position

from configs import original_124m  # pylint: disable=wrong-import-position
from mambaswelu_jax.checkpointing import torch_format as tc  # pylint: disable=wrong-import-position
from mambaswelu_jax.losses import token_nll  # pylint: disable=wrong-import-position
from mambaswelu_jax.models import build_model  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TorchSWELU(nn.Module):

  def __init__(self, learn_lambda=False):
    super().__init__()
    self.k = nn.Parameter(torch.tensor(1.0))
    if learn_lambda:
      self.lam = nn.Parameter(torch.tensor(1.0))
    self.learn_lambda = learn_lambda

  def forward(self, z):
    lam = self.lam if self.learn_lambda else 1.0
    return lam * torch.sign(z) * (1 - torch.exp(-torch.pow(torch.abs(z) + 1e-8, self.k)))


class TorchGatedConv(nn.Module):
  """The as-run block: in_proj -> (x, z); causal depthwise conv; SWELU; × sigmoid(z);
  out_proj. x_proj and dt_proj are parameters the forward never reads."""

  def __init__(self, d, d_state, d_conv, expand, learn_lambda):
    super().__init__()
    di = expand * d
    self.di = di
    self.in_proj = nn.Linear(d, 2 * di, bias=False)
    self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
    self.act = TorchSWELU(learn_lambda)
    self.x_proj = nn.Linear(di, d_state, bias=False)
    self.dt_proj = nn.Linear(di, di, bias=True)
    self.out_proj = nn.Linear(di, d, bias=False)

  def forward(self, h):
    length = h.shape[1]
    x, z = self.in_proj(h).split(self.di, dim=-1)
    x = self.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)
    return self.out_proj(self.act(x) * torch.sigmoid(z))


class TorchLayer(nn.Module):

  def __init__(self, d, d_state, d_conv, expand, dropout, learn_lambda):
    super().__init__()
    self.norm = nn.LayerNorm(d)
    self.mamba = TorchGatedConv(d, d_state, d_conv, expand, learn_lambda)
    self.act = TorchSWELU(learn_lambda)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    return x + self.drop(self.act(self.mamba(self.norm(x))))


class TorchMambaSWELU(nn.Module):

  def __init__(self, vocab, d, n_layers, d_state, d_conv, expand, hidden, max_len,
               dropout=0.1, learn_lambda=False):
    super().__init__()
    self.embedding = nn.Embedding(vocab, d)
    self.pos_embedding = nn.Embedding(max_len, d)
    self.drop = nn.Dropout(dropout)
    self.layers = nn.ModuleList([TorchLayer(d, d_state, d_conv, expand, dropout, learn_lambda)
                                 for _ in range(n_layers)])
    self.norm_f = nn.LayerNorm(d)
    self.dense1, self.swelu1 = nn.Linear(d, hidden), TorchSWELU(learn_lambda)
    self.dense2, self.swelu2 = nn.Linear(hidden, hidden), TorchSWELU(learn_lambda)
    self.dense3, self.swelu3 = nn.Linear(hidden, d), TorchSWELU(learn_lambda)
    self.lm_head = nn.Linear(d, vocab, bias=False)
    self.lm_head.weight = self.embedding.weight
    for module in self.modules():
      if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
          nn.init.zeros_(module.bias)
      elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)

  def forward(self, tokens):
    positions = torch.arange(tokens.shape[1])[None]
    x = self.drop(self.embedding(tokens) + self.pos_embedding(positions))
    for layer in self.layers:
      x = layer(x)
    x = self.norm_f(x)
    x = self.drop(self.swelu1(self.dense1(x)))
    x = self.drop(self.swelu2(self.dense2(x)))
    x = self.swelu3(self.dense3(x))
    return self.lm_head(x)


def small_config(**model):
  config = original_124m.get_config()
  config.model.update(vocab_size=101, d_model=32, n_layers=2, d_state=4, dense_hidden=48,
                      max_len=16, compute_dtype="float32")
  config.model.update(model)
  config.data.seq_len = 16
  return config


def torch_model(cfg, seed=0):
  torch.manual_seed(seed)
  model = TorchMambaSWELU(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.d_state,
                          cfg.d_conv, cfg.expand, cfg.dense_hidden, cfg.max_len,
                          learn_lambda=cfg.swelu_learn_lambda)
  with torch.no_grad():  # SWELU k >= 1 everywhere (the gradient comparison's domain)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
      if name.endswith(".k"):
        p.copy_(1.0 + 0.5 * torch.rand((), generator=g))
      elif name.endswith(".lam"):
        p.copy_(0.8 + 0.4 * torch.rand((), generator=g))
      elif name.endswith("bias") or name.endswith("norm.weight") or name.endswith("norm_f.weight"):
        p.add_(0.05 * torch.randn(p.shape, generator=g))
  return model.eval()


def jax_model_from(cfg, state_dict):
  flat = tc.params_from_state_dict(cfg, {k: v.detach().numpy() for k, v in state_dict.items()})
  model = build_model(cfg, nnx.Rngs(0))
  nnx.update(model, tc._params_tree(cfg, flat))  # pylint: disable=protected-access
  return model


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(config, batch=2, length=16, seed=0):
  """Relative errors {logits, loss, grad_max} of our model against the PyTorch one."""
  cfg = config.model
  tmodel = torch_model(cfg, seed)
  model = jax_model_from(cfg, tmodel.state_dict())
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (batch, length + 1))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  t_logits = tmodel(torch.from_numpy(inputs))
  t_loss = F.cross_entropy(t_logits.reshape(-1, cfg.vocab_size), torch.from_numpy(targets).reshape(-1))
  t_loss.backward()
  # x_proj and dt_proj are unused in the as-run block: no gradient (zero in ours).
  t_grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
             for n, p in tmodel.named_parameters()}

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p, rest)(jnp.asarray(inputs))
    return token_nll(logits, jnp.asarray(targets)).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  flat = {"/".join(str(p) for p in path): np.asarray(v.get_value())
          for path, v in nnx.to_flat_state(grads)}
  ours = tc.state_dict_from_params(cfg, flat)
  del ours["lm_head.weight"]  # tied: embedding.weight's gradient holds the head's too
  grad_errors = {k: (rel(ours[k], t_grads[k]) if np.any(t_grads[k]) else
                     float(np.abs(ours[k]).max())) for k in ours}
  keys = sorted(ours)
  every = rel(np.concatenate([ours[k].ravel() for k in keys]),
              np.concatenate([t_grads[k].ravel() for k in keys]))
  return {"logits": rel(logits, t_logits.detach().numpy()),
          "loss": abs(float(loss) - float(t_loss.detach())) / abs(float(t_loss.detach())),
          "grad_all": every, "grad_max": max(grad_errors.values()), "grads": grad_errors,
          "argmax": float(np.mean(np.argmax(logits, -1) == t_logits.argmax(-1).numpy()))}


def test_parameter_counts_agree():
  cfg = small_config().model
  tmodel = torch_model(cfg)
  from mambaswelu_jax.models import param_count
  assert sum(p.numel() for p in tmodel.parameters()) == param_count(cfg)


@pytest.mark.parametrize("learn_lambda", [False, True])
def test_small_original_equals_the_pytorch_model(learn_lambda):
  errors = compare(small_config(swelu_learn_lambda=learn_lambda))
  print(f"\nsmall (learn_lambda={learn_lambda}): logits {errors['logits']:.2e}, "
        f"loss {errors['loss']:.2e}, all gradients {errors['grad_all']:.2e}, worst "
        f"single tensor {errors['grad_max']:.2e}")
  assert errors["logits"] <= 1e-5
  assert errors["loss"] <= 1e-6
  assert errors["grad_all"] <= 1e-5
  # A SWELU k's gradient is one float32 sum over every activation, with cancellation.
  assert errors["grad_max"] <= 1e-3, sorted(errors["grads"].items(), key=lambda kv: -kv[1])[:3]
  assert errors["argmax"] == 1.0


@pytest.mark.slow
def test_124m_original_equals_the_pytorch_model():
  config = original_124m.get_config()
  config.model.compute_dtype = "float32"
  errors = compare(config, batch=1, length=64)
  print(f"\n124M: logits {errors['logits']:.2e}, loss {errors['loss']:.2e}, "
        f"all gradients {errors['grad_all']:.2e}, worst single tensor {errors['grad_max']:.2e}")
  assert errors["logits"] <= 1e-5
  assert errors["loss"] <= 1e-5
  assert errors["grad_all"] <= 1e-4
  assert errors["grad_max"] <= 1e-2


def test_dropout_is_training_only_and_at_the_originals_rate():
  config = small_config(dropout=0.1)
  tmodel = torch_model(config.model)
  model = jax_model_from(config.model, tmodel.state_dict())
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 101, (2, 16)))
  np.testing.assert_array_equal(model(tokens), model(tokens))
  emb = model._embed(tokens, jnp.arange(16)[None])  # pylint: disable=protected-access
  from mambaswelu_jax.models.layers import dropout
  dropped = dropout(jnp.ones((200, 200)), 0.1, jax.random.PRNGKey(0))
  assert abs(float((dropped == 0).mean()) - 0.1) < 0.01
  np.testing.assert_allclose(float(dropped.mean()), 1.0, atol=0.02)
  assert not np.allclose(model(tokens, dropout_key=jax.random.PRNGKey(1)), model(tokens))
  del emb


@pytest.mark.parametrize("k", [0.39, 0.7, 1.0, 1.6])
def test_swelu_slope_follows_the_originals_formula(k):
  """model.swelu_eps = 1e-8 (original_124m and the study): value and both derivatives
  are the original's, autograd of λ·sign(z)·(1 − exp(−(|z|+1e-8)^k)), including k < 1
  near z = 0 (finite thanks to the eps) and 0 at z = 0."""
  from mambaswelu_jax.models.swelu import swelu_eps
  z = np.array([0.0, 1e-12, -1e-9, 1e-8, -3e-7, 1e-6, 1e-4, -0.01, 0.5, -2.0, 7.0],
               np.float32)
  zt = torch.tensor(z, requires_grad=True)
  kt = torch.tensor(k, requires_grad=True)
  lt = torch.tensor(1.3, requires_grad=True)
  yt = lt * torch.sign(zt) * (1 - torch.exp(-torch.pow(torch.abs(zt) + 1e-8, kt)))
  dz, = torch.autograd.grad(yt.sum(), zt, retain_graph=True)
  dk, = torch.autograd.grad(yt.sum(), kt)
  f = lambda z_, k_: swelu_eps(z_, k_, jnp.float32(1.3), jnp.float32(1e-8)).sum()
  y = swelu_eps(jnp.asarray(z), jnp.float32(k), jnp.float32(1.3), jnp.float32(1e-8))
  gz = jax.grad(f)(jnp.asarray(z), jnp.float32(k))
  gk = jax.grad(f, argnums=1)(jnp.asarray(z), jnp.float32(k))
  np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gz, dz.numpy(), rtol=1e-5)
  np.testing.assert_allclose(float(gk), float(dk), rtol=1e-4)
  assert np.all(np.isfinite(gz)) and float(gz[0]) == 0.0


# ----------------------------------------------------------------------------
# The command.
# ----------------------------------------------------------------------------


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "mambaswelu_jax.cli.torch_checkpoint", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def small_original(tmp_path_factory):
  """A small original config file and a PyTorch checkpoint of it (with optimizer state
  beside the state dict, as the original's model_step_N.pt)."""
  root = tmp_path_factory.mktemp("orig")
  config_file = root / "small_original.py"
  config_file.write_text(
      "from configs import original_124m\n\n\ndef get_config():\n"
      "  config = original_124m.get_config()\n"
      "  config.model.update(vocab_size=1024, d_model=32, n_layers=2, d_state=4,\n"
      "                      dense_hidden=48, max_len=64, compute_dtype='float32')\n"
      "  config.data.seq_len = 64\n  config.train.warmup_steps = 1\n"
      "  config.train.global_batch_size = 4\n  config.train.micro_batch_per_device = 4\n"
      "  config.train.num_steps = 4\n  return config\n")
  import importlib.util
  spec = importlib.util.spec_from_file_location("small_original", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config().model
  tmodel = torch_model(cfg, seed=3)
  opt = torch.optim.AdamW(tmodel.parameters())
  ckpt = root / "model_step_1200.pt"
  torch.save({"model_state_dict": tmodel.state_dict(), "optimizer_state_dict": opt.state_dict(),
              "step": 1200}, ckpt)
  return {"root": root, "config": str(config_file), "ckpt": str(ckpt), "model": tmodel}


def import_small_original(small_original, small_tokenizer, tmp_path):
  """The small original's checkpoint imported into tmp_path/imported (its workdir)."""
  tokenizer = tmp_path / "tok.model"
  tokenizer.write_bytes(small_tokenizer._proto)  # pylint: disable=protected-access
  workdir = tmp_path / "imported"
  r = run_cli("import", f"--checkpoint={small_original['ckpt']}",
              f"--config={small_original['config']}", f"--workdir={workdir}",
              f"--tokenizer={tokenizer}")
  assert r.returncode == 0, r.stderr
  return workdir


def test_import_then_export_is_bit_exact_and_the_original_class_loads_it(
    small_original, small_tokenizer, tmp_path):
  workdir = import_small_original(small_original, small_tokenizer, tmp_path)
  assert os.listdir(workdir / "final") == ["1200"]
  out, st = tmp_path / "back.pt", tmp_path / "back.safetensors"
  r = run_cli("export", f"--workdir={workdir}", f"--out={out}", f"--safetensors={st}")
  assert r.returncode == 0, r.stderr
  original = small_original["model"].state_dict()
  back = torch.load(out, weights_only=True)
  from safetensors.torch import load_file
  back_st = load_file(st)
  assert set(back) == set(original) == set(back_st)
  for key, value in original.items():
    assert torch.equal(back[key], value), key
    assert torch.equal(back_st[key], value), key
  cfg = tc.load_config_file(small_original["config"], []).model
  fresh = TorchMambaSWELU(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.d_state,
                          cfg.d_conv, cfg.expand, cfg.dense_hidden, cfg.max_len)
  fresh.load_state_dict(back_st)  # strict: every key
  fresh.load_state_dict(back)

  # The imported workdir restores like any run: the eval tool's loss and generation.
  from mambaswelu_jax.checkpointing import restore
  run = restore.load_run(str(workdir))
  tokens = np.random.default_rng(0).integers(0, 1024, (1, 20))
  with torch.no_grad():
    expect = small_original["model"](torch.from_numpy(tokens)).numpy()
  assert rel(run.logits(jnp.asarray(tokens)), expect) <= 1e-5
  r = subprocess.run([sys.executable, "-m", "mambaswelu_jax.cli.generate", f"--workdir={workdir}",
                      "--prompt=def ", "--max_new_tokens=4"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr


def _corrupt(small_original, tmp_path, mutate, name="bad.pt"):
  sd = {k: v.clone() for k, v in small_original["model"].state_dict().items()}
  mutate(sd)
  path = tmp_path / name
  torch.save(sd, path)
  return str(path)


@pytest.mark.parametrize("case,needle", [
    ("not_a_checkpoint", "is not a PyTorch checkpoint"),
    ("missing", "'layers.1.act.k' is missing"),
    ("extra", "'layers.0.mamba.act.lam' is not part"),
    ("shape", "'dense2.weight' has shape (40, 48)"),
    ("untied", "'lm_head.weight' differs"),
    ("no_state_dict", "holds no state dict"),
])
def test_import_errors_are_one_line_exit_2_nothing_written(small_original, tmp_path, case,
                                                            needle):
  if case == "not_a_checkpoint":
    path = tmp_path / "x.pt"
    path.write_text("hello")
    path = str(path)
  elif case == "missing":
    path = _corrupt(small_original, tmp_path, lambda sd: sd.pop("layers.1.act.k"))
  elif case == "extra":
    path = _corrupt(small_original, tmp_path,
                    lambda sd: sd.__setitem__("layers.0.mamba.act.lam", torch.tensor(1.0)))
  elif case == "shape":
    path = _corrupt(small_original, tmp_path,
                    lambda sd: sd.__setitem__("dense2.weight", torch.zeros(40, 48)))
  elif case == "untied":
    path = _corrupt(small_original, tmp_path,
                    lambda sd: sd.__setitem__("lm_head.weight", sd["lm_head.weight"] + 1))
  else:
    path = str(tmp_path / "opt.pt")
    torch.save({"optimizer_state_dict": {"lr": 1.0}}, path)
  workdir = tmp_path / "w"
  before = sorted(os.listdir(tmp_path))
  r = run_cli("import", f"--checkpoint={path}", f"--config={small_original['config']}",
              f"--workdir={workdir}")
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], r.stderr
  assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_export_errors_are_one_line_exit_2(tmp_path):
  r = run_cli("export", f"--workdir={tmp_path / 'none'}", f"--out={tmp_path / 'x.pt'}")
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "not a run's workdir" in r.stderr and not os.path.exists(tmp_path / "x.pt")


def test_trainer_starts_from_an_imported_checkpoint(small_original, small_tokenizer, tmp_path):
  """train.init_from: a new run (here a fine-tune, with a learning rate too small to
  move anything) starts from the imported weights."""
  imported = import_small_original(small_original, small_tokenizer, tmp_path)
  from mambaswelu_jax.checkpointing import restore
  from mambaswelu_jax.training import train
  config = tc.load_config_file(small_original["config"], [])
  config.data.tokenizer_path = str(tmp_path / "tok.model")
  config.train.update(num_steps=1, warmup_steps=0, learning_rate=1e-12, init_from=str(imported),
                      memory_check=False)
  config.eval.update(every_steps=0, max_batches=1, batch_per_device=2)
  config.checkpoint.update(every_steps=1, snapshot_every_steps=0, async_save=False)
  tuned = tmp_path / "tuned"
  train.train_and_evaluate(config, str(tuned))
  before = restore.load_run(str(imported)).params
  after = restore.load_run(str(tuned)).params
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_allclose(a, b, atol=1e-8)
