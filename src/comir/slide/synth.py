"""Synthetic whole-slide pairs of any size with a known motion, generated in bounded memory.

A bundled sample (default ``ihc``: haematoxylin / DAB, 512², uint16) is tiled over the
plane, each copy turned by one of the eight flips / quarter turns chosen by a seeded hash of
its tile index (so the texture is not periodic), and multiplied by a smooth "tissue" mask
(a few Gaussian blobs, soft-thresholded) that gives the slide a unique outline. The fixed
slide is that texture; the moving slide samples the same texture at ``T(p)`` for each of its
pixels ``p``, so warping it by ``T`` (moving → fixed, :mod:`comir.transform`) reproduces the
fixed one where both are defined. Both are written tile row by tile row as pyramidal
OME-TIFF (:func:`comir.slide.write_pyramid`).

With ``deform_px > 0`` the motion is the rigid map followed by a smooth deformation,
``T(p) = R(p) + u(R(p))`` (:class:`SmoothDeformation`: two seeded low-frequency plane
waves in the fixed frame); each moving pixel then samples the texture at its own ``T(p)``
(one bilinear interpolation per tile, :func:`cv2.remap`), and :class:`SlideTruth` gives
the true position of any point both ways (the fixed → moving direction inverts ``u`` by
fixed-point iteration, :func:`comir.transform.field.invert_displacement`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comir.errors import ComirError
from comir.transform import MatrixTransform, RigidTransform, Transform

PathLike = str | os.PathLike


@dataclass
class SlideTexture:
    """The infinite synthetic texture: ``base`` ``(n, n, C)`` tiled with dihedral copies."""

    base: np.ndarray
    size: tuple[int, int]
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        h, w = self.size
        k = 5
        self._centres = np.stack([rng.uniform(0.2, 0.8, k) * w, rng.uniform(0.2, 0.8, k) * h], -1)
        self._sigmas = rng.uniform(0.12, 0.22, k) * min(h, w)
        self._salt = int(rng.integers(1, 2**31 - 1))

    def mask(self, pts: np.ndarray) -> np.ndarray:
        """Tissue weight in [0, 1] at points ``(..., 2)``."""
        acc = np.zeros(pts.shape[:-1], np.float32)
        for c, s in zip(self._centres, self._sigmas):
            d2 = ((pts - c.astype(np.float32)) ** 2).sum(-1)
            acc += np.exp(-d2 / np.float32(2 * s * s))
        return np.clip((acc - 0.35) * 6.0, 0.0, 1.0)

    def _copy(self, i: int, j: int) -> np.ndarray:
        """The dihedral copy of ``base`` at tile row ``i``, column ``j``."""
        code = ((j * 73856093) ^ (i * 19349663) ^ self._salt) % 8
        b = self.base[:, ::-1] if code & 1 else self.base
        b = b[::-1] if code & 2 else b
        return np.swapaxes(b, 0, 1) if code & 4 else b

    def region(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Texture pixels ``[y0, y0 + h) × [x0, x0 + w)`` (any integers), base dtype."""
        import cv2

        n = self.base.shape[0]
        out = np.empty((h, w, *self.base.shape[2:]), self.base.dtype)
        for i in range(y0 // n, -(-(y0 + h) // n)):
            a0, a1 = max(y0, i * n), min(y0 + h, (i + 1) * n)
            for j in range(x0 // n, -(-(x0 + w) // n)):
                b0, b1 = max(x0, j * n), min(x0 + w, (j + 1) * n)
                c = self._copy(i, j)
                out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = c[
                    a0 - i * n : a1 - i * n, b0 - j * n : b1 - j * n
                ]
        step = 16  # the mask is smooth: evaluate it coarsely, interpolate
        gy = np.arange(y0, y0 + h + step, step, dtype=np.float32)
        gx = np.arange(x0, x0 + w + step, step, dtype=np.float32)
        coarse = self.mask(np.stack(np.meshgrid(gx, gy), -1))
        big = cv2.resize(coarse, (len(gx) * step, len(gy) * step), interpolation=cv2.INTER_LINEAR)
        off = step // 2  # cv2.resize aligns pixel edges: coarse sample k sits at k·step + off
        m = big[off : off + h, off : off + w]
        m = m[..., None] if out.ndim == 3 else m
        return (out * m).astype(self.base.dtype)


@dataclass(frozen=True)
class SmoothDeformation:
    """A smooth displacement ``u(q)`` of fixed level-0 points: a sum of two plane waves.

    Mode ``k`` displaces along the unit vector ``e_k`` by ``a sin(2π n_k·(q − c) / λ_k
    + φ_k)`` with ``a = amplitude / 2`` (so ``|u| ≤ amplitude``), wave direction ``n_k``,
    wavelength ``λ_k`` (``scale`` × U(0.8, 1.25)), phase ``φ_k`` and ``e_k`` drawn from
    ``seed``; ``c`` is the slide centre.
    """

    amplitude: float
    scale: float
    center: tuple[float, float]
    seed: int = 0

    def _modes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 7919])
        ang = rng.uniform(0, 2 * np.pi, (2, 2))  # wave direction, displacement direction
        lam = self.scale * rng.uniform(0.8, 1.25, 2)
        waves = np.stack([np.cos(ang[:, 0]), np.sin(ang[:, 0])], -1) * (2 * np.pi / lam)[:, None]
        dirs = np.stack([np.cos(ang[:, 1]), np.sin(ang[:, 1])], -1) * (self.amplitude / 2)
        return waves, dirs, rng.uniform(0, 2 * np.pi, 2)

    @property
    def lipschitz(self) -> float:
        """An upper bound of ``|∂u/∂q|`` (the inversion contracts below 1)."""
        waves, dirs, _ = self._modes()
        return float((np.linalg.norm(waves, axis=1) * np.linalg.norm(dirs, axis=1)).sum())

    def __call__(self, q: np.ndarray) -> np.ndarray:
        """``u(q)`` for points ``(..., 2)`` (x, y), same shape."""
        waves, dirs, phase = self._modes()
        p = np.asarray(q, float) - np.asarray(self.center)
        out = np.zeros(p.shape, float)
        for k in range(len(phase)):
            out += np.sin(p @ waves[k] + phase[k])[..., None] * dirs[k]
        return out


