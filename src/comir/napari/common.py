"""Shared by the comir napari widgets: model choices, layer data, overlays, workers, plots.

The widgets run their work in napari's ``thread_worker`` threads (:class:`Job`); a
generator job is cancelled between the stages it yields, a training job through the
callback of :func:`comir.train.train` (:class:`Cancelled`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Model choice meaning "register the images themselves, no CoMIRs".
RAW = "none (raw images)"

_known_runs: list[str] = []
_run_listeners: weakref.WeakSet = weakref.WeakSet()


class Cancelled(Exception):
    """Raised inside a worker when the user pressed Cancel."""


# ----------------------------------------------------------------------------- models
def sample_models() -> list[str]:
    """``sample:<name>`` for every bundled sample that ships a model."""
    from comir import samples
    from comir.errors import ComirError

    out = []
    for name in samples.list_samples():
        try:
            samples.model_dir(name)
        except ComirError:
            continue
        out.append(f"sample:{name}")
    return out


def model_choices(*_) -> list[str]:
    """Choices of a model combo box: raw images, the shipped models, runs trained here."""
    return [RAW, *sample_models(), *_known_runs]


def add_run(path: str | Path, listener=None) -> str:
    """Make the run folder ``path`` selectable in every model combo box (returns its name).

    ``listener`` (a widget with ``reset_choices``) is remembered and refreshed by later
    calls, so a run trained in the Train widget appears in the Register widget.
    """
    name = str(Path(path))
    if name not in _known_runs:
        _known_runs.append(name)
    if listener is not None:
        _run_listeners.add(listener)
    for w in list(_run_listeners):
        try:
            w.reset_choices()
        except RuntimeError:  # its Qt widget was deleted (a closed viewer)
            _run_listeners.discard(w)
    return name


def watch_runs(widget) -> None:
    """Refresh ``widget.reset_choices()`` whenever :func:`add_run` adds a run."""
    _run_listeners.add(widget)


def model_arg(choice: str | None) -> str | None:
    """The ``model`` argument of the library for a combo box choice (None: raw images)."""
    return None if choice in (None, "", RAW) else str(choice)


# ----------------------------------------------------------------------------- arrays
def layer_array(layer) -> np.ndarray:
    """Full-resolution pixels of an image layer, ``(H, W)`` or ``(H, W, C)``.

    Multiscale layers give their first (largest) level; lazy arrays are read.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def display_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1] for display: first principal component of the
    channels (:func:`comir.register.to_gray`), 1–99th percentile stretched."""
    from comir.io import percentile_scale
    from comir.register import to_gray

    g = np.asarray(image, dtype=np.float32)
    if g.ndim == 3:
        g = to_gray(g) if g.shape[2] > 1 else g[..., 0]
    return np.clip(percentile_scale(g, 1.0, 99.0), 0.0, 1.0).astype(np.float32)


def overlay(fixed: np.ndarray, moving: np.ndarray, mode: str = "green/magenta") -> np.ndarray:
    """RGB ``(H, W, 3)`` float32 overlay of two images of one frame.

    Parameters
    ----------
    fixed, moving : ndarray, ``(H, W[, C])``
        Same height and width (the moving one already warped into the fixed frame).
    mode : {"green/magenta", "checkerboard"}
        ``green/magenta``: fixed in green, moving in magenta, grey where they agree;
        ``checkerboard``: 8 × 8 squares alternating between the two (grey).
    """
    f, m = display_gray(fixed), display_gray(moving)
    if mode == "checkerboard":
        h, w = f.shape
        side = max(4, min(h, w) // 8)
        yy, xx = np.ogrid[:h, :w]
        g = np.where(((yy // side) + (xx // side)) % 2 == 0, f, m)
        return np.repeat(g[..., None], 3, axis=2)
    if mode != "green/magenta":
        raise ValueError(f"overlay mode {mode!r}: use 'green/magenta' or 'checkerboard'")
    return np.stack([m, f, m], axis=-1)


def comir_display(z: np.ndarray) -> np.ndarray:
    """A CoMIR ``(H, W, L)`` as layer data: ``(H, W)`` for one channel, else ``(L, H, W)``."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim == 2:
        return z
    return z[..., 0] if z.shape[2] == 1 else np.moveaxis(z, 2, 0)


def set_layer(viewer, name: str, data: np.ndarray, **kwargs):
    """Update the layer ``name`` with ``data`` or add it (re-runs replace, not pile up)."""
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_image(data, name=name, **kwargs)


# ----------------------------------------------------------------------------- workers
class Job:
    """One napari worker at a time for a widget: start, cancel, report.

    Parameters
    ----------
    status : callable
        ``status(text)`` shows a one-line state (a label of the widget).
    on_busy : callable
        ``on_busy(bool)`` enables/disables the widget's Run and Cancel buttons.
    """

    def __init__(self, status: Callable[[str], None], on_busy: Callable[[bool], None]):
        self.status = status
        self.on_busy = on_busy
        self.worker = None
        self.error: BaseException | None = None
        self.cancel_requested = False

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, func, *args, total: int | None = 0, desc: str = "comir",
              on_yield=None, on_return=None, **kwargs):  # fmt: skip
        """Run ``func(*args, **kwargs)`` (a function or a generator function) in a thread.

        ``total`` > 0 shows napari's progress bar advancing one step per yielded stage, 0 an
        indeterminate one, None none (the caller keeps its own); ``on_yield(value)`` and
        ``on_return(value)`` are called in the main thread.
        """
        from napari.qt.threading import create_worker

        self.error, self.cancel_requested = None, False
        if total is not None:
            kwargs["_progress"] = {"total": total, "desc": desc}
        worker = create_worker(
            func, *args, _start_thread=False, _connect={"errored": self._errored}, **kwargs
        )
        if on_yield is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(on_yield)
        if on_return is not None:
            worker.returned.connect(on_return)
        if hasattr(worker, "aborted"):
            worker.aborted.connect(lambda: self.status("cancelled"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.on_busy(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next stage (or training step)."""
        if self.worker is None:
            return
        self.cancel_requested = True
        self.status("cancelling ...")
        if hasattr(self.worker, "aborted"):  # a generator: stops at its next yield
            self.worker.quit()  # (a function worker checks cancel_requested itself)

    def check(self) -> None:
        """Raise :class:`Cancelled` when Cancel was pressed (call it from the worker)."""
        if self.cancel_requested:
            raise Cancelled

    def _errored(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.status("cancelled")
            return
        self.error = exc
        self.status(f"error: {exc}")

    def _finished(self) -> None:
        self.worker = None
        self.on_busy(False)


# ----------------------------------------------------------------------------- plots
def figure_canvas(height: float = 2.4):
    """A small matplotlib ``FigureCanvasQTAgg`` (napari-dark colours) and its axes."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, height), dpi=100, facecolor="#262930", layout="constrained")
    canvas = FigureCanvasQTAgg(fig)
    ax = fig.add_subplot(111)
    style_axes(ax)
    canvas.setMinimumHeight(int(height * 80))
    return canvas, ax


def style_axes(ax) -> None:
    """Light text on napari's dark background."""
    ax.set_facecolor("#262930")
    for spine in ax.spines.values():
        spine.set_color("#a0a0a0")
    ax.tick_params(colors="#d0d0d0", labelsize=7)
    ax.xaxis.label.set_color("#d0d0d0")
    ax.yaxis.label.set_color("#d0d0d0")
    ax.title.set_color("#f0f0f0")
