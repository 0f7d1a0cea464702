"""Selective-scan kernels: one public function, several implementations of one meaning."""

from kernels.selective_scan import (DEFAULT_CHUNK_SIZE, IMPLEMENTATIONS, selective_scan,
                                    selective_state_update)

__all__ = ["DEFAULT_CHUNK_SIZE", "IMPLEMENTATIONS", "selective_scan",
           "selective_state_update"]
