"""Regions of interest: ``[offset_x, size_x, offset_y, size_y]``; ``[]`` disables."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np


class RoiError(ValueError):
    """A ROI broke one of the rules; the message names the rule."""


@dataclass(frozen=True, slots=True)
class Roi:
    """A rectangular region; x runs along columns (axis 1), y along rows (axis 0)."""

    offset_x: int
    size_x: int
    offset_y: int
    size_y: int

    @property
    def area(self) -> int:
        return self.size_x * self.size_y

    def as_list(self) -> list[int]:
        return [self.offset_x, self.size_x, self.offset_y, self.size_y]

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices, for ``image[roi.slices()]`` (a view, no copy)."""
        return (
            slice(self.offset_y, self.offset_y + self.size_y),
            slice(self.offset_x, self.offset_x + self.size_x),
        )

    def check_fits(self, shape: Sequence[int], name: str = "roi") -> None:
        """Raise RoiError if the ROI does not fit in an image of ``shape`` (rows, cols)."""
        rows, cols = int(shape[-2]), int(shape[-1])
        if self.offset_x + self.size_x > cols:
            raise RoiError(
                f"{name}: offset_x + size_x must be <= image width "
                f"({self.offset_x} + {self.size_x} > {cols})"
            )
        if self.offset_y + self.size_y > rows:
            raise RoiError(
                f"{name}: offset_y + size_y must be <= image height "
                f"({self.offset_y} + {self.size_y} > {rows})"
            )


def parse_roi(value: Any, shape: Sequence[int] | None = None, name: str = "roi") -> Roi | None:
    """Validate a ROI value; return a Roi, or None for ``[]`` (disabled).

    Rules, each with its own message: exactly 4 values; integers only (no floats or
    bools); offsets >= 0; sizes > 0; offset + size <= image size once ``shape`` is known.
    """
    if isinstance(value, np.ndarray):
        if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.integer):
            if value.size:
                raise RoiError(f"{name}: values must be integers, got dtype {value.dtype}")
        value = value.tolist()
    if value is None:
        return None
    values = list(value)
    if len(values) == 0:
        return None
    if len(values) != 4:
        raise RoiError(
            f"{name}: must have exactly 4 values [offset_x, size_x, offset_y, size_y] "
            f"or none to disable, got {len(values)}"
        )
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral):
            raise RoiError(f"{name}: values must be integers, got {v!r}")
    ox, sx, oy, sy = (int(v) for v in values)
    if ox < 0 or oy < 0:
        raise RoiError(f"{name}: offsets must be >= 0, got offset_x={ox}, offset_y={oy}")
    if sx <= 0 or sy <= 0:
        raise RoiError(f"{name}: sizes must be > 0, got size_x={sx}, size_y={sy}")
    roi = Roi(ox, sx, oy, sy)
    if shape is not None:
        roi.check_fits(shape, name)
    return roi
