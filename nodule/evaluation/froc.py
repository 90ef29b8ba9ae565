"""LUNA16 FROC and CPM, exactly as the official evaluation script, with a bootstrap CI.

Pure functions on DataFrames and arrays, no I/O. The rules (from the official
``noduleCADEvaluationLUNA16.py``, function ``evaluateCAD`` and ``computeFROC``):

* Only scans of the seriesuid list count; detections of other scans are dropped, and so
  are a scan's detections beyond its ``max_marks_per_scan`` (official: 100) most probable
  ones (kept: probability strictly above the 101st highest, so ties there drop all tied).
* A detection hits a finding when its squared distance to the centre is strictly below
  ``(diameter / 2) ** 2``; an unknown (negative) diameter counts as 10 mm. An excluded
  finding may instead be a box (columns ``extentX, extentY, extentZ``: full sizes in mm,
  world axis-aligned, centred on the coordinates; an extension of the official script):
  a detection strictly inside the box is on it.
* Each included nodule hit is one positive scored with its best detection; a detection
  may hit several nodules and then counts for each. Other detections on a nodule are
  ignored (duplicates), detections on excluded findings only are ignored, every other
  detection is a negative (false positive). A missed nodule is only in the denominator.
* ROC over the scored items as ``sklearn.metrics.roc_curve`` (tied scores one point,
  ``drop_intermediate=True``); FP/scan = fpr * negatives / scans and sensitivity =
  tpr * hits / nodules; the sensitivities at 1/8 ... 8 FP/scan come from ``numpy.interp``
  on that curve and the CPM is their mean.
* Bootstrap: resample scans with replacement, recompute the FROC on the resampled items
  (as the official ``computeFROC_bootstrap``), take order-statistic percentiles. For sets
  whose scans are not independent (variants of one patient's CT) the nodules can be
  resampled instead (``bootstrap_unit="nodule"``, see :func:`nodule_resampler`).

Undefined cases the official script turns into NaN or a crash are defined here: no
detection hit (or no detection at all) gives sensitivity 0; no nodule gives NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from nodule.data.luna16 import COORD_COLUMNS, Luna16FormatError, validate_table

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The seven FP/scan operating points of the CPM."""
OFFICIAL_MAX_MARKS_PER_SCAN = 100
"""``maxNumberOfCADMarks`` of the official script."""
UNKNOWN_DIAMETER_MM = 10.0
"""Diameter used for a finding whose diameter is unknown (negative)."""
BAND_GRID: NDArray[np.float64] = np.exp2(np.arange(-120, 121) / 40.0)
"""FP/scan grid of the bootstrap band: 1/8 to 8, 40 points an octave, the powers of 2 exact."""
EXTENT_COLUMNS: tuple[str, str, str] = ("extentX", "extentY", "extentZ")
"""Optional columns of an excluded table: full box size in mm (world axes); all three make a box."""

BootstrapUnit = Literal["scan", "nodule"]
"""What a bootstrap resample draws with replacement: scans, or nodules (with their scans' FPs)."""
BOOTSTRAP_UNITS: tuple[BootstrapUnit, ...] = ("scan", "nodule")

TRUE_POSITIVE = "true_positive"
DUPLICATE = "duplicate"
EXCLUDED_FINDING = "excluded_finding"
FALSE_POSITIVE = "false_positive"
OVER_CAP = "over_cap"
SCAN_NOT_LISTED = "scan_not_listed"
DETECTION_STATUSES = (
    TRUE_POSITIVE,
    FALSE_POSITIVE,
    DUPLICATE,
    EXCLUDED_FINDING,
    OVER_CAP,
    SCAN_NOT_LISTED,
)


@dataclass(frozen=True)
class ScoredItems:
    """The items the FROC is computed from, with their scan.

    Attributes:
        scores: probability of each item (hit nodules: their best detection; negatives).
        positive: True for a hit nodule, False for a false positive.
        scan: index of the item's scan in the seriesuid list.
        nodules_per_scan: included nodules of each listed scan (hit or missed).
        nodule: for a hit, its nodule's index in ``nodule_scan`` (the row of
            :attr:`Matching.nodules`); -1 for a false positive.
        nodule_scan: the scan of each included nodule of the listed scans (hit or missed).
    """

    scores: NDArray[np.float64]
    positive: NDArray[np.bool_]
    scan: NDArray[np.int64]
    nodules_per_scan: NDArray[np.int64]
    nodule: NDArray[np.int64]
    nodule_scan: NDArray[np.int64]


@dataclass(frozen=True)
class ResampleWeights:
    """Weights of one bootstrap resample, given by scan and by nodule (not by a submission's items).

    Attributes:
        nodule: weight of each included nodule (index as :attr:`ScoredItems.nodule_scan`);
            a hit item is weighted by its nodule's.
        scan: weight of each scan's false positives.
        n_nodules: sensitivity denominator of the resample.
        n_scans: FP/scan divisor of the resample.
    """

    nodule: NDArray[np.float64]
    scan: NDArray[np.float64]
    n_nodules: float
    n_scans: float


WeightDraw = Callable[[np.random.Generator], ResampleWeights]
"""Draws the weights of one bootstrap resample from a random generator."""


@dataclass(frozen=True)
class FrocCurve:
    """FROC points: FP per scan, sensitivity and the score threshold of each point."""

    fps: NDArray[np.float64]
    sensitivity: NDArray[np.float64]
    thresholds: NDArray[np.float64]


