"""Contrastive losses for CoMIR training."""

from __future__ import annotations

from comir.losses.infonce import (
    CRITICS,
    InfoNCELoss,
    activation_decay,
    gather_distributed,
    info_nce,
    info_nce_stats,
    similarity_matrix,
)

__all__ = [
    "CRITICS",
    "InfoNCELoss",
    "activation_decay",
    "gather_distributed",
    "info_nce",
    "info_nce_stats",
    "similarity_matrix",
]
