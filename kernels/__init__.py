"""Selective-scan kernels: one public function, several implementations of one meaning."""

from kernels.scan import (DEFAULT_CHUNK_SIZE, IMPLEMENTATIONS, available_implementations,
                          selective_scan, selective_state_update)

__all__ = ["DEFAULT_CHUNK_SIZE", "IMPLEMENTATIONS", "available_implementations",
           "selective_scan", "selective_state_update"]
