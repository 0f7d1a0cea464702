"""Selective-scan kernels: one public function, several implementations of one meaning."""

from kernels.scan import (DEFAULT_CHUNK_SIZE, IMPLEMENTATIONS, available_implementations,
                          selective_scan, selective_state_update)

__all__ = ["DEFAULT_CHUNK_SIZE", "IMPLEMENTATIONS", "available_implementations",
           "selective_scan",
           "selective_state_update"]

try:  # Pallas ships with jax; a build without it still has reference and xla.
  from kernels import pallas_scan as _pallas_scan
  from kernels import scan as _scan
  _scan._PALLAS_SCAN = _pallas_scan.pallas_selective_scan
except ImportError:  # pragma: no cover
  pass
