"""The napari plugin (comir.napari): manifest, widgets end to end, reader, writer, samples.

Runs under a virtual X server (pytest-xvfb; `make test` installs ``.[dev,napari,napari-test]``
and .ci/run the Debian packages for a headless Qt). Skipped only where napari is absent.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

napari = pytest.importorskip("napari")
# napari's fixtures (make_napari_viewer); its entry-point plugin is off in pyproject's
# addopts so that sessions without this file do not import napari and Qt
pytest_plugins = ["napari.utils._testsupport"]
pytestmark = pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")

from conftest import TINY1, make_textured  # noqa: E402

from comir.napari import common  # noqa: E402
from comir.napari.evaluate_widget import EvaluateWidget  # noqa: E402
from comir.napari.io import get_reader, read_layers, write_comir  # noqa: E402
from comir.napari.register_widget import RegisterWidget  # noqa: E402
from comir.napari.sample_data import sentinel2  # noqa: E402
from comir.napari.train_widget import TrainWidget  # noqa: E402

PKG = Path(common.__file__).resolve().parent
ROOT = PKG.parents[2]


@pytest.fixture(autouse=True)
def _display():
    """Fail with the fix, not a Qt abort, when there is no X server for Qt."""
    import os

    if not (os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM")):
        pytest.fail(
            "no X display for Qt: install Xvfb (.ci/run installs it) and pytest-xvfb "
            "(`make test` does), or run under xvfb-run",
            pytrace=False,
        )


def _wait(qtbot, widget, timeout: int = 60_000) -> None:
    """Until the widget's worker has finished; fail on a worker error."""
    qtbot.waitUntil(lambda: not widget.job.busy, timeout=timeout)
    assert widget.job.error is None, widget.status.value


def _known_pair(size: int = 160, deg: float = 6.0, t=(5.0, -3.0)):
    """IHC haematoxylin crop (fixed, modality A) and the DAB crop of the same tissue
    resampled so that T(q) = R(q − c) + c + t maps moving → fixed (written out by hand,
    independent of comir.transform); returns fixed, moving, T as a function of points."""
    from comir import samples

    s = samples.sample("ihc")
    o = np.array([170.0, 140.0])  # crop origin (x, y) in the full image
    c = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    th = math.radians(deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])

    def truth(q):
        return (q - c) @ rot.T + c + np.asarray(t)

    fixed = s["a"][140 : 140 + size, 170 : 170 + size, 0]
    yy, xx = np.mgrid[:size, :size].astype(float)
    src = truth(np.stack([xx.ravel(), yy.ravel()], -1)) + o  # M(q) = DAB(T(q) + o)
    dab = s["b"][..., 0].astype(np.float64)
    moving = map_coordinates(dab, [src[:, 1], src[:, 0]], order=1).reshape(size, size)
    return fixed, np.rint(moving).astype(s["b"].dtype), truth


# ----------------------------------------------------------------------------- packaging
def test_core_import_stays_free_of_qt():
    code = (
        "import sys, comir, comir.register, comir.embed, comir.train, comir.evaluate, "
        "comir.cli; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy')); "
        "print(bad); assert not bad"
    )
    env_path = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_manifest_commands_resolve_and_entry_point_declared():
    import importlib

    from npe2 import PluginManifest

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    manifest = PluginManifest.from_file(PKG / "napari.yaml")
    assert manifest.name == "comir"
    for cmd in manifest.contributions.commands:
        module, attr = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.id
    c = manifest.contributions
    assert [w.display_name for w in c.widgets] == ["Register", "Train", "Evaluate"]
    assert {s.key for s in c.sample_data} == {"sentinel2", "ihc"}
    assert "*.tif" in c.readers[0].filename_patterns and c.writers[0].layer_types == ["image"]
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["entry-points"]["napari.manifest"] == {"comir": "comir.napari:napari.yaml"}
    assert any(d.startswith("napari[pyqt5]") for d in meta["optional-dependencies"]["napari"])


# ----------------------------------------------------------------------------- pure helpers
def test_overlay_colours_and_checkerboard():
    f = make_textured((64, 64), seed=1)
    same = common.overlay(f, f)
    assert same.shape == (64, 64, 3)
    np.testing.assert_array_equal(same[..., 0], same[..., 1])  # grey where they agree
    other = common.overlay(f, 1.0 - f)
    assert np.abs(other[..., 0] - other[..., 1]).mean() > 0.3  # green vs magenta
    board = common.overlay(f, np.zeros_like(f), "checkerboard")[..., 0]
    g = common.display_gray(f)
    np.testing.assert_allclose(board[:8, :8], g[:8, :8])  # first square: fixed
    np.testing.assert_array_equal(board[:8, 8:16], 0.0)  # next square: moving


