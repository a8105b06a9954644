"""Render docs/napari.png: the napari viewer with comir's Register widget and a registered
bundled sample, headless.

The Sentinel-2 sample (RGB = modality A, NIR = modality B) is opened, the NIR band is
rotated by 12° and shifted by (9, -6) px to play the moving image, and the Register widget
registers it with the shipped ``sample:sentinel2`` model and ``fft``; the grid view shows
the fixed RGB, the moving NIR, the registered NIR and the CoMIR overlay (green = fixed,
magenta = moving, grey where they agree).

Usage::

    pip install 'comir[napari]'
    python scripts/napari_screenshot.py [--out docs/napari.png]

Without a display it starts a virtual X server itself (``pyvirtualdisplay``, installed
with pytest-xvfb by ``make test``; or run it under ``xvfb-run``).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ANGLE_DEG, SHIFT = 12.0, (9.0, -6.0)


def _rerun_with_display() -> int:
    """Run this script again inside a virtual X server (stopped after it exits)."""
    from pyvirtualdisplay import Display

    with Display(visible=False, size=(1800, 1100), color_depth=24):
        return subprocess.run([sys.executable, *sys.argv], check=False).returncode


def _moving(nir):
    """The NIR band moved by a known rigid transform (moving → fixed is that transform)."""
    from comir.transform import RigidTransform, image_center
    from comir.transform import functional as F

    truth = RigidTransform(
        F.rigid_matrices(math.radians(ANGLE_DEG), SHIFT, image_center(nir.shape))
    )
    return truth.inverse().warp(nir, nir.shape[:2]).astype(nir.dtype), truth


def render(out: Path) -> str:
    """Build the viewer, register, save the screenshot; returns the widget's status line."""
    import napari
    from napari._qt import qt_main_window
    from qtpy.QtWidgets import QApplication

    qt_main_window.SHOW_QT_WARNING = False  # no PyQt5 deprecation toast in the picture

    from comir.napari.register_widget import RegisterWidget
    from comir.napari.sample_data import sentinel2
    from comir.transform import image_center

    (rgb, meta_a, _), (nir, meta_b, _) = sentinel2()
    moving, truth = _moving(nir)
    viewer = napari.Viewer(title="comir · napari", show=True)
    viewer.window.resize(1560, 860)
    fixed_layer = viewer.add_image(rgb, **meta_a)
    meta_b.update(name="NIR (B) moved", visible=True)
    moving_layer = viewer.add_image(moving, **meta_b)
    widget = RegisterWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CoMIR: Register", area="right")
    widget.fixed.value, widget.moving.value = fixed_layer, moving_layer
    widget.model.value, widget.method.value = "sample:sentinel2", "fft"
    widget.run()
    while widget.job.busy:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.job.error is not None:
        raise SystemExit(f"registration failed: {widget.job.error}")
    viewer.layers[f"{moving_layer.name} registered"].visible = True
    for name in [ly.name for ly in viewer.layers if ly.name.endswith("CoMIR")]:
        viewer.layers.remove(name)  # kept out of the grid (they are in the overlay)
    order = ["comir overlay", f"{moving_layer.name} registered", moving_layer.name,
             fixed_layer.name]  # fmt: skip
    for i, name in enumerate(order):  # grid cells in reading order: fixed first
        viewer.layers.move(viewer.layers.index(name), len(viewer.layers) - 1 - i)
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9 moved grid and overlays there
    grid = canvas.grid if canvas is not None else viewer.grid
    grid.enabled, grid.shape, grid.spacing = True, (2, 2), 0.04
    viewer.layers.selection.active = viewer.layers["comir overlay"]
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    img = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img[..., :3]).save(out, optimize=True)  # RGB, no alpha: smaller
    status = widget.status.value
    viewer.close()
    t = truth.translation_about(image_center(nir.shape))
    return f"{status} (true: rotation {ANGLE_DEG:.2f}°, translation ({t[0]:.2f}, {t[1]:.2f}) px)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "napari.png")
    args = ap.parse_args()
    if not (os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM")):
        raise SystemExit(_rerun_with_display())
    print(render(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
