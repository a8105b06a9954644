"""comir: Contrastive Multimodal Image Representations for multimodal image registration.

Pielawski, Wetzer et al., "CoMIR: Contrastive Multimodal Image Representation for
Registration", NeurIPS 2020.
"""

from __future__ import annotations

from comir.errors import ComirError

__version__ = "0.1.0"

__all__ = ["ComirError", "__version__"]
