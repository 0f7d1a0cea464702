"""Selective-scan kernels: one public function, several implementations of one meaning."""

from kernels.scan import (DEFAULT_CHUNK_SIZE, IMPLEMENTATIONS, available_implementations,
                          selective_scan, selective_state_update)

__all__ = ["DEFAULT_CHUNK_SIZE", "IMPLEMENTATIONS", "available_implementations",
           "selective_scan",
           "selective_state_update"]

from kernels import scan as _scan

# Pallas ships with jax, but its Triton backend is deprecated (JAX 0.11) and will be
# removed: a build without it still has reference and xla, and `auto` falls back to xla.
try:
  from kernels import pallas_scan as _pallas_scan
  _scan._KERNELS["pallas_triton"] = _pallas_scan.pallas_selective_scan
except ImportError as e:  # pragma: no cover
  _scan._KERNEL_IMPORT_ERRORS["pallas_triton"] = f"{type(e).__name__}: {e}"

try:
  from kernels import pallas_mosaic_scan as _pallas_mosaic_scan
  _scan._KERNELS["pallas_mosaic"] = _pallas_mosaic_scan.mosaic_selective_scan
except ImportError as e:  # pragma: no cover
  _scan._KERNEL_IMPORT_ERRORS["pallas_mosaic"] = f"{type(e).__name__}: {e}"
