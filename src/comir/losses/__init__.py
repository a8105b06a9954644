"""Contrastive losses for CoMIR training.

The names of the critics (:data:`CRITICS`) and the default temperature
(:data:`DEFAULT_TAU`) are defined here, importable without torch (the CLI builds its
``choices=`` from them); the loss functions live in :mod:`comir.losses.infonce` and load on
first access.
"""

from __future__ import annotations

#: Critics of :func:`comir.losses.infonce.similarity_matrix` (definitions there).
CRITICS = ("mse", "cosine", "l1", "euclidean")

#: InfoNCE temperature of ``comir train`` and :class:`~comir.losses.infonce.InfoNCELoss`.
#: The CoMIR paper (Pielawski, Wetzer et al., NeurIPS 2020) used 0.5 for BF/SHG and 0.1 for
#: RGB/NIR; 0.5 is the default because it registered better on RGB/NIR in this project's
#: measurement (held-out Sentinel-2 scene, FFT success 0.83 vs 0.52 with 0.1; see
#: docs/reproduce.md, "τ and the activation decay").
DEFAULT_TAU = 0.5

__all__ = [
    "CRITICS",
    "DEFAULT_TAU",
    "InfoNCELoss",
    "activation_decay",
    "gather_distributed",
    "info_nce",
    "info_nce_stats",
    "similarity_matrix",
]

_LAZY = frozenset(__all__) - {"CRITICS", "DEFAULT_TAU"}


def __getattr__(name: str):
    if name in _LAZY:
        from comir.losses import infonce

        return getattr(infonce, name)
    raise AttributeError(f"module 'comir.losses' has no attribute {name!r}")
