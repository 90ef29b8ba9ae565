"""Tumour boxes of the Lung-PET-CT-Dx collection as known findings in world coordinates.

The collection marks each tumour with one bounding box per annotated axial slice: an XML
file (PASCAL VOC layout) named by that slice's SOPInstanceUID, holding ``<object>``
elements with a class ``<name>`` (A adenocarcinoma, B small-cell, E large-cell, G squamous)
and pixel ``xmin``/``ymin``/``xmax``/``ymax``. :func:`read_tumour_boxes` reads them and
:func:`boxes_to_findings` joins each class's boxes into one 3D box per tumour, mapped to
world coordinates through the slices' DICOM geometry: the finding's centre is the box
centre and its diameter the box's largest extent, so an insertion keeps clear of the
whole tumour and a detection anywhere on it is ignored by the LUNA16 evaluation.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

TUMOUR_CLASSES = {
    "A": "adenocarcinoma",
    "B": "small-cell carcinoma",
    "E": "large-cell carcinoma",
    "G": "squamous-cell carcinoma",
}
"""The collection's class letters."""


@dataclass(frozen=True)
class TumourBox:
    """One tumour box on one slice.

    Attributes:
        sop_instance_uid: the slice's SOPInstanceUID (the XML file's stem).
        label: the class letter (``A``, ``B``, ``E`` or ``G``).
        x_min, y_min, x_max, y_max: pixel bounds (column x, row y), inclusive.
    """

    sop_instance_uid: str
    label: str
    x_min: int
    y_min: int
    x_max: int
    y_max: int


def read_tumour_boxes(annotation_dir: Path | str) -> list[TumourBox]:
    """Read every ``<SOPInstanceUID>.xml`` of an annotation folder, in file-name order.

    Raises:
        ValueError: the folder holds no XML file, or a file is not a box annotation
            (the message names the file).
    """
    folder = Path(annotation_dir)
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise ValueError(f"{folder}: no tumour-box XML files")
    boxes: list[TumourBox] = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
            for obj in root.iter("object"):
                bnd = obj.find("bndbox")
                if bnd is None:
                    raise ValueError("an <object> without <bndbox>")
                xs = [int(float(bnd.findtext(k, ""))) for k in ("xmin", "ymin", "xmax", "ymax")]
                label = (obj.findtext("name") or "").strip()
                boxes.append(TumourBox(path.stem, label, *xs))
        except (ET.ParseError, ValueError) as exc:
            raise ValueError(f"{path}: not a tumour-box annotation ({exc})") from exc
    return boxes


def _slice_geometry(dicom_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """SOPInstanceUID -> (position, 3x2 in-plane direction matrix scaled by spacing, thickness)."""
    out: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for path in sorted(dicom_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in {".dcm", ""}:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "ImagePositionPatient" not in ds:
            continue
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
        dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
        # pixel (column x, row y) -> position + x * col spacing * row_dir + y * row spacing * col_dir
        axes = np.stack([row_dir * dc, col_dir * dr], axis=1)
        out[str(ds.SOPInstanceUID)] = (
            np.asarray(ds.ImagePositionPatient, dtype=float),
            axes,
            float(getattr(ds, "SliceThickness", 0.0) or 0.0),
        )
    return out


def boxes_to_findings(
    boxes: list[TumourBox], dicom_dir: Path | str, series_uid: str
) -> pd.DataFrame:
    """One known finding per tumour class: the 3D box around its slices' boxes.

    Args:
        boxes: from :func:`read_tumour_boxes`.
        dicom_dir: the series' DICOM folder (for each slice's position and orientation).
        series_uid: the series' SeriesInstanceUID, written into ``seriesuid``.

    Returns:
        Rows ``seriesuid, coordX, coordY, coordZ, diameter_mm, description`` (world mm;
        diameter = the box's largest extent, z extent = slice span + one thickness).

    Boxes of slices that are not in ``dicom_dir`` belong to another series of the study
    (the collection annotates several reconstructions) and are left out; the description
    says how many boxes of the class were used.

    Raises:
        ValueError: no box names a slice of ``dicom_dir``.
    """
    geometry = _slice_geometry(Path(dicom_dir))
    mine = [b for b in boxes if b.sop_instance_uid in geometry]
    if not mine:
        raise ValueError(
            f"{dicom_dir}: none of the {len(boxes)} tumour boxes names a slice of this series"
        )
    rows = []
    for label in sorted({b.label for b in mine}):
        corners = []
        thickness = 0.0
        for box in (b for b in mine if b.label == label):
            origin, axes, thick = geometry[box.sop_instance_uid]
            thickness = max(thickness, thick)
            for x in (box.x_min, box.x_max):
                for y in (box.y_min, box.y_max):
                    corners.append(origin + axes @ np.array([x, y], dtype=float))
        pts = np.asarray(corners)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        hi[2] += thickness / 2
        lo[2] -= thickness / 2
        centre = (lo + hi) / 2
        extent = hi - lo
        n_slices = len({b.sop_instance_uid for b in mine if b.label == label})
        n_other = sum(b.label == label for b in boxes) - sum(b.label == label for b in mine)
        rows.append(
            {
                "seriesuid": series_uid,
                "coordX": round(float(centre[0]), 3),
                "coordY": round(float(centre[1]), 3),
                "coordZ": round(float(centre[2]), 3),
                "diameter_mm": round(float(extent.max()), 1),
                "description": (
                    f"Tumour box ({TUMOUR_CLASSES.get(label, label)}, class {label}) of the collection's "
                    f"annotation: {n_slices} slices of this series ({n_other} boxes on other series left out), {extent[0]:.0f} x {extent[1]:.0f} x {extent[2]:.0f} mm (x, y, z); "
                    "diameter = largest extent"
                ),
            }
        )
    return pd.DataFrame(
        rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "description"]
    )
