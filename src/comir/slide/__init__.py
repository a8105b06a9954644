"""Whole slides and whole scenes: lazy pyramid readers, pyramid writers, registration.

* :mod:`comir.slide.pyramid` — :func:`open_slide` → :class:`Slide` (pyramidal or plain
  TIFF, OME-TIFF, OME-Zarr): levels, pixel size, ``read_level`` / ``read_region``; the
  formats in :mod:`comir.slide.tiff` and :mod:`comir.slide.ngff`;
* :mod:`comir.slide.writer` — :func:`write_pyramid` (pyramidal OME-TIFF / OME-Zarr pulled
  band by band), :func:`warp_slide` (the moving slide in the fixed frame at full
  resolution, tile by tile), :func:`write_comir_slide`;
* :mod:`comir.slide.register` — :func:`register_slides` (working level, global fft,
  patch refinement on finer levels (:mod:`comir.slide.refine`), optional deformable stage,
  transforms in full-resolution pixels, files by :mod:`comir.slide.outputs`);
* :mod:`comir.slide.synth` — synthetic slide pairs with a known motion.

See docs/slides.md.
"""

from comir.slide.pyramid import Level, Slide, check_levels, is_slide, open_slide
from comir.slide.tiff import ome_pixel_size
from comir.slide.writer import level_shapes, warp_slide, write_comir_slide, write_pyramid

__all__ = [
    "Level",
    "Slide",
    "check_levels",
    "is_slide",
    "level_shapes",
    "ome_pixel_size",
    "open_slide",
    "warp_slide",
    "write_comir_slide",
    "write_pyramid",
]
