"""Binary morphology of the detectors: ball structuring elements and a fast opening."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ball(radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Boolean ball structuring element of ``radius_mm`` (at least the 6-neighbourhood)."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    r = np.maximum(1, np.round(radius_mm / sp)).astype(int)
    grids = np.ogrid[tuple(slice(-int(k), int(k) + 1) for k in r)]
    d2 = sum((g * s) ** 2 for g, s in zip(grids, sp, strict=True))
    return np.asarray(d2 <= max(radius_mm, float(sp.min())) ** 2 + 1e-9)


def shifted_all(mask: np.ndarray, offsets: np.ndarray, erode: bool) -> np.ndarray:
    """AND (``erode``) or OR of ``mask`` shifted by each offset (z, y, x); outside counts as False."""
    out = np.ones_like(mask) if erode else np.zeros_like(mask)
    n = mask.shape
    for off in offsets:
        # out[p] op= mask[p + off] for erosion; out[p + off] |= mask[p] for dilation
        src = tuple(slice(max(0, int(o)), min(k, k + int(o))) for o, k in zip(off, n, strict=True))
        dst = tuple(slice(max(0, -int(o)), min(k, k - int(o))) for o, k in zip(off, n, strict=True))
        if erode:
            view = np.zeros_like(mask)
            view[dst] = mask[src]
            out &= view
        else:
            out[src] |= mask[dst]
    return out


def binary_open(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Binary opening of ``mask`` with a symmetric ``structure`` (background outside the array).

    The same result as ``scipy.ndimage.binary_opening`` for symmetric structures, by
    shifted logical ANDs / ORs: for the small structures used here (the 6-neighbourhood)
    several times faster than the general filter.
    """
    centre = np.asarray(structure.shape) // 2
    offsets = np.argwhere(structure) - centre
    return shifted_all(shifted_all(mask, offsets, erode=True), offsets, erode=False)