class SlideTruth(Transform):
    """The true moving → fixed map of a deformed pair: ``T(p) = R(p) + u(R(p))``.

    ``apply`` is exact; ``apply_inverse`` solves ``q' + u(q') = q`` by fixed-point
    iteration (:func:`comir.transform.field.invert_displacement`, converges because
    ``u``'s Lipschitz bound is below 1) and returns ``R⁻¹(q')``.
    """

    kind = "synthetic"

    def __init__(self, rigid: MatrixTransform, deformation: SmoothDeformation) -> None:
        self.rigid, self.deformation = rigid, deformation

    def apply(self, points: np.ndarray) -> np.ndarray:
        q = self.rigid.apply(points)
        return q + self.deformation(q)

    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        from comir.transform.field import invert_displacement

        return self.rigid.apply_inverse(invert_displacement(self.deformation, points))

    def to_dict(self) -> dict:
        d = self.deformation
        return {"type": self.kind, "rigid": self.rigid.to_dict(), "amplitude": d.amplitude,
                "scale": d.scale, "center": list(d.center), "seed": d.seed}  # fmt: skip


def _rows_writer(texture: SlideTexture, transform: Transform | None, tile: int):
    """``read_rows(r0, r1)`` of the slide whose pixel ``p`` shows the texture at ``T(p)``:
    the texture itself, or per tile its bounding region warped (one interpolation)."""
    from comir.transform import AffineTransform
    from comir.transform import functional as F

    w = texture.size[1]

    def tile_at(r0: int, c0: int, th: int, tw: int) -> np.ndarray:
        if not isinstance(transform, MatrixTransform):
            return _deformed_tile(texture, transform, r0, c0, th, tw)
        corners = np.array([[c0, r0], [c0 + tw, r0], [c0, r0 + th], [c0 + tw, r0 + th]], float)
        q = transform.apply(corners - 0.5)
        lo, hi = np.floor(q.min(0)).astype(int) - 2, np.ceil(q.max(0)).astype(int) + 3
        reg = texture.region(int(lo[1]), int(lo[0]), int(hi[1] - lo[1]), int(hi[0] - lo[0]))
        # tile pixels → fixed texture → region pixels; warp wants region → tile
        local = np.linalg.inv(
            F.translation_matrix(-lo) @ transform.matrix @ F.translation_matrix((c0, r0))
        )
        return AffineTransform(local).warp(reg, (th, tw))

    def read_rows(r0: int, r1: int) -> np.ndarray:
        if transform is None:
            return texture.region(r0, 0, r1 - r0, w)
        return np.concatenate(
            [tile_at(r0, c0, r1 - r0, min(tile, w - c0)) for c0 in range(0, w, tile)], 1
        )

    return read_rows