def test_register_layers_writes_the_files_of_comir_register(tmp_path):
    from comir.io import read_image, write_image
    from comir.napari.register_widget import register_layers
    from comir.register import register_files
    from comir.transform import load_transform

    f = (make_textured((80, 90), seed=4) * 65535).astype(np.uint16)
    m = np.roll(f, (3, -2), axis=(0, 1))
    write_image(tmp_path / "f.tif", f)
    write_image(tmp_path / "m.tif", m)
    ref = register_files(tmp_path / "f.tif", tmp_path / "m.tif", tmp_path / "cli", method="fft")
    gen = register_layers(f, m, method="fft", out=tmp_path / "gui", names=("f", "m"))
    stages = []
    try:
        while True:
            stages.append(next(gen))
    except StopIteration as stop:
        reg = stop.value
    assert stages == ["registering", "warping", "saving"]
    cli, gui = tmp_path / "cli", tmp_path / "gui"
    np.testing.assert_allclose(
        load_transform(gui / "transform.json").matrix, ref.transform.matrix, atol=1e-12
    )
    assert (gui / "transform.tfm").read_text() == (cli / "transform.tfm").read_text()
    assert (gui / "transform_ngff.json").read_text() == (cli / "transform_ngff.json").read_text()
    np.testing.assert_array_equal(read_image(gui / "m_registered.tif"), read_image(ref.registered))
    assert [p.name for p in reg.files][-1] == "m_registered.tif"


# ----------------------------------------------------------------------------- widgets
def test_widgets_build_with_library_defaults(make_napari_viewer):
    from comir.train_config import TrainConfig

    viewer = make_napari_viewer()
    for data, meta, _ in sentinel2():
        viewer.add_image(data, **meta)
    reg, tr, ev = RegisterWidget(viewer), TrainWidget(viewer), EvaluateWidget(viewer)
    for name, w in (("Register", reg), ("Train", tr), ("Evaluate", ev)):
        viewer.window.add_dock_widget(w, name=name)
    names = [layer.name for layer in reg.fixed.choices]
    assert names == ["sentinel2 RGB (A)", "sentinel2 NIR (B)"]
    assert {"sample:sentinel2", "sample:ihc"} <= set(reg.model.choices)
    assert reg.model.choices[0] == common.RAW
    d = TrainConfig(data="x")
    assert (tr.batch.value, tr.patch.value, tr.tau.value, tr.l2.value) == (
        d.batch_size, d.patch_size, d.tau, d.l2,
    )  # fmt: skip
    assert tr.steps.value == d.total_steps() and tr.critic.value == d.critic


def test_register_widget_recovers_known_transform(make_napari_viewer, qtbot, tmp_path):
    from comir.transform import load_transform

    fixed, moving, truth = _known_pair()
    viewer = make_napari_viewer()
    viewer.add_image(fixed, name="H")
    viewer.add_image(moving, name="DAB")
    w = RegisterWidget(viewer)
    viewer.window.add_dock_widget(w, name="Register")
    w.fixed.value, w.moving.value = viewer.layers["H"], viewer.layers["DAB"]
    w.model.value, w.fixed_modality.value = "sample:ihc", "a"
    w.method.value, w.transform.value = "fft", "rigid"
    w.out.value = str(tmp_path / "reg")
    assert w.run() is not None
    _wait(qtbot, w)
    shapes = {layer.name: layer.data.shape for layer in viewer.layers}
    assert shapes["H CoMIR"] == shapes["DAB CoMIR"] == (160, 160)
    assert shapes["DAB registered"] == (160, 160) and shapes["comir overlay"] == (160, 160, 3)
    corners = np.array([[0.0, 0.0], [159.0, 0.0], [159.0, 159.0], [0.0, 159.0]])
    got = w.result.result.transform
    err = np.linalg.norm(got.apply(corners) - truth(corners), axis=1).max()
    assert err < 1.0, (err, w.status.value)
    saved = load_transform(tmp_path / "reg" / "transform.json")
    np.testing.assert_allclose(saved.matrix, got.matrix, atol=1e-9)
    assert (tmp_path / "reg" / "transform.tfm").read_text().startswith("#Insight Transform")
    # the registered DAB lies on the tissue of the fixed haematoxylin crop: CoMIRs agree
    zf, zr = w.result.comir_fixed[8:-8, 8:-8, 0], w.result.registered_comir[8:-8, 8:-8, 0]
    assert np.corrcoef(zf.ravel(), zr.ravel())[0, 1] > 0.8
    w.overlay_mode.value = "checkerboard"
    board = viewer.layers["comir overlay"].data
    np.testing.assert_array_equal(board[..., 0], board[..., 2])


