"""LUNA16 FROC and CPM, exactly as the official evaluation script, with a bootstrap CI.

Pure functions on DataFrames and arrays, no I/O. The rules (from the official
``noduleCADEvaluationLUNA16.py``, function ``evaluateCAD`` and ``computeFROC``):

* Only scans of the seriesuid list count; detections of other scans are dropped, and so
  are a scan's detections beyond its ``max_marks_per_scan`` (official: 100) most probable
  ones (kept: probability strictly above the 101st highest, so ties there drop all tied).
* A detection hits a finding when its squared distance to the centre is strictly below
  ``(diameter / 2) ** 2``; an unknown (negative) diameter counts as 10 mm.
* Each included nodule hit is one positive scored with its best detection; a detection
  may hit several nodules and then counts for each. Other detections on a nodule are
  ignored (duplicates), detections on excluded findings only are ignored, every other
  detection is a negative (false positive). A missed nodule is only in the denominator.
* ROC over the scored items as ``sklearn.metrics.roc_curve`` (tied scores one point,
  ``drop_intermediate=True``); FP/scan = fpr * negatives / scans and sensitivity =
  tpr * hits / nodules; the sensitivities at 1/8 ... 8 FP/scan come from ``numpy.interp``
  on that curve and the CPM is their mean.
* Bootstrap: resample scans with replacement, recompute the FROC on the resampled items
  (as the official ``computeFROC_bootstrap``), take order-statistic percentiles.

Undefined cases the official script turns into NaN or a crash are defined here: no
detection hit (or no detection at all) gives sensitivity 0; no nodule gives NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from nodule.data.luna16 import validate_table

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The seven FP/scan operating points of the CPM."""
OFFICIAL_MAX_MARKS_PER_SCAN = 100
"""``maxNumberOfCADMarks`` of the official script."""
UNKNOWN_DIAMETER_MM = 10.0
"""Diameter used for a finding whose diameter is unknown (negative)."""
BAND_GRID: NDArray[np.float64] = np.exp2(np.arange(-120, 121) / 40.0)
"""FP/scan grid of the bootstrap band: 1/8 to 8, 40 points an octave, the powers of 2 exact."""

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
    """

    scores: NDArray[np.float64]
    positive: NDArray[np.bool_]
    scan: NDArray[np.int64]
    nodules_per_scan: NDArray[np.int64]


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
        excluded: checked excluded findings, or None.
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
        exc_xyz = excluded[coords].to_numpy(dtype=np.float64)[exc_rows]
        exc_r2 = _radius_squared(excluded["diameter_mm"].to_numpy(dtype=np.float64)[exc_rows])
    else:
        exc_scan = np.zeros(0, np.int64)
        exc_xyz = np.zeros((0, 3))
        exc_r2 = np.zeros(0)

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
            (_squared_distances(exc_xyz[ex], points) < exc_r2[ex, None]).any(axis=0)
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


def _interval(
    values: NDArray[np.float64], confidence: float = 0.95
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Official order-statistic interval along axis 0: sorted[floor(p n)], sorted[floor((1 - p) n)], NaN rows dropped."""
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


