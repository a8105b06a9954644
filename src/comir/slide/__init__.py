"""Whole slides and whole scenes: lazy pyramid readers, pyramid writers, registration.

* :mod:`comir.slide.pyramid` — :func:`open_slide` → :class:`Slide` (pyramidal or plain
  TIFF, OME-TIFF, OME-Zarr): levels, pixel size, ``read_level`` / ``read_region``;
* :mod:`comir.slide.writer` — :func:`write_pyramid` (pyramidal OME-TIFF / OME-Zarr pulled
  band by band), :func:`warp_slide` (the moving slide in the fixed frame at full
  resolution, tile by tile), :func:`write_comir_slide`;
* :mod:`comir.slide.register` — :func:`register_slides` (working level, global fft, affine
  and deformable refinement on finer levels, transforms in full-resolution pixels).

See docs/slides.md.
"""

from comir.slide.pyramid import Level, Slide, check_levels, is_slide, ome_pixel_size, open_slide
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