def test_register_widget_cancel_adds_nothing(make_napari_viewer, qtbot):
    fixed, moving, _ = _known_pair(96)
    viewer = make_napari_viewer()
    viewer.add_image(fixed, name="H")
    viewer.add_image(moving, name="DAB")
    w = RegisterWidget(viewer)
    viewer.window.add_dock_widget(w, name="Register")
    w.fixed.value, w.moving.value, w.model.value = (
        viewer.layers["H"],
        viewer.layers["DAB"],
        ("sample:ihc"),
    )
    w.run()
    w.job.cancel()
    _wait(qtbot, w)
    assert w.result is None and w.status.value == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["H", "DAB"]


def _train_layers(viewer, size: int = 48):
    a = make_textured((size, size, 3), seed=3, sigma=2.5)
    b = np.sin(3.0 * np.pi * a.mean(-1)) ** 2  # non-monotonic: a second "modality"
    viewer.add_image((a * 255).astype(np.uint8), name="A", rgb=True)
    viewer.add_image((b * 255).astype(np.uint8), name="B")


def _tiny_train(w: TrainWidget, out: Path, steps: int) -> None:
    w.layer_a.value, w.layer_b.value = w.viewer.layers["A"], w.viewer.layers["B"]
    w.out.value = str(out)
    w.steps.value, w.batch.value, w.patch.value = steps, 2, 32
    w.overrides.value, w.device.value = json.dumps(TINY1), "cpu"


def test_train_widget_runs_steps_and_feeds_register(make_napari_viewer, qtbot, tmp_path):
    from comir.embed import load_model

    viewer = make_napari_viewer()
    _train_layers(viewer)
    tr, reg = TrainWidget(viewer), RegisterWidget(viewer)
    viewer.window.add_dock_widget(tr, name="Train")
    viewer.window.add_dock_widget(reg, name="Register")
    _tiny_train(tr, tmp_path / "run", steps=3)
    assert tr.run() is not None
    _wait(qtbot, tr)
    assert [r["step"] for r in tr.rows] == [1, 2, 3]
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        logged = [float(r["loss"]) for r in csv.DictReader(fh)]
    np.testing.assert_allclose([r["loss"] for r in tr.rows], logged, rtol=1e-5)  # 6 digits
    assert len(tr.ax.lines) == 1 and len(tr.ax.lines[0].get_xdata()) == 3  # live plot
    assert tr.run_path in reg.model.choices  # selectable in Register
    z = load_model(tr.run_path, device="cpu").embed(viewer.layers["A"].data, "a")
    assert z.shape == (48, 48, 1) and np.isfinite(z).all()


def test_train_widget_cancel_stops_training(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _train_layers(viewer)
    tr = TrainWidget(viewer)
    viewer.window.add_dock_widget(tr, name="Train")
    _tiny_train(tr, tmp_path / "run", steps=500)
    tr.run()
    qtbot.waitUntil(lambda: len(tr.rows) >= 1, timeout=30_000)
    tr.job.cancel()
    qtbot.waitUntil(lambda: not tr.job.busy, timeout=30_000)
    assert tr.status.value == f"cancelled after {len(tr.rows)} steps" and tr.job.error is None
    assert len(tr.rows) < 500 and not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_evaluate_widget_table_and_curves(make_napari_viewer, qtbot, tmp_path):
    from conftest import write_pairs

    from comir.evaluate import make_eval

    imgs = [make_textured((130, 150), seed=s, sigma=2.5) for s in (0, 1)]
    root = write_pairs(tmp_path / "d", imgs, imgs)  # same modality: raw fft succeeds
    ev_dir = make_eval(root, "folders", "A", "B", tmp_path / "ev", width=40, levels=(1, 4))
    viewer = make_napari_viewer()
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w, name="Evaluate")
    w.eval_dir.value, w.method.value, w.model.value = str(ev_dir), "fft", common.RAW
    w.out.value = str(tmp_path / "res")
    assert w.run() is not None
    _wait(qtbot, w)
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    rates = summary["success_rate"]
    assert list(w.table.row_headers) == [f"level {k}" for k in rates if k != "all"] + ["all"]
    assert [r[0] for r in w.table.data.to_list()] == pytest.approx(list(rates.values()), abs=1e-3)
    assert [r[1] for r in w.table.data.to_list()][-1] == summary["n_pairs"]
    lines = {ln.get_label(): ln for ln in w.ax.lines}
    x, y = lines["all"].get_xdata(), lines["all"].get_ydata()
    at = np.searchsorted(x, summary["threshold_px"], side="right") - 1  # curve at 2 % w
    assert y[at] == pytest.approx(summary["success_rate"]["all"], abs=1e-9)


