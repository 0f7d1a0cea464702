"""The reference run config: every key a run config may set, with the study model's values.

`configs/default.py` (the user's study model) builds on it, and every run config starts
from that one. `config_validation` checks a run config's keys and types against this
module, so it ships with the package: an installed `mambaswelu_jax` validates configs
without a checkout. A new config key is added here.

A real selective-SSM MambaSWELU: 6 Mamba blocks + 3 dense SWELU layers, width 1024.
"""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.vocab_size = 50257          # must equal the tokenizer's vocabulary size
  m.d_model = 1024
  m.n_layers = 6                # Mamba blocks
  m.d_state = 16
  m.d_conv = 4
  m.expand = 2
  m.dt_rank = 0                 # 0 -> ceil(d_model / 16), as in the Mamba paper
  m.dt_min = 1e-3
  m.dt_max = 0.1
  m.dense_hidden = 2048         # three dense SWELU layers: d -> h -> h -> d
  m.mixer = "selective"         # selective | gated_conv (the original's as-run block)
  m.activation = "swelu"        # swelu | silu
  m.swelu_k_init = 1.0
  m.swelu_lambda_init = 1.0
  m.swelu_learn_lambda = True
  m.swelu_learn_k = True        # False: k stays at swelu_k_init (the fixed-k ablation)
  m.swelu_eps = 1e-8            # >0: the original's (|z|+eps)^k and its own slope; 0: |z|^k,
                                # slope for k < 1 capped at |z| = 1e-6 (models/swelu.py)
  m.swelu_k_param = "softplus"  # softplus (k kept > 0) | direct (k itself, as the original)
  # The head and training against the original's (docs/model-and-kernels.md, "Original
  # against this project"; the toy ablations, 3 seeds, 95% CIs, docs/toy_questions): a
  # residual around the dense stack (Q6: the original's head ends 0.94 nats worse
  # [0.68, 1.20]); no dropout (Q8: the original's 0.1 ends 0.018 worse [0.003, 0.033]);
  # N(0, 0.02) Linears as the original (Q7: the fan-in scheme ends 0.078 worse
  # [0.046, 0.109]).
  m.dense_residual = True       # logits of x + dense(x); False: dense(x), the original's
  m.dropout = 0.0               # >0: after the embeddings, on each block's branch, after
                                # the first two dense activations; training only
  m.init = "normal"             # normal: N(0, 0.02) Linears, zero biases (the original's) |
                                # fan_in: U(±1/sqrt(fan_in)), out_proj / sqrt(2 n_layers)
  m.norm = "layernorm"          # layernorm | rmsnorm
  m.norm_eps = 1e-5
  m.learned_positions = False   # a selective SSM needs none; the original had them
  m.max_len = 1024              # size of the learned position table when enabled
  m.scan_impl = "auto"          # auto | xla | reference | pallas_triton (= pallas) | pallas_mosaic
  m.scan_chunk = 16             # steps between the states the backward keeps
  m.compute_dtype = "bfloat16"  # matmuls; the scan, norms and SWELU stay in float32
  m.param_dtype = "float32"
  m.remat = False               # recompute each block's activations in the backward (less memory)
  # The architecture: the MambaSWELU model above, or a same-framework Transformer
  # baseline (models/transformer.py; it reads d_model, n_layers, vocab_size, norm,
  # norm_eps, learned_positions (else rotary), max_len (also its KV-cache length),
  # compute_dtype and param_dtype, plus the fields below).
  m.architecture = "mamba"      # mamba | transformer
  m.n_heads = 4                 # transformer: attention heads (d_model % n_heads == 0)
  m.mlp = "gelu"                # transformer: gelu | swiglu
  m.mlp_hidden = 0              # transformer: MLP width; 0 -> 4 d (gelu) or 8/3 d (swiglu)
  return m


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config()

  config.data = data_config(config.model)
  config.train = train_config()
  config.checkpoint = checkpoint_config()
  config.eval = eval_config()
  return config


