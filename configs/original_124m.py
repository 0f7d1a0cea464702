"""The original PyTorch project's model as it actually ran (for replication).

mamba-ssm was not installed there, so its "Mamba" blocks fell back to a gated depthwise
convolution; x_proj and dt_proj existed but were unused. GPT-2 vocabulary, learned
positions, LayerNorm, SWELU with a learnable k only (λ fixed at 1). This model has
exactly 124,104,719 parameters.
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
  return config
