"""Transforms and the one coordinate convention used everywhere in comir.

Convention
----------
* A point is ``(x, y)`` with **x = column, y = row**, in pixels.
* The origin ``(0, 0)`` is the **centre of the top-left pixel**; pixel ``(r, c)`` covers
  ``[c - 0.5, c + 0.5] × [r - 0.5, r + 0.5]``. (OpenCV uses the same convention; ITK
  uses it too for an image with origin 0 and spacing 1.)
* A transform maps points of the **moving** image to points of the **fixed** image. Matrix
  transforms hold a 3×3 homogeneous matrix ``M``: ``p_fixed = M @ [x_moving, y_moving, 1]``.
* A rigid transform is a rotation by ``angle`` about a centre ``c`` followed by a
  translation ``t``: ``p_fixed = R(angle) (p_moving - c) + c + t`` with
  ``R = [[cos, -sin], [sin, cos]]``. Because y points down, a positive angle turns the
  image **clockwise** on screen.
* Warping the moving image into the fixed frame samples the moving image at
  ``T⁻¹(p)`` for every fixed pixel ``p``; a chain of transforms is composed first and
  interpolated once.

Library conventions are converted in :mod:`comir.transform.files` and nowhere else:
ITK/SimpleITK/elastix transforms map fixed → moving points; OpenCV's ``warpAffine`` takes
the forward (moving → fixed) matrix and inverts it itself; ``torch`` ``grid_sample`` uses
normalised coordinates (:func:`functional.grid_sample_matrix`).

The family
----------
:class:`Transform` is the interface (``apply``, ``apply_inverse``, ``inverse``,
``compose``/``@``, ``warp``, ``to_dict``, ``save``). Matrix kinds nest
:class:`RigidTransform` ⊂ :class:`SimilarityTransform` ⊂ :class:`AffineTransform`
(composing two gives the more general one); :class:`CompositeTransform` chains any of
them, including the non-linear :class:`DisplacementField` (:mod:`comir.transform.field`;
a grid of displacements, stored moving → fixed or, as optimisers produce it, fixed →
moving). :mod:`comir.transform.functional` holds the batched matrix functions the rest of
comir builds on.

Examples
--------
>>> import numpy as np
>>> t = RigidTransform.from_params(angle_deg=90.0, translation=(2.0, 0.0), center=(1.0, 1.0))
>>> np.round(t.apply(np.array([[2.0, 1.0]])), 6)  # one pixel right of the centre
array([[3., 2.]])
>>> (t @ t.inverse()).matrix.round(12).tolist()
[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

from comir.transform import functional
from comir.transform.base import Transform
from comir.transform.composite import CompositeTransform, InverseTransform
from comir.transform.field import DisplacementField
from comir.transform.files import (
    displacement_image_array,
    from_elastix_params,
    from_sitk,
    from_sitk_displacement,
    itk_tfm_text,
    load_transform,
    ngff_dict,
    save_itk_tfm,
    save_ngff,
    save_sitk_displacement,
    save_transform,
    to_sitk,
    transform_from_dict,
)
from comir.transform.functional import corner_errors, image_center, patch_corners
from comir.transform.linear import (
    AffineTransform,
    MatrixTransform,
    RigidTransform,
    SimilarityTransform,
    as_kind,
)


def corner_error(
    transform: MatrixTransform, ref_corners: np.ndarray, trans_corners: np.ndarray
) -> float:
    """The public protocol's error of one transform (:func:`functional.corner_errors`)."""
    return float(corner_errors(transform.matrix, trans_corners, ref_corners))


__all__ = [
    "AffineTransform",
    "CompositeTransform",
    "DisplacementField",
    "InverseTransform",
    "MatrixTransform",
    "RigidTransform",
    "SimilarityTransform",
    "Transform",
    "as_kind",
    "corner_error",
    "corner_errors",
    "displacement_image_array",
    "from_elastix_params",
    "from_sitk",
    "from_sitk_displacement",
    "functional",
    "image_center",
    "itk_tfm_text",
    "load_transform",
    "ngff_dict",
    "patch_corners",
    "save_itk_tfm",
    "save_ngff",
    "save_sitk_displacement",
    "save_transform",
    "to_sitk",
    "transform_from_dict",
]