# ----------------------------------------------------------------------------- reader/writer
def test_reader_gives_multiscale_for_pyramidal_ome_tiff(make_napari_viewer, tmp_path):
    import tifffile

    base = (make_textured((256, 192, 3), seed=2) * 255).astype(np.uint8)
    levels = [base, base[::2, ::2], base[::4, ::4]]
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], subifds=2, photometric="rgb", metadata={"axes": "YXS"})
        for lv in levels[1:]:
            tif.write(lv, subfiletype=1, photometric="rgb")
    assert get_reader(str(path)) is read_layers and get_reader("x.czi") is None
    [(data, meta, kind)] = read_layers(str(path))
    assert kind == "image" and meta["multiscale"] and meta["rgb"]
    assert [d.shape for d in data] == [(256, 192, 3), (128, 96, 3), (64, 48, 3)]
    for got, want in zip(data, levels, strict=True):
        np.testing.assert_array_equal(got, want)
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, **meta)
    assert layer.multiscale and layer.level_shapes.tolist()[0] == [256, 192]
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, levels[1])
    [(one, _, _)] = read_layers(str(flat))
    np.testing.assert_array_equal(one, levels[1])


def test_writer_round_trips_a_comir(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 50, 3)).astype(np.float32)
    layer_data = common.comir_display(z)  # (L, H, W) as the Register widget adds it
    assert layer_data.shape == (3, 40, 50)
    for suffix in (".tif", ".npy"):
        [out] = write_comir(str(tmp_path / f"z{suffix}"), layer_data, {})
        [(back, meta, _)] = read_layers(out)
        np.testing.assert_array_equal(back, z)
        assert back.dtype == np.float32 and meta["channel_axis"] == 2
    with pytest.raises(Exception, match="CoMIRs are written as"):
        write_comir(str(tmp_path / "z.png"), layer_data, {})


def test_sample_data_are_the_bundled_modalities():
    from comir import samples

    (a, ma, _), (b, mb, _) = sentinel2()
    s = samples.sample("sentinel2")
    np.testing.assert_array_equal(a, s["a"])
    np.testing.assert_array_equal(b, s["b"][..., 0])
    assert (
        ma["rgb"] and a.dtype == np.uint16 and ma["contrast_limits"][1] > ma["contrast_limits"][0]
    )


def test_plugin_contributions_through_npe2(make_napari_viewer, tmp_path):
    """What napari's menus call, resolved through npe2 from the manifest (a private plugin
    manager, so napari's own registry is untouched): sample, reader, widget, writer."""
    import tifffile
    from npe2 import PluginManager, PluginManifest

    from comir import samples

    pm = PluginManager()
    pm.register(PluginManifest.from_file(PKG / "napari.yaml"))
    pm.activate("comir")

    def call(cmd_id, *args):
        return pm.get_command(cmd_id).exec(args=args, _registry=pm.commands)

    [sample] = [s for s in dict(pm.iter_sample_data())["comir"] if s.key == "ihc"]
    (_, ma, _), (b, _, _) = call(sample.command)
    np.testing.assert_array_equal(b, samples.sample("ihc")["b"][..., 0])
    img = (make_textured((32, 40), seed=5) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", img)
    reader = next(pm.iter_compatible_readers([str(tmp_path / "x.tif")]))
    [(data, meta, kind)] = call(reader.command, str(tmp_path / "x.tif"))(str(tmp_path / "x.tif"))
    np.testing.assert_array_equal(data, img)
    [writer] = pm.iter_compatible_writers(["image"])
    [out] = call(writer.command, str(tmp_path / "y.npy"), data, meta)
    np.testing.assert_array_equal(np.load(out), img.astype(np.float32))
    widgets = {w.display_name: w.command for w in pm.iter_widgets()}
    viewer = make_napari_viewer()
    widget = pm.get_command(widgets["Register"]).python_name
    module, attr = widget.split(":")
    import importlib

    cls = getattr(importlib.import_module(module), attr)
    viewer.window.add_dock_widget(cls(viewer), name="Register")
    assert cls is RegisterWidget and viewer.window.dock_widgets["Register"] is not None
