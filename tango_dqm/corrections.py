"""Mask and dark-image corrections shared by the image analyses (public plugin API).

Declare ``MASK`` and ``DARK`` in an analysis' ``parameters``: identical declarations in
several analyses are one shared parameter, set once on the device. Without a mask or
dark the helpers return the frame's own view: no copy, no cost.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .params import Parameter

MASK = Parameter("mask", "file", label="Mask",
                 description="pixels to exclude: .npy or HDF5 dataset (file.h5#/path), nonzero = excluded")
DARK = Parameter("dark", "file", label="Dark image",
                 description="background image subtracted from every frame: .npy or HDF5 dataset")


def _check(name: str, array: np.ndarray, image: np.ndarray) -> None:
    if array.shape != image.shape[-2:]:
        raise ValueError(f"{name} shape {array.shape} does not match the frame shape {image.shape[-2:]}")


def corrected(image: np.ndarray, params: Any, slices: tuple[slice, slice] | None = None,
              masked_value: float | None = None) -> np.ndarray:
    """``image`` (or its region ``slices``) minus the dark image, masked pixels set to
    ``masked_value`` (left as they are when None). A view when neither is set."""
    dark, mask = params.get("dark"), params.get("mask")
    region = image if slices is None else image[slices]
    if dark is None and (mask is None or masked_value is None):
        return region
    out = region.astype(np.float32)  # signed: a dark can exceed the frame
    if dark is not None:
        _check("dark", dark, image)
        out -= dark if slices is None else dark[slices]
    if mask is not None and masked_value is not None:
        _check("mask", mask, image)
        out[(mask if slices is None else mask[slices]) != 0] = masked_value
    return out


def region_values(image: np.ndarray, params: Any, slices: tuple[slice, slice] | None = None) -> np.ndarray:
    """The dark-corrected values of the unmasked pixels of a region: the 2-D region itself
    when there is no mask (a view without a dark), else a 1-D array of the kept pixels."""
    region = corrected(image, params, slices)
    mask = params.get("mask")
    if mask is None:
        return region
    _check("mask", mask, image)
    return region[(mask if slices is None else mask[slices]) == 0]