@dataclass(frozen=True)
class FrocBand:
    """Bootstrap band of the FROC on a common FP/scan grid (order-statistic percentiles)."""

    fps: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    mean: NDArray[np.float64]


@dataclass(frozen=True)
class FrocEstimate:
    """FROC of scored items with its bootstrap intervals (see :func:`estimate_froc`).

    Attributes:
        curve: the FROC points.
        sensitivities: ``{fp_rate: sensitivity}``.
        cpm: mean of the sensitivities.
        cpm_ci95: bootstrap 95% interval of the CPM, None without bootstrap.
        sensitivity_ci95: ``{fp_rate: (lo, hi)}``, None without bootstrap.
        band: bootstrap band on :data:`BAND_GRID`, None without bootstrap.
    """

    curve: FrocCurve
    sensitivities: dict[float, float]
    cpm: float
    cpm_ci95: tuple[float, float] | None
    sensitivity_ci95: dict[float, tuple[float, float]] | None
    band: FrocBand | None


@dataclass(frozen=True)
class Matching:
    """Detections matched to findings.

    Attributes:
        items: the FROC's scored items.
        nodules: every included nodule of the listed scans, with ``hit``, ``probability``
            (best detection, NaN when missed), ``detection_id`` (-1 when missed), ``n_matching``.
        detections: every detection with ``detection_id`` (row in the predictions), ``status``
            (one of :data:`DETECTION_STATUSES`) and ``nodule_id`` (first included nodule hit, -1).
    """

    items: ScoredItems
    nodules: pd.DataFrame
    detections: pd.DataFrame


@dataclass(frozen=True)
class FrocResult:
    """Result of :func:`evaluate_froc`.

    Attributes:
        cpm: mean sensitivity over :data:`FP_RATES`.
        sensitivities: ``{fp_rate: sensitivity}``.
        cpm_ci95: bootstrap 95% interval of the CPM, None without bootstrap.
        sensitivity_ci95: ``{fp_rate: (lo, hi)}``, None without bootstrap.
        n_scans: scans evaluated (the FP/scan divisor).
        n_nodules: included nodules in those scans.
        n_detections: detections evaluated (listed scans, within the per-scan cap).
        n_hits: nodules hit.
        n_false_positives: detections counted as false positives.
        n_duplicates: further detections on a hit nodule, ignored.
        n_excluded_hits: detections on excluded findings only, ignored.
        n_over_cap: detections dropped by the per-scan cap.
        n_not_listed: detections of scans outside the list, dropped.
        seriesuids: the scans evaluated.
        seriesuids_given: False when the scans were taken from annotations and predictions.
        max_marks_per_scan: the cap applied (None: none).
        n_bootstrap: bootstrap resamples (0: none).
        seed: seed of the bootstrap.
        curve: the FROC points.
        band: the bootstrap band, None without bootstrap.
        nodules: per-nodule table (see :class:`Matching`).
        detections: per-detection table (see :class:`Matching`).
        bootstrap_unit: what the bootstrap resampled: ``scan`` or ``nodule``.
        items: the scored items the FROC was computed from (for subgroup FROCs).
    """

    cpm: float
    sensitivities: dict[float, float]
    cpm_ci95: tuple[float, float] | None
    sensitivity_ci95: dict[float, tuple[float, float]] | None
    n_scans: int
    n_nodules: int
    n_detections: int
    n_hits: int
    n_false_positives: int
    n_duplicates: int
    n_excluded_hits: int
    n_over_cap: int
    n_not_listed: int
    seriesuids: list[str]
    seriesuids_given: bool
    max_marks_per_scan: int | None
    n_bootstrap: int
    seed: int
    curve: FrocCurve
    band: FrocBand | None = None
    nodules: pd.DataFrame = field(default_factory=pd.DataFrame)
    detections: pd.DataFrame = field(default_factory=pd.DataFrame)
    bootstrap_unit: BootstrapUnit = "scan"
    items: ScoredItems | None = None


# --------------------------------------------------------------------------- ROC / FROC


def _ranked_groups(scores: NDArray[np.float64]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Order of the scores, descending, and the last position of each group of equal scores."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    ends = (
        np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
        if ranked.size
        else np.zeros(0, np.intp)
    )
    return order, ends.astype(np.intp)


def _curve_from_counts(
    tps: NDArray[np.float64],
    fps: NDArray[np.float64],
    thresholds: NDArray[np.float64],
    n_nodules: float,
    n_scans: float,
    totals: tuple[float, float] | None = None,
) -> FrocCurve:
    """FROC from cumulative TP / FP counts at each distinct threshold (sklearn ``roc_curve`` steps).

    ``totals`` = (hits, negatives) of the whole item list when the counts are only a prefix of it.
    """
    if tps.size > 2:  # drop_intermediate=True: drop points collinear with their neighbours
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    first = thresholds[0] + 1 if thresholds.size else np.inf
    tps, fps, thresholds = np.r_[0.0, tps], np.r_[0.0, fps], np.r_[first, thresholds]
    n_hits, n_negatives = totals if totals is not None else (tps[-1], fps[-1])
    if n_negatives > 0:
        fpr = fps / n_negatives
        fp_per_scan = fpr * n_negatives / n_scans  # official: fpr * (candidates - hits) / images
    else:  # official border case: no false positives at all
        fp_per_scan = np.zeros_like(fps)
    if n_nodules <= 0:
        sensitivity = np.full_like(tps, np.nan)
    elif n_hits > 0:
        tpr = tps / n_hits
        sensitivity = (tpr * n_hits) / n_nodules
    else:
        sensitivity = np.zeros_like(tps)
    return FrocCurve(fp_per_scan, sensitivity, thresholds)


