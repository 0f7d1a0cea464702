"""The original PyTorch project's model as it actually ran (for replication).

mamba-ssm was not installed there, so its "Mamba" blocks fell back to a gated depthwise
convolution; x_proj and dt_proj existed but were unused. GPT-2 vocabulary, learned
positions, LayerNorm, SWELU with a learnable k only (λ fixed at 1). This model has
exactly 124,104,719 parameters.

Every difference from the original is pinned here, not inherited from the study
defaults (which may change with the ablations): the head has no residual around the
dense stack, dropout 0.1 (training only), every Linear drawn from N(0, 0.02) with zero
biases, SWELU as (|z| + 1e-8)^k with k stored directly, bf16 matmuls (its autocast).
Given the same weights it computes the original's logits (tests/test_torch_replica.py);
`python -m mambaswelu_jax.cli.torch_checkpoint` moves weights between the two
(docs/torch-checkpoints.md).
"""

from configs import default


def get_config():
  config = default.get_config()
  m = config.model
  m.vocab_size = 50257
  m.mixer = "gated_conv"
  m.learned_positions = True
  m.max_len = 1024
  m.norm = "layernorm"
  m.activation = "swelu"
  m.swelu_learn_lambda = False
  m.dense_residual = False
  m.dropout = 0.1
  m.init = "normal"
  m.swelu_eps = 1e-8
  m.swelu_k_param = "direct"
  m.compute_dtype = "bfloat16"
  return config
