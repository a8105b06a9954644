"""The Train dock widget: ``comir train`` on two aligned layers or a data folder.

Two aligned image layers are written as a one-pair training folder in the ``folders``
layout (``<RUN>-data/A/<name>.tif``, ``<RUN>-data/B/<name>.tif``); a folder is used as it
is with its layout and channel specs. The main :class:`comir.train_config.TrainConfig`
options are fields with the library's defaults. :func:`comir.train.train` runs in a
napari worker; its per-step ``callback`` feeds the live loss plot and stops training when
Cancel is pressed. A finished run becomes selectable as a model in the Register and
Evaluate widgets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)
from qtpy.QtCore import QObject, Signal

from comir.napari import common

SOURCES = ("layers", "folder")


class _Steps(QObject):
    """Carries metrics rows from the training thread to the widget (queued signal)."""

    row = Signal(object)


def _defaults() -> dict:
    from comir.train_config import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def write_layer_pair(a, b, folder: Path, name: str = "pair") -> Path:
    """Two aligned arrays as a ``folders``-layout training folder (``A/``, ``B/``)."""
    from comir.errors import ComirError
    from comir.io import write_image

    if a.shape[:2] != b.shape[:2]:
        raise ComirError(
            f"training layers must be aligned pairs of one size, got {a.shape[:2]} and "
            f"{b.shape[:2]}; choose two layers of the same scene"
        )
    write_image(folder / "A" / f"{name}.tif", a)
    write_image(folder / "B" / f"{name}.tif", b)
    return folder


def run_training(config, out: str, job: common.Job, emit) -> str | None:
    """Worker body: :func:`comir.train.train` with a callback that reports each step and
    stops at Cancel; returns the run folder, or None when cancelled."""
    from comir.train import train

    def step(row: dict) -> None:
        emit(dict(row))
        job.check()

    try:
        train(config, out, progress=False, callback=step)
    except common.Cancelled:
        return None
    return out


class TrainWidget(Container):
    """Dock widget: train a CoMIR model pair with live loss (docs/napari.md)."""

    def __init__(self, napari_viewer):
        from comir.data.discovery import LAYOUTS
        from comir.losses import CRITICS
        from comir.model import PRESETS
        from comir.runtime import DEVICES

        d = _defaults()
        self.viewer = napari_viewer
        self.source = ComboBox(label="train on", choices=list(SOURCES), value="layers")
        self.layer_a = create_widget(annotation="napari.layers.Image", label="modality A")
        self.layer_b = create_widget(annotation="napari.layers.Image", label="modality B")
        self.data = FileEdit(label="data folder", mode="d", value="")
        self.layout_ = ComboBox(label="layout", choices=list(LAYOUTS), value=d["layout"])
        self.a, self.b = LineEdit(label="A", value=d["a"]), LineEdit(label="B", value=d["b"])
        self.out = FileEdit(label="RUN folder", mode="d", value="")
        self.preset = ComboBox(label="preset", choices=list(PRESETS), value=d["preset"])
        self.latent = SpinBox(label="latent channels", value=d["latent_channels"], min=1, max=64)
        self.steps = SpinBox(label="steps", value=d["epochs"] * d["steps_per_epoch"],
                             min=1, max=10**7)  # fmt: skip
        self.batch = SpinBox(label="batch size", value=d["batch_size"], min=2, max=4096)
        self.patch = SpinBox(label="patch size", value=d["patch_size"], min=8, max=4096)
        self.critic = ComboBox(label="critic", choices=list(CRITICS), value=d["critic"])
        self.tau = FloatSpinBox(label="tau", value=d["tau"], min=1e-3, max=10.0, step=0.05)
        self.l2 = FloatSpinBox(label="l2", value=d["l2"], min=0.0, max=10.0, step=0.01)
        self.lr = LineEdit(label="learning rate", value=str(d["lr"]))
        self.equivariance = CheckBox(label="C4 equivariance", value=d["equivariance"])
        self.norm = ComboBox(label="norm", choices=["auto", "dtype", "percentile", "none"],
                             value=d["norm"])  # fmt: skip
        self.device = ComboBox(label="device", choices=list(DEVICES), value=d["device"])
        self.seed = SpinBox(label="seed", value=d["seed"], min=0, max=2**31 - 1)
        self.overrides = LineEdit(label="model options", value="{}")
        self.run_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        super().__init__(
            widgets=[self.source, self.layer_a, self.layer_b, self.data, self.layout_, self.a,
                     self.b, self.out, self.preset, self.latent, self.steps, self.batch,
                     self.patch, self.critic, self.tau, self.l2, self.lr, self.equivariance,
                     self.norm, self.device, self.seed, self.overrides,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                               labels=False),
                     self.status],
        )  # fmt: skip
        self.canvas, self.ax = common.figure_canvas()
        self.native.layout().addWidget(self.canvas)
        self.rows: list[dict] = []
        self.run_path: str | None = None
        self._signal = _Steps()
        self._signal.row.connect(self._on_row)
        self._pbar = None
        self.job = common.Job(self._set_status, self._set_busy)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.job.cancel)
        self.source.changed.connect(self._source_changed)
        self._source_changed(self.source.value)

    # ------------------------------------------------------------------ options
    def config(self):
        """The :class:`~comir.train_config.TrainConfig` of the fields (validated)."""
        from comir.errors import ComirError
        from comir.train_config import TrainConfig

        try:
            overrides = json.loads(self.overrides.value or "{}")
            lr = float(self.lr.value)
        except ValueError as exc:
            raise ComirError(
                f"model options / learning rate: {exc}; give a JSON object and a number"
            ) from None
        out = self._out()
        if self.source.value == "layers":
            la, lb = self.layer_a.value, self.layer_b.value
            if la is None or lb is None:
                raise ComirError("choose the two aligned layers (modality A and B)")
            folder = write_layer_pair(common.layer_array(la), common.layer_array(lb),
                                      Path(f"{out}-data"), "pair")  # fmt: skip
            data, layout, a, b = str(folder), "folders", "A", "B"
        else:
            data, layout, a, b = (
                str(self.data.value),
                self.layout_.value,
                self.a.value,
                self.b.value,
            )
        cfg = TrainConfig(
            data=data, layout=layout, a=a, b=b, norm=self.norm.value, preset=self.preset.value,
            latent_channels=int(self.latent.value), model_overrides=overrides,
            steps=int(self.steps.value), batch_size=int(self.batch.value),
            patch_size=int(self.patch.value), critic=self.critic.value,
            tau=float(self.tau.value), l2=float(self.l2.value), lr=lr,
            equivariance=bool(self.equivariance.value), device=self.device.value,
            seed=int(self.seed.value),
        )  # fmt: skip
        cfg.validate("Train widget")
        return cfg

    def _out(self) -> str:
        from comir.errors import ComirError

        out = str(self.out.value)
        if out in ("", "."):
            raise ComirError("RUN folder: choose a new folder for the trained model")
        return out

    # ------------------------------------------------------------------ actions
    def run(self):
        """Start training; returns the worker (or None when the options are invalid)."""
        from comir.errors import ComirError

        try:
            config = self.config()
        except ComirError as exc:
            self._set_status(f"error: {exc}")
            return None
        self.rows, self.run_path = [], None
        self._redraw()
        from napari.utils import progress

        self._pbar = progress(total=config.total_steps(), desc="comir train")
        return self.job.start(
            run_training, config, self._out(), self.job, self._signal.row.emit,
            total=None, on_return=self._done,
        )  # fmt: skip

    def _done(self, path: str | None) -> None:
        if path is None:
            self._set_status(f"cancelled after {len(self.rows)} steps")
            return
        self.run_path = common.add_run(path)
        last = self.rows[-1]["loss"] if self.rows else float("nan")
        self._set_status(f"trained {len(self.rows)} steps, loss {last:.4f}: {path}")

    def _on_row(self, row: dict) -> None:
        self.rows.append(row)
        if self._pbar is not None:
            self._pbar.update(1)
        if len(self.rows) % max(1, len(self.rows) // 50) == 0 or len(self.rows) < 50:
            self._redraw()

    def _redraw(self) -> None:
        ax = self.ax
        ax.clear()
        common.style_axes(ax)
        if self.rows:
            steps = [r["step"] for r in self.rows]
            ax.plot(steps, [r["loss"] for r in self.rows], color="#ff66cc", lw=1.2)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("InfoNCE loss", fontsize=8)
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ state
    def _source_changed(self, value) -> None:
        layers = value == "layers"
        for w in (self.layer_a, self.layer_b):
            w.visible = layers
        for w in (self.data, self.layout_, self.a, self.b):
            w.visible = not layers

    def _set_status(self, text: str) -> None:
        self.status.value = str(text)[:200]

    def _set_busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
        if not busy and self._pbar is not None:
            self._pbar.close()
            self._pbar = None