def froc_curve(
    scores: NDArray[np.float64],
    positive: NDArray[np.bool_],
    n_nodules: int,
    n_scans: int,
) -> FrocCurve:
    """FROC curve of scored items as the official ``computeFROC``.

    Args:
        scores: score of each item (hit nodules and false positives only).
        positive: True for a hit nodule.
        n_nodules: all included nodules (hit or missed): the sensitivity's denominator.
        n_scans: scans evaluated: the FP/scan divisor.

    Returns:
        The curve, starting at (0, 0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order, ends = _ranked_groups(scores)
    tps = np.cumsum(positive[order], dtype=np.float64)[ends]
    fps = (ends + 1).astype(np.float64) - tps
    return _curve_from_counts(tps, fps, scores[order][ends], float(n_nodules), float(n_scans))


def sensitivities_at(curve: FrocCurve, fp_rates: Sequence[float] = FP_RATES) -> NDArray[np.float64]:
    """Sensitivity at each FP/scan rate, linear interpolation over the curve's points (``numpy.interp``)."""
    return np.interp(np.asarray(fp_rates, dtype=np.float64), curve.fps, curve.sensitivity)


def competition_performance_metric(curve: FrocCurve, fp_rates: Sequence[float] = FP_RATES) -> float:
    """CPM: mean sensitivity at the FP/scan rates (default the seven LUNA16 ones)."""
    return float(np.mean(sensitivities_at(curve, fp_rates)))


# --------------------------------------------------------------------------- matching


def _cap_marks(scan: NDArray[np.int64], prob: NDArray[np.float64], cap: int) -> NDArray[np.bool_]:
    """Official ``maxNumberOfCADMarks``: in a scan with more than ``cap`` marks keep those above the (cap+1)-th score."""
    keep = np.ones(scan.size, dtype=bool)
    if scan.size == 0:
        return keep
    counts = np.bincount(scan)
    capped = np.flatnonzero(counts > cap)
    if capped.size == 0:
        return keep
    order = np.lexsort((-prob, scan))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    threshold = np.full(counts.size, -np.inf)
    threshold[capped] = prob[order[starts[capped] + cap]]
    in_capped = np.isin(scan, capped)
    keep[in_capped] = prob[in_capped] > threshold[scan[in_capped]]
    return keep


def _squared_distances(
    findings: NDArray[np.float64], points: NDArray[np.float64]
) -> NDArray[np.float64]:
    """(n_findings, n_points) squared distances summed x, y, z in that order (as the official script)."""
    d = findings[:, None, :] - points[None, :, :]
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


def _radius_squared(diameter: NDArray[np.float64]) -> NDArray[np.float64]:
    d = np.where(diameter < 0.0, UNKNOWN_DIAMETER_MM, diameter)
    r = d / 2.0
    return r * r


@dataclass(frozen=True)
class FindingRegions:
    """The regions of findings: spheres, or axis-aligned boxes (see :func:`finding_regions`).

    Attributes:
        centre: (n, 3) world x, y, z in mm.
        radius2: (n,) squared sphere radius (diameter / 2; unknown diameter: 10 mm).
        half_extent: (n, 3) half box sizes in mm; a row of NaN is a sphere.
    """

    centre: NDArray[np.float64]
    radius2: NDArray[np.float64]
    half_extent: NDArray[np.float64]

    def take(self, rows: NDArray[np.intp] | NDArray[np.int64]) -> FindingRegions:
        """The regions of the given rows."""
        return FindingRegions(self.centre[rows], self.radius2[rows], self.half_extent[rows])

    def contains(self, points: NDArray[np.float64]) -> NDArray[np.bool_]:
        """(n_regions, n_points): point strictly inside the sphere (squared distance below the
        squared radius, as the official script) or strictly inside the box (every axis)."""
        inside: NDArray[np.bool_] = _squared_distances(self.centre, points) < self.radius2[:, None]
        box = np.flatnonzero(~np.isnan(self.half_extent[:, 0]))
        if box.size:
            offset = np.abs(self.centre[box, None, :] - points[None, :, :])
            inside[box] = (offset < self.half_extent[box, None, :]).all(axis=-1)
        return inside