def _deformed_tile(texture: SlideTexture, transform: Transform, r0, c0, th, tw) -> np.ndarray:
    """Moving tile ``[r0, r0 + th) × [c0, c0 + tw)``: the texture at ``T(p)`` of each pixel."""
    from comir.slide.writer import _remap

    yy, xx = np.mgrid[r0 : r0 + th, c0 : c0 + tw].astype(float)
    q = transform.apply(np.stack([xx, yy], -1))
    lo, hi = np.floor(q.min((0, 1))).astype(int) - 2, np.ceil(q.max((0, 1))).astype(int) + 3
    reg = texture.region(int(lo[1]), int(lo[0]), int(hi[1] - lo[1]), int(hi[0] - lo[0]))
    return _remap(reg, q - lo, np.ones((th, tw), bool), texture.base.dtype)


def slide_motion(
    size: int, angle_deg: float = 4.0, translation: tuple[float, float] = (310.0, -170.0)
) -> RigidTransform:
    """The known motion of :func:`make_slide_pair` (translation scaled by ``size / 20000``)."""
    from comir.transform import image_center

    scale = size / 20000.0
    shift = (translation[0] * scale, translation[1] * scale)
    return RigidTransform.from_params(angle_deg=angle_deg, translation=shift,
                                      center=image_center((size, size)))  # fmt: skip


def slide_truth(
    size: int,
    angle_deg: float = 4.0,
    translation: tuple[float, float] = (310.0, -170.0),
    deform_px: float = 0.0,
    deform_scale: float | None = None,
    seed: int = 0,
) -> Transform:
    """The known motion of :func:`make_slide_pair`: :func:`slide_motion`, followed by a
    :class:`SmoothDeformation` of at most ``deform_px`` px (wavelength ``deform_scale``,
    default ``size / 3``) when ``deform_px > 0`` (then a :class:`SlideTruth`).

    Raises
    ------
    ComirError
        A deformation so strong or short that it could fold (Lipschitz bound ≥ 0.5).
    """
    from comir.transform import image_center

    rigid = slide_motion(size, angle_deg, translation)
    if not deform_px:
        return rigid
    scale = float(deform_scale or size / 3)
    u = SmoothDeformation(float(deform_px), scale, tuple(image_center((size, size))), seed)
    if not u.lipschitz < 0.5:
        raise ComirError(
            f"deform_px={deform_px:g}, deform_scale={scale:g}: the deformation could fold "
            f"(gradient bound {u.lipschitz:.2f} ≥ 0.5); lower deform_px or raise deform_scale"
        )
    return SlideTruth(rigid, u)


def make_slide_pair(
    out_dir: PathLike,
    size: int = 20000,
    angle_deg: float = 4.0,
    translation: tuple[float, float] = (310.0, -170.0),
    sample: str = "ihc",
    seed: int = 0,
    tile: int = 512,
    pixel_size: float = 0.5,
    deform_px: float = 0.0,
    deform_scale: float | None = None,
) -> tuple[Path, Path, Transform]:
    """Write ``fixed.ome.tif`` and ``moving.ome.tif`` (``size × size``) with a known motion.

    Parameters
    ----------
    out_dir : path
    size : int
        Side in pixels of both slides.
    angle_deg, translation
        The rigid moving → fixed motion, about the image centre (translation scaled by
        ``size / 20000``).
    sample : str
        Bundled sample (:func:`comir.samples.sample_path`) used as texture.
    seed : int
    tile : int
        Tile of the written pyramids.
    pixel_size : float
        µm per pixel written to the OME metadata.
    deform_px, deform_scale : float
        Amplitude (level-0 px, at most) and wavelength (default ``size / 3``) of a smooth
        deformation after the rigid motion (:func:`slide_truth`); 0: rigid only.

    Returns
    -------
    fixed_path, moving_path, transform
        ``transform`` maps moving level-0 pixels to fixed level-0 pixels: a
        :class:`~comir.transform.RigidTransform`, or a :class:`SlideTruth` when deformed.
    """
    from comir import samples
    from comir.io import read_image
    from comir.slide.writer import write_pyramid

    base = read_image(samples.sample_path(sample))
    texture = SlideTexture(np.asarray(base), (size, size), seed)
    t = slide_truth(size, angle_deg, translation, deform_px, deform_scale, seed)
    out = Path(out_dir)
    shape = (size, size, *np.shape(base)[2:])
    dtype = np.asarray(base).dtype
    fixed = write_pyramid(out / "fixed.ome.tif", shape, dtype, _rows_writer(texture, None, tile),
                          tile=tile, pixel_size=pixel_size)  # fmt: skip
    moving = write_pyramid(out / "moving.ome.tif", shape, dtype, _rows_writer(texture, t, tile),
                           tile=tile, pixel_size=pixel_size)  # fmt: skip
    return fixed, moving, t
