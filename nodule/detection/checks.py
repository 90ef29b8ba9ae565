"""Input checks of one study before detection: warnings that are recorded, not errors.

A study that reads and has lungs is processed; what makes its findings less trustworthy
is recorded as a warning in its outputs (:func:`input_warnings`):

=============================  ======================================================
check                          warned when
=============================  ======================================================
thick slices                   slice thickness (or, without one, the slice spacing)
                               above :attr:`InputLimits.max_slice_mm` (2.5 mm)
truncated field of view        lung voxels on the image's left, right, front or back
                               edge (more than :attr:`InputLimits.edge_fraction`)
lungs cut at the top/bottom    the first or last slice holds more than
                               :attr:`InputLimits.end_slice_fraction` of the largest
                               lung cross-section
few lung slices                lung over less than :attr:`InputLimits.min_lung_mm`
not a chest CT                 lung volume below :attr:`InputLimits.min_lung_ml`
=============================  ======================================================

A study without lungs at all fails in the lung stage (:class:`nodule.lung.NoLungFoundError`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nodule.io import Volume
from nodule.lung import LungMask


@dataclass(frozen=True)
class InputLimits:
    """Thresholds of the input checks.

    Attributes:
        max_slice_mm: thicker slices are warned of (LUNA16 excluded scans above 2.5 mm).
        edge_fraction: fraction of lung voxels allowed on the in-plane image edges.
        end_slice_fraction: lung area of the first/last slice, as a fraction of the
            largest, above which the lungs count as cut.
        min_lung_mm: lung height below which the scan covers too little of the chest.
        min_lung_ml: lung volume below which the scan may not be a chest CT.
    """

    max_slice_mm: float = 2.5
    edge_fraction: float = 0.002
    end_slice_fraction: float = 0.25
    min_lung_mm: float = 120.0
    min_lung_ml: float = 1000.0


def input_warnings(volume: Volume, lung: LungMask, limits: InputLimits = InputLimits()) -> list[str]:
    """Warnings about a study's acquisition and coverage (see the module doc).

    Args:
        volume: the CT.
        lung: its lung mask.
        limits: thresholds.

    Returns:
        One sentence per problem found; empty when none.
    """
    out: list[str] = []
    thickness = volume.info.slice_thickness
    spacing_z = volume.spacing[2]
    slice_mm = thickness if thickness else spacing_z
    if slice_mm > limits.max_slice_mm:
        source = "slice thickness" if thickness else "slice spacing"
        out.append(
            f"{source} {slice_mm:.2g} mm is above {limits.max_slice_mm:g} mm: small nodules may be "
            "missed or blurred (the model was trained on thinner slices)"
        )
    lungs = lung.lungs
    total = int(lungs.sum())
    if total == 0:
        return out
    edges = {
        "back or front": int(lungs[:, [0, -1], :].sum()),
        "left or right": int(lungs[:, :, [0, -1]].sum()),
    }
    cut = [side for side, n in edges.items() if n > limits.edge_fraction * total]
    if cut:
        out.append(
            f"truncated field of view: the lungs touch the image's {' and '.join(cut)} edge; "
            "findings near the cut are missed"
        )
    area = lungs.sum(axis=(1, 2))
    top = float(area.max())
    ends = {"first": float(area[0]), "last": float(area[-1])}
    cut_ends = [name for name, a in ends.items() if a > limits.end_slice_fraction * top]
    if cut_ends:
        out.append(
            f"the lungs are cut at the {' and '.join(cut_ends)} slice: the scan does not cover the whole chest"
        )
    rows = np.flatnonzero(area)
    height_mm = (rows[-1] - rows[0] + 1) * spacing_z
    if height_mm < limits.min_lung_mm:
        out.append(
            f"only {len(rows)} slices ({height_mm:.0f} mm) hold lung: the scan covers little of the chest"
        )
    if lung.total_ml < limits.min_lung_ml:
        out.append(
            f"lung volume {lung.total_ml:.0f} ml is below {limits.min_lung_ml:g} ml: is this a chest CT "
            "of an adult?"
        )
    return out