def finding_regions(
    table: pd.DataFrame, boxes: bool = True, source: str = "<table>"
) -> FindingRegions:
    """Regions of a findings table (coordX/Y/Z, diameter_mm, optional extentX/Y/Z).

    A row with all three :data:`EXTENT_COLUMNS` given (not NaN or empty) is a box of those
    full sizes (mm, world axes) centred on its coordinates; any other row is a sphere of
    its diameter (negative: :data:`UNKNOWN_DIAMETER_MM`).

    Args:
        table: the findings (a checked LUNA16 annotations or excluded table).
        boxes: read the extent columns; False makes every row a sphere (included nodules).
        source: name used in error messages.

    Returns:
        The regions, one per row in table order.

    Raises:
        Luna16FormatError: an extent that is not a number, negative or infinite, or a row
            with only some of the three extents.
    """
    n = len(table)
    half = np.full((n, 3), np.nan)
    if boxes and any(c in table.columns for c in EXTENT_COLUMNS):
        for axis, column in enumerate(EXTENT_COLUMNS):
            if column not in table.columns:
                continue
            raw = table[column].reset_index(drop=True)
            blank = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
            values = pd.to_numeric(raw.where(~blank), errors="coerce").to_numpy(np.float64)
            bad = np.isnan(values) & ~blank
            bad |= ~blank & ((values < 0.0) | np.isinf(values))
            if bad.any():
                row = int(np.argmax(bad))
                raise Luna16FormatError(
                    source,
                    f"row {row}: extent must be a finite size >= 0 mm, got {raw.iloc[row]!r}",
                    column=column,
                )
            half[:, axis] = values / 2.0
        given = ~np.isnan(half)
        partial = given.any(axis=1) & ~given.all(axis=1)
        if partial.any():
            raise Luna16FormatError(
                source,
                f"row {int(np.argmax(partial))}: a box needs all of {list(EXTENT_COLUMNS)}, "
                "this row gives only some",
            )
    return FindingRegions(
        table[list(COORD_COLUMNS)].to_numpy(dtype=np.float64).reshape(n, 3),
        _radius_squared(table["diameter_mm"].to_numpy(dtype=np.float64)),
        half,
    )


