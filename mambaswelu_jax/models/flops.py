"""Analytic FLOPs per token of the MambaSWELU model (for tokens/s -> TFLOP/s and MFU).

Counts multiply-adds as 2 FLOPs and every elementwise op (exp included) as 1. Training
is forward + backward, taken as 3x the forward (the backward of a matmul is two
matmuls; the scan's backward recomputes the forward and runs the adjoint, also about
twice the forward).
"""

from mambaswelu_jax.models.mamba import dt_rank_of

# Per (channel, state) element and token: exp(dt*A) 2, dBu 1, a*h + b 2, h*C 2.
SCAN_FLOPS_PER_ELEMENT = 7


def transformer_flops_per_token(model_cfg, seq_len: int) -> dict:
  """The Transformer baseline: weight matmuls, attention over the causal context
  (QK^T and AV, 2 * 2 * d FLOPs per attended position and layer; a token attends to
  (seq_len + 1) / 2 positions on average in training) and elementwise work."""
  from mambaswelu_jax.models.transformer import mlp_hidden_of  # pylint: disable=import-outside-toplevel
  d, v, nl = model_cfg.d_model, model_cfg.vocab_size, model_cfg.n_layers
  h = mlp_hidden_of(model_cfg)
  swiglu = model_cfg.mlp == "swiglu"
  block_matmul = 4 * d * d + d * (2 * h if swiglu else h) + h * d
  matmul = 2 * (nl * block_matmul + d * v)
  context = (seq_len + 1) / 2
  attention = nl * 4 * d * context
  # softmax ~5 per score (h heads * context), activation ~8 per hidden unit, norms,
  # residuals and rotary ~20 per channel.
  elementwise = nl * (5 * model_cfg.n_heads * context + 8 * h + 20 * d)
  forward = matmul + attention + elementwise
  return {"matmul": matmul, "scan": 0, "attention": attention, "elementwise": elementwise,
          "forward": forward, "training": 3 * forward}


def flops_per_token(model_cfg, seq_len: int) -> dict:
  """{'matmul', 'scan', 'elementwise', 'forward', 'training'} FLOPs per token
  (the Transformer baseline adds 'attention')."""
  if model_cfg.architecture == "transformer":
    return transformer_flops_per_token(model_cfg, seq_len)
  del seq_len  # a recurrent model's per-token cost does not grow with the context
  d, h, v = model_cfg.d_model, model_cfg.dense_hidden, model_cfg.vocab_size
  di, n, k = model_cfg.expand * d, model_cfg.d_state, model_cfg.d_conv
  r = dt_rank_of(model_cfg)
  selective = model_cfg.mixer == "selective"
  block_matmul = d * 2 * di + di * d
  if selective:
    block_matmul += di * (r + 2 * n) + r * di
  matmul = 2 * (model_cfg.n_layers * block_matmul + d * h + h * h + h * d + d * v)
  scan = model_cfg.n_layers * SCAN_FLOPS_PER_ELEMENT * di * n if selective else 0
  # conv, activations, norms, gate, D skip: a few FLOPs per channel.
  per_block = 2 * k * di + 12 * di + 10 * d
  elementwise = model_cfg.n_layers * per_block + 8 * (2 * h + 2 * d)
  forward = matmul + scan + elementwise
  return {"matmul": matmul, "scan": scan, "elementwise": elementwise,
          "forward": forward, "training": 3 * forward}
