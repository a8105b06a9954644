"""The bundled samples (:mod:`comir.samples`) as napari sample data.

Each sample opens as two layers, modality A and modality B, in the stored dtype (the
shipped ``sample:<name>`` models normalise raw pixels themselves), with contrast limits
at the 1st and 99.5th percentiles so that the dim 13-bit Sentinel-2 reflectances show.
"""

from __future__ import annotations

import numpy as np

#: Layer names of the two modalities of each sample.
NAMES = {
    "sentinel2": ("sentinel2 RGB (A)", "sentinel2 NIR (B)"),
    "ihc": ("ihc haematoxylin (A)", "ihc DAB (B)"),
}


def sample_layers(name: str) -> list[tuple]:
    """napari layer data ``[(a, meta, "image"), (b, meta, "image")]`` of sample ``name``."""
    from comir import samples

    s = samples.sample(name)
    names = NAMES.get(name, (f"{name} A", f"{name} B"))
    out = []
    for key, label, cmap in (("a", names[0], "gray"), ("b", names[1], "gray")):
        img = s[key][..., 0] if s[key].shape[2] == 1 else s[key]
        lo, hi = np.percentile(img, (1.0, 99.5))
        meta = {"name": label, "contrast_limits": (float(lo), float(max(hi, lo + 1)))}
        if img.ndim == 3 and img.shape[2] == 3:
            meta["rgb"] = True
        else:
            meta["colormap"] = cmap
        out.append((img, meta, "image"))
    out[1][1]["visible"] = False
    return out


def sentinel2() -> list[tuple]:
    """Sentinel-2 RGB / NIR, 300 × 300 (modality A = RGB, B = NIR)."""
    return sample_layers("sentinel2")


def ihc() -> list[tuple]:
    """Immunohistochemistry, 512 × 512 (modality A = haematoxylin, B = DAB)."""
    return sample_layers("ihc")