def _scan_slices(
    scan: NDArray[np.int64], n_scans: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Rows sorted by scan (stable) and the start / stop of each scan in that order."""
    order = np.argsort(scan, kind="stable")
    bounds = np.searchsorted(scan[order], np.arange(n_scans + 1))
    return order, bounds[:-1], bounds[1:]


def match_detections(
    predictions: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
    seriesuids: Sequence[str],
    max_marks_per_scan: int | None = OFFICIAL_MAX_MARKS_PER_SCAN,
) -> Matching:
    """Match detections to included nodules and excluded findings, scan by scan.

    Args:
        predictions: checked submission (seriesuid, coordX, coordY, coordZ, probability).
        annotations: checked included nodules (seriesuid, coords, diameter_mm).
        excluded: checked excluded findings (spheres, or boxes: see :func:`finding_regions`), or None.
        seriesuids: the scans evaluated (unique).
        max_marks_per_scan: keep at most this many most probable detections a scan; None: all.

    Returns:
        The scored items and the per-nodule and per-detection tables.
    """
    uid_index = pd.Index(list(seriesuids))
    n_scans = len(uid_index)
    coords = ["coordX", "coordY", "coordZ"]

    det_scan_all = uid_index.get_indexer(pd.Index(predictions["seriesuid"])).astype(np.int64)
    det_xyz = predictions[coords].to_numpy(dtype=np.float64)
    det_prob = predictions["probability"].to_numpy(dtype=np.float64)
    status = np.full(len(predictions), FALSE_POSITIVE, dtype=object)
    status[det_scan_all < 0] = SCAN_NOT_LISTED
    det_nodule = np.full(len(predictions), -1, dtype=np.int64)
    listed = np.flatnonzero(det_scan_all >= 0)
    if max_marks_per_scan is not None:
        keep = _cap_marks(det_scan_all[listed], det_prob[listed], max_marks_per_scan)
        status[listed[~keep]] = OVER_CAP
        listed = listed[keep]
    det_scan = det_scan_all[listed]

    nod_scan_all = uid_index.get_indexer(pd.Index(annotations["seriesuid"])).astype(np.int64)
    nod_rows = np.flatnonzero(nod_scan_all >= 0)
    nod_scan = nod_scan_all[nod_rows]
    nod_xyz = annotations[coords].to_numpy(dtype=np.float64)[nod_rows]
    nod_r2 = _radius_squared(annotations["diameter_mm"].to_numpy(dtype=np.float64)[nod_rows])
    if excluded is not None and len(excluded):
        exc_scan_all = uid_index.get_indexer(pd.Index(excluded["seriesuid"])).astype(np.int64)
        exc_rows = np.flatnonzero(exc_scan_all >= 0)
        exc_scan = exc_scan_all[exc_rows]
        exc_regions = finding_regions(excluded, source="excluded").take(exc_rows)
    else:
        exc_scan = np.zeros(0, np.int64)
        exc_regions = FindingRegions(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)))

    best_prob = np.full(nod_rows.size, np.nan)
    best_det = np.full(nod_rows.size, -1, dtype=np.int64)
    n_matching = np.zeros(nod_rows.size, dtype=np.int64)
    d_order, d_start, d_stop = _scan_slices(det_scan, n_scans)
    n_order, n_start, n_stop = _scan_slices(nod_scan, n_scans)
    e_order, e_start, e_stop = _scan_slices(exc_scan, n_scans)
    for s in np.flatnonzero((d_stop > d_start) & ((n_stop > n_start) | (e_stop > e_start))):
        dets = listed[d_order[d_start[s] : d_stop[s]]]  # file order within the scan
        points = det_xyz[dets]
        ex = e_order[e_start[s] : e_stop[s]]
        on_excluded: NDArray[np.bool_] = np.asarray(
            exc_regions.take(ex).contains(points).any(axis=0)
        )
        on_nodule: NDArray[np.bool_] = np.zeros(dets.size, dtype=bool)
        if n_stop[s] > n_start[s]:
            nods = n_order[n_start[s] : n_stop[s]]
            hits = _squared_distances(nod_xyz[nods], points) < nod_r2[nods, None]
            on_nodule = np.asarray(hits.any(axis=0))
            first_nodule = np.argmax(hits, axis=0)
            det_nodule[dets[on_nodule]] = nod_rows[nods[first_nodule[on_nodule]]]
            n_matching[nods] = hits.sum(axis=1)
            masked = np.where(hits, det_prob[dets][None, :], -np.inf)
            best = np.argmax(masked, axis=1)  # first of the best in file order
            found = hits.any(axis=1)
            best_det[nods[found]] = dets[best[found]]
            best_prob[nods[found]] = det_prob[dets[best[found]]]
        status[dets[on_nodule]] = DUPLICATE
        status[dets[~on_nodule & on_excluded]] = EXCLUDED_FINDING
    hit = best_det >= 0
    status[best_det[hit]] = TRUE_POSITIVE

    fp = listed[status[listed] == FALSE_POSITIVE]
    items = ScoredItems(
        scores=np.r_[best_prob[hit], det_prob[fp]].astype(np.float64),
        positive=np.r_[np.ones(int(hit.sum()), bool), np.zeros(fp.size, bool)],
        scan=np.r_[nod_scan[hit], det_scan_all[fp]].astype(np.int64),
        nodules_per_scan=np.bincount(nod_scan, minlength=n_scans).astype(np.int64),
        nodule=np.r_[np.flatnonzero(hit), np.full(fp.size, -1)].astype(np.int64),
        nodule_scan=nod_scan.astype(np.int64),
    )
    nodules = annotations.iloc[nod_rows][["seriesuid", *coords, "diameter_mm"]].reset_index(
        drop=True
    )
    nodules.insert(0, "nodule_id", nod_rows)
    nodules["hit"] = hit
    nodules["probability"] = best_prob
    nodules["detection_id"] = best_det
    nodules["n_matching"] = n_matching
    detections = predictions[["seriesuid", *coords, "probability"]].reset_index(drop=True)
    detections.insert(0, "detection_id", np.arange(len(predictions)))
    detections["status"] = status.astype(str)
    detections["nodule_id"] = det_nodule
    return Matching(items, nodules, detections)


# --------------------------------------------------------------------------- bootstrap


def percentile_interval(
    values: NDArray[np.float64], confidence: float = 0.95
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Official order-statistic interval along axis 0: sorted[floor(p n)], sorted[floor((1 - p) n)], NaN rows dropped.

    Args:
        values: (n_resamples, ...) bootstrap values.
        confidence: coverage of the interval.

    Returns:
        ``(lower, upper)`` of shape ``values.shape[1:]`` (NaN where every value is NaN).
    """
    p = (1.0 - confidence) / 2.0
    lo = np.full(values.shape[1:], np.nan)
    hi = np.full(values.shape[1:], np.nan)
    for j in np.ndindex(values.shape[1:]):
        column = values[(slice(None), *j)]
        column = np.sort(column[~np.isnan(column)])
        if column.size:
            lo[j] = column[int(np.floor(p * column.size))]
            hi[j] = column[min(int(np.floor((1.0 - p) * column.size)), column.size - 1)]
    return lo, hi


def scan_resampler(nodule_scan: NDArray[np.int64], n_scans: int) -> WeightDraw:
    """Resampling of scans with replacement (the official bootstrap).

    A resample draws ``rng.integers(0, n_scans, n_scans)``; a scan drawn c times weighs c:
    its hit nodules and false positives count c times and its nodules c times in the
    sensitivity denominator; the FP/scan divisor stays ``n_scans``.

    Args:
        nodule_scan: the scan of each included nodule (:attr:`ScoredItems.nodule_scan`).
        n_scans: scans evaluated.

    Returns:
        The draw of one resample's weights.
    """
    nodule_scan = np.asarray(nodule_scan, dtype=np.int64)

    def draw(rng: np.random.Generator) -> ResampleWeights:
        counts = np.bincount(rng.integers(0, n_scans, size=n_scans), minlength=n_scans)
        scan_w = counts.astype(np.float64)
        nodule_w = scan_w[nodule_scan]
        return ResampleWeights(nodule_w, scan_w, float(nodule_w.sum()), float(n_scans))

    return draw


def nodule_resampler(nodule_scan: NDArray[np.int64], n_scans: int) -> WeightDraw:
    """Resampling of nodules with replacement, the false positives of their scans going with them.

    For sets whose scans are not independent (many variants of one patient's CT). A
    resample draws ``rng.integers(0, N, N)`` over the N included nodules; nodule j drawn
    w_j times weighs w_j. Scan s with n_s nodules weighs W_s = (sum of its w_j) / n_s: each
    of its false positives counts W_s times and it counts W_s times in the FP/scan divisor.
    A scan without nodules has no nodule to travel with: its false positives and its place
    in the divisor keep weight 1 in every resample. The sensitivity denominator is N. With
    every w_j = 1 this is the point estimate.

    Args:
        nodule_scan: the scan of each included nodule (:attr:`ScoredItems.nodule_scan`).
        n_scans: scans evaluated.

    Returns:
        The draw of one resample's weights.
    """
    nodule_scan = np.asarray(nodule_scan, dtype=np.int64)
    n = nodule_scan.size
    per_scan = np.bincount(nodule_scan, minlength=n_scans)
    with_nodules = per_scan > 0

    def draw(rng: np.random.Generator) -> ResampleWeights:
        if n:
            nodule_w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        else:
            nodule_w = np.zeros(0)
        return nodule_weights(nodule_w, nodule_scan, n_scans, per_scan, with_nodules)

    return draw


def nodule_weights(
    nodule_w: NDArray[np.float64],
    nodule_scan: NDArray[np.int64],
    n_scans: int,
    per_scan: NDArray[np.int64] | None = None,
    with_nodules: NDArray[np.bool_] | None = None,
) -> ResampleWeights:
    """The resample weights of given nodule weights (see :func:`nodule_resampler`).

    Args:
        nodule_w: weight of each included nodule (times drawn).
        nodule_scan: the scan of each included nodule.
        n_scans: scans evaluated.
        per_scan: included nodules of each scan (computed when None).
        with_nodules: ``per_scan > 0`` (computed when None).

    Returns:
        Nodule weights, scan weights W_s (1 for scans without nodules), N and sum of W_s.
    """
    if per_scan is None:
        per_scan = np.bincount(nodule_scan, minlength=n_scans)
    if with_nodules is None:
        with_nodules = per_scan > 0
    scan_w = np.ones(n_scans)
    totals = np.bincount(nodule_scan, weights=nodule_w, minlength=n_scans)
    scan_w[with_nodules] = totals[with_nodules] / per_scan[with_nodules]
    return ResampleWeights(
        np.asarray(nodule_w, dtype=np.float64), scan_w, float(nodule_scan.size), float(scan_w.sum())
    )


def resampler(items: ScoredItems, bootstrap_unit: BootstrapUnit = "scan") -> WeightDraw:
    """The resample draw of a bootstrap unit for these items' scans and nodules.

    Raises:
        ValueError: an unknown unit.
    """
    n_scans = items.nodules_per_scan.size
    if bootstrap_unit == "scan":
        return scan_resampler(items.nodule_scan, n_scans)
    if bootstrap_unit == "nodule":
        return nodule_resampler(items.nodule_scan, n_scans)
    raise ValueError(f"bootstrap_unit must be one of {BOOTSTRAP_UNITS}, got {bootstrap_unit!r}")


class _RankedItems:
    """Items ranked once, read as a FROC under any resample weights.

    Only the best-ranked tie groups that reach past the largest FP/scan rate needed are
    accumulated (all of them when a resample needs it).
    """

    def __init__(self, items: ScoredItems, max_rate: float) -> None:
        n_scans = items.nodules_per_scan.size
        order, self.ends = _ranked_groups(items.scores)
        self.scan = items.scan[order]
        self.positive = items.positive[order]
        self.nodule = items.nodule[order]
        self.thresholds = items.scores[order][self.ends]
        self.hit_nodules = items.nodule[items.positive]
        self.negatives_per_scan = np.bincount(
            items.scan[~items.positive], minlength=n_scans
        ).astype(np.float64)
        self.max_rate = max_rate
        # prefix of groups holding about twice the negatives needed to pass max_rate
        negatives_at_ends = (
            np.cumsum(~self.positive)[self.ends] if self.ends.size else np.zeros(0, np.int64)
        )
        self.n_prefix = min(
            int(np.searchsorted(negatives_at_ends, 2.0 * max_rate * n_scans, side="right")) + 1,
            self.ends.size,
        )

    def _curve(
        self, weights: ResampleWeights, n_groups: int, totals: tuple[float, float]
    ) -> FrocCurve:
        stop = int(self.ends[n_groups - 1]) + 1 if n_groups else 0
        pos = self.positive[:stop]
        w = weights.scan[self.scan[:stop]]
        w[pos] = weights.nodule[self.nodule[:stop][pos]]
        group_ends = self.ends[:n_groups]
        tps = np.cumsum(np.where(pos, w, 0.0))[group_ends]
        fps = np.cumsum(np.where(pos, 0.0, w))[group_ends]
        drawn = np.diff(np.r_[0.0, tps + fps]) > 0  # tie groups present in the resample
        return _curve_from_counts(
            tps[drawn],
            fps[drawn],
            self.thresholds[:n_groups][drawn],
            weights.n_nodules,
            weights.n_scans,
            totals,
        )

    def curve(self, weights: ResampleWeights) -> FrocCurve:
        """The FROC of the items weighted by one resample (up to past the largest rate)."""
        totals = (
            float(weights.nodule[self.hit_nodules].sum()),
            float(np.dot(weights.scan, self.negatives_per_scan)),
        )
        curve = self._curve(weights, self.n_prefix, totals)
        if self.n_prefix < self.ends.size and not curve.fps[-1] > self.max_rate:
            curve = self._curve(weights, self.ends.size, totals)
        return curve


def bootstrap_frocs(
    items: Sequence[ScoredItems],
    n_bootstrap: int,
    seed: int,
    grid: NDArray[np.float64] = BAND_GRID,
    fp_rates: Sequence[float] = FP_RATES,
    *,
    bootstrap_unit: BootstrapUnit = "scan",
    draw: WeightDraw | None = None,
) -> list[tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Bootstrap FROCs of several submissions on the same scans, each resample applied to all (paired).

    Each resample draws weights by scan and nodule once (``draw``) and weights the items
    of every submission with them: a hit item takes its nodule's weight, a false positive
    its scan's. This equals recomputing the FROC on the resampled scans' items (the
    official ``generateBootstrapSet`` + ``computeFROC``) without re-matching.

    Args:
        items: scored items of each submission, all matched against the same nodules and scans.
        n_bootstrap: number of resamples.
        seed: seed of ``numpy.random.default_rng`` passed to ``draw``.
        grid: FP/scan points at which each resampled curve is also interpolated.
        fp_rates: operating points.
        bootstrap_unit: ``scan`` (:func:`scan_resampler`) or ``nodule`` (:func:`nodule_resampler`).
        draw: draws one resample's weights from the generator; overrides ``bootstrap_unit``.

    Returns:
        Per submission ``(sens_at_rates, sens_on_grid)`` of shapes (n_bootstrap, len(fp_rates))
        and (n_bootstrap, len(grid)).

    Raises:
        ValueError: submissions matched against different nodules or scans, or an unknown unit.
    """
    if not items:
        return []
    first = items[0]
    for other in items[1:]:
        if other.nodules_per_scan.size != first.nodules_per_scan.size or not np.array_equal(
            other.nodule_scan, first.nodule_scan
        ):
            raise ValueError("paired bootstrap needs items of the same scans and nodules")
    if draw is None:
        draw = resampler(first, bootstrap_unit)
    rng = np.random.default_rng(seed)
    rates = np.asarray(fp_rates, dtype=np.float64)
    max_rate = float(max(rates.max(initial=0.0), grid.max(initial=0.0)))
    ranked = [_RankedItems(it, max_rate) for it in items]
    out = [(np.empty((n_bootstrap, rates.size)), np.empty((n_bootstrap, grid.size))) for _ in items]
    for b in range(n_bootstrap):
        weights = draw(rng)
        for one, (at_rates, on_grid) in zip(ranked, out, strict=True):
            curve = one.curve(weights)
            at_rates[b] = np.interp(rates, curve.fps, curve.sensitivity)
            on_grid[b] = np.interp(grid, curve.fps, curve.sensitivity)
    return out


def bootstrap_froc(
    items: ScoredItems,
    n_bootstrap: int,
    seed: int,
    grid: NDArray[np.float64] = BAND_GRID,
    fp_rates: Sequence[float] = FP_RATES,
    *,
    bootstrap_unit: BootstrapUnit = "scan",
    draw: WeightDraw | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FROC of bootstrap resamples of one submission (:func:`bootstrap_frocs` of one).

    With ``bootstrap_unit="scan"`` resample b draws ``rng.integers(0, n_scans, n_scans)``
    (the scans, with replacement); with ``"nodule"`` it draws the nodules
    (:func:`nodule_resampler`).

    Args:
        items: scored items with their scans.
        n_bootstrap: number of resamples.
        seed: seed of ``numpy.random.default_rng``.
        grid: FP/scan points at which each resampled curve is also interpolated.
        fp_rates: operating points.
        bootstrap_unit: ``scan`` or ``nodule``.
        draw: draws one resample's weights from the generator; overrides ``bootstrap_unit``.

    Returns:
        ``(sens_at_rates, sens_on_grid)`` of shapes (n_bootstrap, len(fp_rates)) and (n_bootstrap, len(grid)).
    """
    return bootstrap_frocs(
        [items], n_bootstrap, seed, grid, fp_rates, bootstrap_unit=bootstrap_unit, draw=draw
    )[0]


def restrict_to_nodules(items: ScoredItems, keep: NDArray[np.bool_]) -> ScoredItems:
    """The items of a subgroup FROC: only the kept nodules are included, the others are excluded.

    Equal to matching again with the other included nodules moved to the excluded
    findings: a nodule's best detection does not depend on the other nodules, detections
    on the other nodules become ignored, and the false positives stay those of all scans.

    Args:
        items: items of the full matching.
        keep: per included nodule (:attr:`ScoredItems.nodule_scan` order), True to keep it.

    Returns:
        Items with the hits of the kept nodules (renumbered) and every false positive.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != items.nodule_scan.shape:
        raise ValueError(f"keep has {keep.size} values for {items.nodule_scan.size} nodules")
    new_index = np.cumsum(keep) - 1
    kept_hit = np.zeros(items.scores.size, dtype=bool)
    kept_hit[items.positive] = keep[items.nodule[items.positive]]
    rows = ~items.positive | kept_hit
    nodule = np.full(items.scores.size, -1, dtype=np.int64)
    nodule[kept_hit] = new_index[items.nodule[kept_hit]]
    nodule_scan = items.nodule_scan[keep]
    return ScoredItems(
        scores=items.scores[rows],
        positive=items.positive[rows],
        scan=items.scan[rows],
        nodules_per_scan=np.bincount(nodule_scan, minlength=items.nodules_per_scan.size).astype(
            np.int64
        ),
        nodule=nodule[rows],
        nodule_scan=nodule_scan,
    )


def estimate_froc(
    items: ScoredItems,
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    bootstrap_unit: BootstrapUnit = "scan",
    draw: WeightDraw | None = None,
) -> FrocEstimate:
    """FROC, sensitivities, CPM and their bootstrap intervals from scored items.

    Args:
        items: scored items (:func:`match_detections`, :func:`restrict_to_nodules`).
        n_bootstrap: bootstrap resamples (0: no interval).
        seed: seed of the bootstrap.
        bootstrap_unit: ``scan`` or ``nodule`` (see :func:`bootstrap_froc`).
        draw: draws one resample's weights; overrides ``bootstrap_unit``.

    Returns:
        The estimate.
    """
    n_scans = items.nodules_per_scan.size
    curve = froc_curve(items.scores, items.positive, int(items.nodules_per_scan.sum()), n_scans)
    sens = sensitivities_at(curve)
    cpm_ci = sens_ci = band = None
    if n_bootstrap > 0 and n_scans:
        at_rates, on_grid = bootstrap_froc(
            items, n_bootstrap, seed, bootstrap_unit=bootstrap_unit, draw=draw
        )
        lo, hi = percentile_interval(np.c_[at_rates.mean(axis=1), at_rates])
        cpm_ci = (float(lo[0]), float(hi[0]))
        sens_ci = {r: (float(lo[i + 1]), float(hi[i + 1])) for i, r in enumerate(FP_RATES)}
        band_lo, band_hi = percentile_interval(on_grid)
        valid = ~np.isnan(on_grid)
        with np.errstate(invalid="ignore", divide="ignore"):
            band_mean = np.where(valid, on_grid, 0.0).sum(axis=0) / valid.sum(axis=0)
        band = FrocBand(BAND_GRID.copy(), band_lo, band_hi, band_mean)
    return FrocEstimate(
        curve=curve,
        sensitivities={r: float(v) for r, v in zip(FP_RATES, sens, strict=True)},
        cpm=float(np.mean(sens)),
        cpm_ci95=cpm_ci,
        sensitivity_ci95=sens_ci,
        band=band,
    )


# --------------------------------------------------------------------------- evaluation


def evaluate_froc(
    predictions: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
    seriesuids: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    max_marks_per_scan: int | None = OFFICIAL_MAX_MARKS_PER_SCAN,
    bootstrap_unit: BootstrapUnit = "scan",
) -> FrocResult:
    """Evaluate a LUNA16 submission: FROC, sensitivities, CPM and its bootstrap CI.

    Args:
        predictions: seriesuid, coordX, coordY, coordZ, probability (extra columns ignored).
        annotations: included nodules (seriesuid, coordX, coordY, coordZ, diameter_mm).
        excluded: excluded findings (same columns, -1 = unknown diameter; optional
            extentX/Y/Z make a row a box, see :func:`finding_regions`) or None.
        seriesuids: the scans evaluated; None: the scans of the annotations or the predictions.
        n_bootstrap: bootstrap resamples for the CIs (0: none).
        seed: seed of the bootstrap.
        max_marks_per_scan: per-scan cap on detections (official 100); None: no cap.
        bootstrap_unit: resample ``scan`` s (official) or ``nodule`` s with the false
            positives of their scans (one-patient sets; see :func:`nodule_resampler`).

    Returns:
        The result, with per-nodule and per-detection tables.

    Raises:
        Luna16FormatError: a table with missing columns or bad values.
        ValueError: a seriesuid listed twice, an unknown bootstrap unit, a cap below 1 or a
            negative number of resamples.
    """
    if bootstrap_unit not in BOOTSTRAP_UNITS:
        raise ValueError(f"bootstrap_unit must be one of {BOOTSTRAP_UNITS}, got {bootstrap_unit!r}")
    if max_marks_per_scan is not None and max_marks_per_scan < 1:
        raise ValueError(f"max_marks_per_scan must be at least 1 (or None), got {max_marks_per_scan}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    predictions = validate_table(predictions, "submission", "predictions")
    annotations = validate_table(annotations, "annotations", "annotations")
    if excluded is not None:
        excluded = validate_table(excluded, "excluded", "excluded")
    given = seriesuids is not None
    if seriesuids is None:
        uids = list(dict.fromkeys([*annotations["seriesuid"], *predictions["seriesuid"]]))
    else:
        uids = [str(u) for u in seriesuids]
        if len(set(uids)) != len(uids):
            raise ValueError("seriesuids lists a scan more than once")
    matching = match_detections(predictions, annotations, excluded, uids, max_marks_per_scan)
    items = matching.items
    estimate = estimate_froc(items, n_bootstrap, seed, bootstrap_unit=bootstrap_unit)
    counts = matching.detections["status"].value_counts()
    return FrocResult(
        cpm=estimate.cpm,
        sensitivities=estimate.sensitivities,
        cpm_ci95=estimate.cpm_ci95,
        sensitivity_ci95=estimate.sensitivity_ci95,
        n_scans=len(uids),
        n_nodules=int(items.nodules_per_scan.sum()),
        n_detections=int(sum(counts.get(s, 0) for s in DETECTION_STATUSES[:4])),
        n_hits=int(items.positive.sum()),
        n_false_positives=int(counts.get(FALSE_POSITIVE, 0)),
        n_duplicates=int(counts.get(DUPLICATE, 0)),
        n_excluded_hits=int(counts.get(EXCLUDED_FINDING, 0)),
        n_over_cap=int(counts.get(OVER_CAP, 0)),
        n_not_listed=int(counts.get(SCAN_NOT_LISTED, 0)),
        seriesuids=uids,
        seriesuids_given=given,
        max_marks_per_scan=max_marks_per_scan,
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        curve=estimate.curve,
        band=estimate.band,
        nodules=matching.nodules,
        detections=matching.detections,
        bootstrap_unit=bootstrap_unit,
        items=items,
    )