def bootstrap_froc(
    items: ScoredItems,
    n_bootstrap: int,
    seed: int,
    grid: NDArray[np.float64] = BAND_GRID,
    fp_rates: Sequence[float] = FP_RATES,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FROC of resamples of the scans (with replacement), each a weighted pass over the items.

    Equivalent to recomputing the FROC on the concatenated items of the resampled scans
    (the official ``generateBootstrapSet`` + ``computeFROC``) without re-matching: the
    items are ranked once, each resample only weights them by how often their scan is
    drawn. Only the best-ranked items that reach past the largest FP/scan rate are
    accumulated (all of them when a resample needs it).

    Args:
        items: scored items with their scans.
        n_bootstrap: number of resamples.
        seed: seed of ``numpy.random.default_rng``; resample b draws ``rng.integers(0, n, n)``.
        grid: FP/scan points at which each resampled curve is also interpolated.
        fp_rates: operating points.

    Returns:
        ``(sens_at_rates, sens_on_grid)`` of shapes (n_bootstrap, len(fp_rates)) and (n_bootstrap, len(grid)).
    """
    n_scans = items.nodules_per_scan.size
    rng = np.random.default_rng(seed)
    order, ends = _ranked_groups(items.scores)
    ranked_scan = items.scan[order]
    ranked_pos = items.positive[order]
    thresholds = items.scores[order][ends]
    rates = np.asarray(fp_rates, dtype=np.float64)
    max_rate = float(max(rates.max(initial=0.0), grid.max(initial=0.0)))
    hits_per_scan = np.bincount(items.scan[items.positive], minlength=n_scans)
    negatives_per_scan = np.bincount(items.scan[~items.positive], minlength=n_scans)
    # prefix of groups holding about twice the negatives needed to pass max_rate
    negatives_at_ends = np.cumsum(~ranked_pos)[ends] if ends.size else np.zeros(0, np.int64)
    n_prefix = min(
        int(np.searchsorted(negatives_at_ends, 2.0 * max_rate * n_scans, side="right")) + 1,
        ends.size,
    )

    def curve_of(
        weights: NDArray[np.int64], n_groups: int, totals: tuple[float, float]
    ) -> FrocCurve:
        stop = int(ends[n_groups - 1]) + 1 if n_groups else 0
        w = weights[ranked_scan[:stop]]
        pos = ranked_pos[:stop]
        group_ends = ends[:n_groups]
        tps = np.cumsum(np.where(pos, w, 0))[group_ends].astype(np.float64)
        fps = np.cumsum(np.where(pos, 0, w))[group_ends].astype(np.float64)
        drawn = np.diff(np.r_[0.0, tps + fps]) > 0  # tie groups present in the resample
        n_nodules = float(np.dot(weights, items.nodules_per_scan))
        return _curve_from_counts(
            tps[drawn], fps[drawn], thresholds[:n_groups][drawn], n_nodules, float(n_scans), totals
        )

    at_rates = np.empty((n_bootstrap, rates.size))
    on_grid = np.empty((n_bootstrap, grid.size))
    for b in range(n_bootstrap):
        weights = np.bincount(rng.integers(0, n_scans, size=n_scans), minlength=n_scans)
        totals = (float(np.dot(weights, hits_per_scan)), float(np.dot(weights, negatives_per_scan)))
        curve = curve_of(weights, n_prefix, totals)
        if n_prefix < ends.size and not curve.fps[-1] > max_rate:
            curve = curve_of(weights, ends.size, totals)
        at_rates[b] = np.interp(rates, curve.fps, curve.sensitivity)
        on_grid[b] = np.interp(grid, curve.fps, curve.sensitivity)
    return at_rates, on_grid


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
) -> FrocResult:
    """Evaluate a LUNA16 submission: FROC, sensitivities, CPM and its bootstrap CI.

    Args:
        predictions: seriesuid, coordX, coordY, coordZ, probability (extra columns ignored).
        annotations: included nodules (seriesuid, coordX, coordY, coordZ, diameter_mm).
        excluded: excluded findings (same columns, -1 = unknown diameter) or None.
        seriesuids: the scans evaluated; None: the scans of the annotations or the predictions.
        n_bootstrap: bootstrap resamples of the scans for the CIs (0: none).
        seed: seed of the bootstrap.
        max_marks_per_scan: per-scan cap on detections (official 100); None: no cap.

    Returns:
        The result, with per-nodule and per-detection tables.

    Raises:
        Luna16FormatError: a table with missing columns or bad values.
        ValueError: a seriesuid listed twice.
    """
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
    n_nodules = int(items.nodules_per_scan.sum())
    curve = froc_curve(items.scores, items.positive, n_nodules, len(uids))
    sens = sensitivities_at(curve)
    cpm_ci = sens_ci = band = None
    if n_bootstrap > 0 and uids:
        at_rates, on_grid = bootstrap_froc(items, n_bootstrap, seed)
        lo, hi = _interval(np.c_[at_rates.mean(axis=1), at_rates])
        cpm_ci = (float(lo[0]), float(hi[0]))
        sens_ci = {r: (float(lo[i + 1]), float(hi[i + 1])) for i, r in enumerate(FP_RATES)}
        band_lo, band_hi = _interval(on_grid)
        valid = ~np.isnan(on_grid)
        with np.errstate(invalid="ignore", divide="ignore"):
            band_mean = np.where(valid, on_grid, 0.0).sum(axis=0) / valid.sum(axis=0)
        band = FrocBand(BAND_GRID.copy(), band_lo, band_hi, band_mean)
    counts = matching.detections["status"].value_counts()
    return FrocResult(
        cpm=float(np.mean(sens)),
        sensitivities={r: float(s) for r, s in zip(FP_RATES, sens, strict=True)},
        cpm_ci95=cpm_ci,
        sensitivity_ci95=sens_ci,
        n_scans=len(uids),
        n_nodules=n_nodules,
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
        curve=curve,
        band=band,
        nodules=matching.nodules,
        detections=matching.detections,
    )
