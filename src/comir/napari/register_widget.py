"""The Register dock widget: two image layers → CoMIRs → transform, overlay and files.

The work is :func:`register_layers`, a generator that yields its stages (load model,
embed fixed, embed moving, register, warp, save) so that napari's progress bar advances
and Cancel stops it between stages. It does what :func:`comir.register.register_files`
does for files, on arrays: CoMIRs of both images through the encoder of each modality,
:func:`comir.register.register` on them, and (with an output folder) ``transform.json``,
``transform.tfm`` and ``transform_ngff.json`` written by the same writers as
``comir register``, plus the registered moving image as TIFF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, create_widget

from comir.napari import common

OVERLAYS = ("green/magenta", "checkerboard")


@dataclass
class LayerRegistration:
    """Outcome of :func:`register_layers`.

    ``comir_fixed`` ``(Hf, Wf, L)`` and ``comir_moving`` ``(Hm, Wm, L)`` are the CoMIRs (the
    [0, 1] images without a model), ``registered`` the moving image warped into the fixed
    frame ``(Hf, Wf[, C])``, ``registered_comir`` the moving CoMIR warped likewise;
    ``files`` the paths written (empty without an output folder).
    """

    result: object  # comir.register.RegistrationResult
    comir_fixed: np.ndarray
    comir_moving: np.ndarray
    registered: np.ndarray | None
    registered_comir: np.ndarray | None
    files: list[Path]


def register_layers(fixed, moving, model=None, fixed_modality="a", method="fft",
                    transform="rigid", out=None, names=("fixed", "moving"), device="auto"):  # fmt: skip
    """Generator: register ``moving`` onto ``fixed``; yields stage names, returns the result.

    Parameters
    ----------
    fixed, moving : ndarray, ``(H, W[, C])``
        Raw pixels (as read from the files: the model applies its own normalisation).
    model : run folder, ``"sample:<name>"`` or None
        None registers the images scaled to [0, 1] by their dtype.
    fixed_modality : {"a", "b"}
        Modality of ``fixed``; ``moving`` is the other one.
    method, transform : str
        As :func:`comir.register.register`.
    out : path, optional
        Folder for the transform files and the registered image.
    names : (str, str)
        Layer names recorded in ``transform.json``.

    Returns
    -------
    LayerRegistration
    """
    from comir.io import to_unit_float
    from comir.register import register

    if model is None:
        zf, zm = to_unit_float(fixed), to_unit_float(moving)
    else:
        from comir.embed import load_model

        yield "loading model"
        net = load_model(model, device=device)
        yield "embedding fixed"
        zf = net.embed(fixed, fixed_modality, where=names[0])
        yield "embedding moving"
        zm = net.embed(moving, "b" if fixed_modality == "a" else "a", where=names[1])
    yield "registering"
    res = register(zf, zm, method=method, transform=transform)
    if not res.ok:
        return LayerRegistration(res, zf, zm, None, None, [])
    yield "warping"
    shape = fixed.shape[:2]
    warped, warped_z = res.transform.warp(moving, shape), res.transform.warp(zm, shape)
    files = []
    if out is not None:
        yield "saving"
        files = save_registration(res, Path(out), fixed.shape, moving.shape, warped, model, names)
    return LayerRegistration(res, zf, zm, warped, warped_z, files)


def n_stages(model, out) -> int:
    """How many stages :func:`register_layers` yields (napari's progress bar length)."""
    return 2 + (3 if model is not None else 0) + (1 if out is not None else 0)


def save_registration(res, out: Path, fixed_shape, moving_shape, warped, model, names):
    """The transform files of ``comir register`` (by its own writer,
    :func:`comir.register.files.write_transform_files`) and the registered image."""
    from comir.io import write_image
    from comir.register.files import write_transform_files
    from comir.transform import image_center

    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        method=res.method, score=float(res.score) if math.isfinite(res.score) else None,
        model=None if model is None else str(model), fixed=names[0], moving=names[1],
    )  # fmt: skip
    if "folded_fraction" in res.details:
        meta["folded_fraction"] = res.details["folded_fraction"]
    files = write_transform_files(res, fixed_shape, out, image_center(moving_shape), meta)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in names[1])
    return [*files.values(), write_image(out / f"{stem}_registered.tif", warped)]


