"""Rebuild the bundled sample data in ``src/comir/samples/data/`` from PyPI packages.

Deterministic: the same package versions give bit-identical pixel arrays (checked against
the ``sha256_pixels`` recorded in ``manifest.json``). See ``src/comir/samples/PROVENANCE.md``.

* ``sentinel2.tif``: ``spyndex/data/S2_10m.json`` from the ``spyndex`` wheel (fetched with
  ``pip download --no-deps`` into a temporary folder, or given with ``--spyndex-wheel``),
  4 × 300 × 300 (B02 blue, B03 green, B04 red, B08 NIR) reordered to R, G, B, NIR and stored
  as one ``(300, 300, 4)`` uint16 TIFF, values unchanged (surface reflectance × 10000).
* ``ihc.tif``: ``skimage.data.immunohistochemistry()`` separated with
  ``skimage.color.rgb2hed`` (Ruifrok & Johnston 2001 colour deconvolution); haematoxylin
  and DAB optical densities scaled linearly to uint16 (``0 -> 0``, ``hi -> 65535``, where
  ``hi`` is the channel's 99.99th percentile; the few brighter pixels are clipped), stored
  as one ``(512, 512, 2)`` uint16 TIFF.

Usage::

    .venv/bin/python scripts/prepare_samples.py [--out DIR] [--spyndex-wheel PATH] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from comir.io import atomic_path, write_text

SPYNDEX_VERSION = "0.12.0"
SPYNDEX_WHEEL_SHA256 = "84bafdcb1c3c4cb8a485470081fd2cffc725ad5d7104c09f955dce7bb2fc4b4b"
SKIMAGE_VERSION = "0.26.0"
IHC_PERCENTILE = 99.99
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "comir" / "samples" / "data"


def pixel_sha256(arr: np.ndarray) -> str:
    """SHA-256 of the C-contiguous little-endian pixel bytes (independent of the TIFF encoder)."""
    a = np.ascontiguousarray(arr)
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def fetch_spyndex_wheel(tmp: Path) -> Path:
    """``pip download --no-deps spyndex==SPYNDEX_VERSION`` into ``tmp``; returns the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    subprocess.run([*cmd, "-d", str(tmp), f"spyndex=={SPYNDEX_VERSION}"], check=True)
    (wheel,) = tmp.glob("spyndex-*.whl")
    return wheel


def sentinel2_from_wheel(wheel: Path) -> np.ndarray:
    """The Sentinel-2 scene of the spyndex wheel as ``(300, 300, 4)`` uint16, R, G, B, NIR."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != SPYNDEX_WHEEL_SHA256:
        print(
            f"warning: {wheel.name} sha256 {digest} differs from the recorded one", file=sys.stderr
        )
    with zipfile.ZipFile(wheel) as zf:
        bands = np.asarray(json.loads(zf.read("spyndex/data/S2_10m.json")))  # (4, rows, cols)
    if bands.shape != (4, 300, 300) or bands.min() < 0 or bands.max() > 65535:
        raise SystemExit(
            f"unexpected S2_10m.json content: {bands.shape}, {bands.min()}..{bands.max()}"
        )
    # stored order B02 (blue), B03 (green), B04 (red), B08 (NIR) -> R, G, B, NIR
    return np.ascontiguousarray(np.moveaxis(bands[[2, 1, 0, 3]], 0, -1).astype(np.uint16))


def ihc_hdab() -> tuple[np.ndarray, list[float]]:
    """Haematoxylin and DAB of scikit-image's IHC image as ``(512, 512, 2)`` uint16 + scales."""
    import skimage
    from skimage.color import rgb2hed
    from skimage.data import immunohistochemistry

    if skimage.__version__ != SKIMAGE_VERSION:
        print(
            f"warning: scikit-image {skimage.__version__} (recorded {SKIMAGE_VERSION}); "
            "rgb2hed may differ",
            file=sys.stderr,
        )
    hed = rgb2hed(immunohistochemistry())[..., [0, 2]]  # (512, 512, 2) optical densities
    hed = np.maximum(hed, 0.0)  # older scikit-image versions leave small negative values
    hi = np.percentile(hed, IHC_PERCENTILE, axis=(0, 1))
    hi = np.array([float(f"{v:.4g}") for v in hi])  # round so the scale is easy to record
    out = np.clip(np.rint(hed / hi * 65535.0), 0, 65535).astype(np.uint16)
    return out, [float(v) for v in hi]


def write_tiff(path: Path, arr: np.ndarray, description: str) -> None:
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            arr,
            photometric="minisblack",
            planarconfig="contig",
            compression="zlib",
            description=description,
            metadata=None,
            software=None,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--spyndex-wheel", type=Path, help="use this wheel instead of downloading")
    parser.add_argument(
        "--check", action="store_true", help="only compare with the existing manifest.json"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.spyndex_wheel or fetch_spyndex_wheel(Path(tmp))
        s2 = sentinel2_from_wheel(wheel)
    ihc, ihc_hi = ihc_hdab()

    manifest = {
        "sentinel2": {
            "file": "sentinel2.tif",
            "shape": list(s2.shape),
            "dtype": "uint16",
            "channels": ["red (B04)", "green (B03)", "blue (B02)", "near-infrared (B08)"],
            "layout": "channels",
            "a_spec": "0:3",
            "b_spec": "3",
            "norm": "bits:13",
            "description": "Sentinel-2 10 m scene (300x300), RGB vs near-infrared; "
            f"from PyPI spyndex {SPYNDEX_VERSION} (MIT), spyndex/data/S2_10m.json",
            "sha256_pixels": pixel_sha256(s2),
        },
        "ihc": {
            "file": "ihc.tif",
            "shape": list(ihc.shape),
            "dtype": "uint16",
            "channels": ["haematoxylin", "DAB"],
            "layout": "channels",
            "a_spec": "0",
            "b_spec": "1",
            "norm": "bits:16",
            "scale_od_per_65535": ihc_hi,
            "description": "Immunohistochemistry of colonic glands (512x512), haematoxylin vs "
            f"DAB stain from colour deconvolution; from scikit-image {SKIMAGE_VERSION} "
            "skimage.data.immunohistochemistry()",
            "sha256_pixels": pixel_sha256(ihc),
        },
    }
    if args.check:
        old = json.loads((args.out / "manifest.json").read_text())
        bad = [k for k in manifest if old[k]["sha256_pixels"] != manifest[k]["sha256_pixels"]]
        print("mismatch: " + ", ".join(bad) if bad else "identical pixels")
        return 1 if bad else 0

    args.out.mkdir(parents=True, exist_ok=True)
    write_tiff(args.out / "sentinel2.tif", s2, manifest["sentinel2"]["description"])
    write_tiff(args.out / "ihc.tif", ihc, manifest["ihc"]["description"])
    write_text(args.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    for name in ("sentinel2.tif", "ihc.tif", "manifest.json"):
        (args.out / name).chmod(0o644)  # temporary files are created 0600; package data is public
    for k, v in manifest.items():
        size = (args.out / v["file"]).stat().st_size
        print(f"{k}: {args.out / v['file']} {v['shape']} {size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