def data_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`model`: its vocab_size is the data's (a reference: an override of one is both)."""
  c = ml_collections.ConfigDict()
  c.source = "embedded"      # embedded | slimpajama | wikipedia
  c.seq_len = 1024
  c.tokens_per_parameter = 20.0
  # Where the documents come from (mambaswelu_jax/data/sources.py).
  c.data_dir = ""            # slimpajama: the SlimPajama-627B copy; wikipedia: tfds data_dir
  c.wikipedia_config = "20230601.en"  # tfds wikipedia/<config>
  c.try_gcs = False          # wikipedia: read the prepared tfds copy from GCS
  c.validation_fraction = 0.02  # embedded / wikipedia: held out by a hash of the id
  c.test_fraction = 0.02
  c.text_types = ""          # "" all; "docstring" / "a,b": keep only these types (every split)
  c.smoke_sample = False     # slimpajama/wikipedia, data_dir "": read a small sample in the
                                       # real format written from the embedded corpus (set by :smoke)
  # Tokenizer: one per study; a run copies it into workdir/tokenizer.model.
  c.tokenizer_path = ""      # "" -> train one on the source's train split
  c.vocab_size = model.get_ref("vocab_size")  # size when training one
  c.tokenizer_sample_bytes = 8_000_000  # text sampled to train one (~seconds)
  # Training input pipeline (grain).
  c.num_workers = 0          # tokenizing worker processes; 0 = in-process
  c.worker_buffer_size = 16  # tokenized chunks queued per worker
  c.tokenize_chunk_docs = 8  # documents per worker task (fewer queue hops; same batches)
  c.pretokenized_dir = ""    # shards from `python -m mambaswelu_jax.cli.pretokenize`
  c.max_documents = 0        # on-the-fly: cap on train documents held in memory (0: all)
  c.max_text_bytes = 8 << 30  # on-the-fly: refuse larger splits (pre-tokenize them)
  return c


def train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.global_batch_size = 16  # sequences per optimizer step (all devices, all hosts)
  c.micro_batch_per_device = 4  # accumulation = global / (micro * devices)
  c.num_steps = 0           # 0 -> tokens_per_parameter * parameters / tokens per step
  c.learning_rate = 3e-4
  c.warmup_steps = 2000
  c.min_lr_ratio = 0.1      # cosine decays to learning_rate * min_lr_ratio
  c.weight_decay = 0.1      # AdamW, masked by models.weight_decay_mask
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.grad_clip_norm = 1.0    # global-norm clipping; 0 disables
  c.log_every_steps = 100
  c.init_from = ""          # a workdir (e.g. an imported original checkpoint): a run
                                       # with no checkpoint yet starts from its latest params
                                       # (fresh optimizer, step 0); "" -> random init
  c.stop_at_step = 0        # >0: checkpoint and stop there (resume later); schedule unchanged
  c.peak_tflops_per_device = 0.0  # 0 -> from the device kind (for MFU)
  c.data_streams = 0        # data streams making the global batch; 0 -> one per
                                       # process at the start (recorded resolved; a resume keeps it)
  # Non-finite steps (README "Fault tolerance"): a step whose loss, gradients or new
  # params are NaN/Inf is not applied (counted as skipped_updates); after this many in
  # a row the last good checkpoint is reloaded and the learning rate scaled.
  c.max_consecutive_nonfinite = 8  # 0: never reload (skip only)
  c.nonfinite_lr_factor = 0.5      # learning-rate scale applied at each reload
  c.max_nonfinite_reloads = 5      # then stop with exit status 4 (diverged)
  c.data_order_log = True   # DIR/data_order.jsonl: a hash of each step's batch
  # Out-of-memory pre-flight (mambaswelu_jax/training/memory_check.py): before step 1 the train
  # step is compiled and its memory compared with the device's; a step that does not fit
  # stops the run (exit status 2) naming the micro-batch (or model.remat) that fits.
  c.memory_check = True
  c.memory_limit_bytes = 0  # per device; 0: the device's own (CPU: host memory / devices)
  # JAX's persistent compilation cache, shared by runs and restarts (a requeued job skips
  # most of its compile); "" disables it. JAX_COMPILATION_CACHE_DIR, when set, wins.
  c.compilation_cache_dir = "~/.cache/mambaswelu_jax/jax_cache"
  return c


def checkpoint_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.every_steps = 5000  # full state (params, optimizer, data iterator)
  c.max_to_keep = 3     # full states kept (the newest)
  c.snapshot_every_steps = 5000  # params-only snapshots, kept forever; 0 -> none
  c.async_save = True
  c.allow_config_change = False  # resume a workdir written by another config
  c.on_write_error = "continue"  # continue | stop (exit status 3): a failed write
  return c


def eval_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.every_steps = 1000
  c.max_batches = 50          # per evaluation; 0 -> the whole validation split
  c.batch_per_device = 4
  c.sample_tokens = 0         # >0: print a sampled continuation at the end
  c.sample_prompt = ""
  c.sample_temperature = 0.8
  return c
