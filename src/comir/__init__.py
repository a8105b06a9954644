"""comir: Contrastive Multimodal Image Representations for multimodal image registration.

Pielawski, Wetzer et al., "CoMIR: Contrastive Multimodal Image Representation for
Registration", NeurIPS 2020.
"""

from __future__ import annotations

from comir.errors import ComirError

__version__ = "0.1.0"

__all__ = ["ComirError", "__version__", "load_model"]

# Heavy modules (torch) load on first use so that `import comir` stays light.
_LAZY = {"load_model": "comir.embed"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'comir' has no attribute {name!r}")
