"""Chains of transforms (global ∘ local) and lazily inverted transforms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from comir.transform.base import Transform


class CompositeTransform(Transform):
    """Transforms applied in order: ``transforms[0]`` first, ``transforms[-1]`` last.

    Adjacent matrix transforms are multiplied out, so a chain of linear maps is one
    matrix; warping evaluates the whole chain per pixel and interpolates once.
    """

    kind = "composite"

    def __init__(self, transforms: Sequence[Transform]) -> None:
        from comir.transform.linear import MatrixTransform

        flat: list[Transform] = []
        for t in transforms:
            for part in t.transforms if isinstance(t, CompositeTransform) else [t]:
                if (
                    flat
                    and isinstance(part, MatrixTransform)
                    and isinstance(flat[-1], MatrixTransform)
                ):
                    flat[-1] = part.compose(flat[-1])
                else:
                    flat.append(part)
        self.transforms: list[Transform] = flat

    def simplified(self) -> Transform:
        """The single transform when the chain collapsed to one, else ``self``."""
        return self.transforms[0] if len(self.transforms) == 1 else self

    def apply(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=float)
        for t in self.transforms:
            p = t.apply(p)
        return p

    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=float)
        for t in reversed(self.transforms):
            p = t.apply_inverse(p)
        return p

    def inverse(self) -> Transform:
        return CompositeTransform([t.inverse() for t in reversed(self.transforms)]).simplified()

    def to_dict(self) -> dict:
        return {"type": self.kind, "transforms": [t.to_dict() for t in self.transforms]}

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        from comir.transform.files import transform_from_dict

        return cls([transform_from_dict(t) for t in d["transforms"]]).simplified()


class InverseTransform(Transform):
    """The inverse of a transform that only knows how to map both ways."""

    kind = "inverse"

    def __init__(self, forward: Transform) -> None:
        self.forward = forward

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.forward.apply_inverse(points)

    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        return self.forward.apply(points)

    def inverse(self) -> Transform:
        return self.forward

    def to_dict(self) -> dict:
        return {"type": self.kind, "of": self.forward.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        from comir.transform.files import transform_from_dict

        return transform_from_dict(d["of"]).inverse()
