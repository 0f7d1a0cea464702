"""Loss -> perplexity and bits per byte: the one formula every tool reports with.

Standard library only, so the study tools that read workdirs stay free of JAX.
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)
# exp() of a loss above this overflows a float64: the perplexity is reported as exp(700).
MAX_LOG_PERPLEXITY = 700.0


def perplexity(loss: float) -> float:
  return math.exp(min(loss, MAX_LOG_PERPLEXITY))


def figures(nll: float, tokens: float, nbytes: float) -> dict:
  """{loss (nats/token), perplexity, bits_per_byte, tokens, bytes} of summed token
  negative log-likelihoods (NaN where a count is zero)."""
  loss = nll / tokens if tokens else float("nan")
  return {"loss": loss, "perplexity": perplexity(loss) if tokens else float("nan"),
          "bits_per_byte": nll / (LN2 * nbytes) if nbytes else float("nan"),
          "tokens": int(tokens), "bytes": int(nbytes)}