def summary(res, moving_shape) -> str:
    """One line: method, rotation and translation about the moving image centre."""
    from comir.transform import AffineTransform, MatrixTransform, image_center
    from comir.transform import functional as F

    t, kind = res.transform, type(res.transform).__name__.replace("Transform", "").lower()
    if not isinstance(t, MatrixTransform):  # deformable: report its affine part
        t, kind = AffineTransform(np.asarray(res.details["affine_matrix"])), "deformable"
    tx, ty = t.translation_about(image_center(moving_shape))
    angle = math.degrees(float(F.matrix_angles(t.matrix)))
    return f"{res.method} ({kind}): rotation {angle:.2f}°, translation ({tx:.2f}, {ty:.2f}) px"


class RegisterWidget(Container):
    """Dock widget: register the moving layer onto the fixed one (docs/napari.md)."""

    def __init__(self, napari_viewer):
        from comir.register import TRANSFORMS, available_methods

        self.viewer = napari_viewer
        self.fixed = create_widget(annotation="napari.layers.Image", label="fixed")
        self.moving = create_widget(annotation="napari.layers.Image", label="moving")
        self.model = ComboBox(label="model", choices=common.model_choices)
        self.run_folder = FileEdit(label="or RUN folder", mode="d", value="")
        self.fixed_modality = ComboBox(label="fixed is modality", choices=["a", "b"], value="a")
        self.method = ComboBox(label="method", choices=available_methods(), value="fft")
        self.transform = ComboBox(label="transform", choices=list(TRANSFORMS), value="rigid")
        self.overlay_mode = ComboBox(label="overlay", choices=list(OVERLAYS))
        self.out = FileEdit(label="save to", mode="d", value="")
        self.run_button = PushButton(text="Register")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        super().__init__(
            widgets=[self.fixed, self.moving, self.model, self.run_folder, self.fixed_modality,
                     self.method, self.transform, self.overlay_mode, self.out,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                               labels=False),
                     self.status],
        )  # fmt: skip
        if len(self.model.choices) > 1:
            self.model.value = self.model.choices[1]  # the first shipped model
        self.job = common.Job(self._set_status, self._set_busy)
        self.result: LayerRegistration | None = None
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.job.cancel)
        self.run_folder.changed.connect(self._pick_run)
        self.overlay_mode.changed.connect(self._show_overlay)
        common.watch_runs(self)

    # ------------------------------------------------------------------ actions
    def run(self):
        """Start the registration worker; returns it (tests wait for its ``finished``)."""
        fixed, moving = self.fixed.value, self.moving.value
        if fixed is None or moving is None:
            self._set_status("choose a fixed and a moving image layer")
            return None
        model = common.model_arg(self.model.value)
        out = str(self.out.value) if str(self.out.value) not in ("", ".") else None
        self._names = (fixed.name, moving.name)
        return self.job.start(
            register_layers, common.layer_array(fixed), common.layer_array(moving),
            model=model, fixed_modality=self.fixed_modality.value, method=self.method.value,
            transform=self.transform.value, out=out, names=self._names,
            total=n_stages(model, out), desc="comir register",
            on_yield=self._set_status, on_return=self._show,
        )  # fmt: skip

    def _pick_run(self, value) -> None:
        if str(value) in ("", "."):
            return
        self.model.value = common.add_run(value)

    # ------------------------------------------------------------------ results
    def _show(self, reg: LayerRegistration) -> None:
        self.result = reg
        res = reg.result
        if not res.ok:
            self._set_status(f"registration {res.status}")
            return
        fixed, moving = self._names
        v = self.viewer
        common.set_layer(v, f"{fixed} CoMIR", common.comir_display(reg.comir_fixed),
                         colormap="green", blending="additive", visible=False)  # fmt: skip
        common.set_layer(v, f"{moving} CoMIR", common.comir_display(reg.comir_moving),
                         colormap="magenta", blending="additive", visible=False)  # fmt: skip
        layer = self.moving.value
        rgb = bool(getattr(layer, "rgb", False))
        kw = {"contrast_limits": layer.contrast_limits} if layer is not None and not rgb else {}
        common.set_layer(v, f"{moving} registered", reg.registered, rgb=rgb, visible=False, **kw)
        self._show_overlay()
        saved = f"; saved to {reg.files[0].parent}" if reg.files else ""
        self._set_status(summary(res, reg.comir_moving.shape) + saved)

    def _show_overlay(self, *_) -> None:
        reg = self.result
        if reg is None or reg.registered_comir is None:
            return
        img = common.overlay(reg.comir_fixed, reg.registered_comir, self.overlay_mode.value)
        common.set_layer(self.viewer, "comir overlay", img, rgb=True)

    # ------------------------------------------------------------------ state
    def _set_status(self, text: str) -> None:
        self.status.value = str(text)[:200]

    def _set_busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
