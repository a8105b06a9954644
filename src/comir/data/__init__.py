"""Aligned training pairs: discovery, validation, normalisation and batched augmentation.

From files to batches of patches for CoMIR training (Pielawski, Wetzer et al., NeurIPS
2020; the data flow is drawn in ``docs/architecture.md``):

* :func:`find_pairs` (:mod:`comir.data.discovery`) matches the two modalities on disk in
  one of three layouts (:data:`LAYOUTS`): ``folders`` (``root/A/x.tif`` with
  ``root/B/x.tif``), ``suffix`` (``root/x_SHG.tif`` with ``root/x_BF.tif``) or
  ``channels`` (both modalities are channel ranges of one multichannel file, e.g. RGB and
  NIR of a 4-band satellite scene).
* :func:`load_pairs` (:mod:`comir.data.loading`) reads and validates every pair and
  normalises it once for the whole set; the resulting :class:`DataSpec` records how, so
  that validation images and new images at inference time are prepared identically
  (:meth:`DataSpec.prepare`). :func:`split_pairs` holds out a validation part.
* :class:`PatchStream` (:mod:`comir.data.streams`) produces an endless, seeded stream of
  augmented patch batches: the same random crop for both modalities, horizontal flip and
  rotation by a uniform angle in [-180°, 180°] done for the whole batch by one
  ``grid_sample`` call (:mod:`comir.data.augment`), then per-modality noise / blur /
  contrast changes (:func:`augment_batch`).

Arrays are channel-last ``(H, W, C)`` float32; tensors are ``(B, C, P, P)`` float32.
"""

from comir.data.augment import (
    AugmentConfig,
    augment_batch,
    gaussian_blur,
    rotate_crop,
    rotation_grid,
    sampling_matrices,
)
from comir.data.discovery import LAYOUTS, PairSpec, find_pairs
from comir.data.loading import SET_LEVEL_NORMS, DataSpec, PairSet, load_pairs, split_pairs
from comir.data.streams import PatchStream, fixed_batches, make_loader

__all__ = [
    "LAYOUTS",
    "SET_LEVEL_NORMS",
    "AugmentConfig",
    "DataSpec",
    "PairSet",
    "PairSpec",
    "PatchStream",
    "augment_batch",
    "find_pairs",
    "fixed_batches",
    "gaussian_blur",
    "load_pairs",
    "make_loader",
    "rotate_crop",
    "rotation_grid",
    "sampling_matrices",
    "split_pairs",
]
