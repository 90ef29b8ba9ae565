"""FROC by nodule group (size band, type, attachment) from a nodule manifest.

Pure functions, no I/O. The usual subgroup FROC: for a group, the group's nodules are
the included nodules and every other included nodule is moved to the excluded findings
(detections on them are ignored); the false positives stay those of all scans and the
FP/scan divisor all scans. This is computed from the full evaluation's scored items
(:func:`~nodule.evaluation.froc.restrict_to_nodules`), which equals re-matching with the
moved tables, and each group gets a bootstrap 95% CI with the main evaluation's unit,
resample count and seed.

Groups:

* ``size``: the annotation's ``diameter_mm`` in bands 3-5, 5-10, 10-20, 20-30, >=30 mm
  (lower bound inclusive; ``<3`` for a smaller nodule). Always known.
* ``type``: solid, part-solid, ground-glass, calcified, from the manifest's
  ``nodule_type`` or else from its LIDC ``texture`` and ``calcification`` ratings (mean
  ratings rounded half up first, then :func:`~nodule.data.shapes.nodule_type_from_ratings`).
* ``attachment``: isolated, juxtavascular, juxtapleural, perifissural ... from the
  manifest's ``attachment`` (``nodule synth``) or ``placement`` (``nodule insert``).

Manifests: a generated set's ``manifest.csv`` (rows with ``kind == "nodule"``, world
``coordX/Y/Z``) or the LIDC manifest ``data_manifests/lidc_luna16_annotations.csv``
(``coordZ`` only). A manifest row is matched to an annotation of its scan one to one,
nearest first: by centre within :data:`MATCH_MM` when it has coordX/Y/Z, else by
``coordZ`` within :data:`MATCH_Z_MM`. An annotation without a manifest row is in group
``unknown`` for type and attachment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from nodule.data.shapes import nodule_type_from_ratings
from nodule.evaluation.froc import FrocResult, estimate_froc, restrict_to_nodules

SIZE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<3", -math.inf, 3.0),
    ("3-5", 3.0, 5.0),
    ("5-10", 5.0, 10.0),
    ("10-20", 10.0, 20.0),
    ("20-30", 20.0, 30.0),
    (">=30", 30.0, math.inf),
)
"""Size bands: (name, lower bound inclusive, upper bound exclusive) of diameter_mm."""
NODULE_TYPES: tuple[str, ...] = ("solid", "part-solid", "ground-glass", "calcified")
ATTACHMENTS: tuple[str, ...] = ("isolated", "juxtavascular", "juxtapleural", "perifissural")
UNKNOWN = "unknown"
"""Group of a nodule whose manifest row is missing or does not say."""
GROUP_BYS: tuple[str, ...] = ("size", "type", "attachment")
BREAKDOWN_RATES: tuple[float, ...] = (1.0, 2.0, 4.0)
"""FP/scan rates whose sensitivities the breakdown reports (with the CPM)."""
MATCH_MM = 0.5
"""Largest distance between a manifest row's centre and its annotation's, mm."""
MATCH_Z_MM = 1.0
"""Largest coordZ difference when the manifest has no world x/y (LIDC manifest), mm."""


@dataclass(frozen=True)
class Breakdown:
    """Result of :func:`breakdown_froc`.

    Attributes:
        table: one row per group (the first: ``all``) with group_by, group, n_nodules,
            n_hit, ``sens@R``, ``sens@R_lo``, ``sens@R_hi`` for R in :data:`BREAKDOWN_RATES`,
            cpm, cpm_lo, cpm_hi (the breakdown.csv columns).
        n_nodules: included nodules of the evaluation.
        n_matched: of them, those matched to a manifest row.
        not_in_manifest: group_bys the manifest has no column for (left out of the table).
        n_bootstrap: bootstrap resamples of each group's CI.
        seed: seed of the bootstrap.
        bootstrap_unit: what was resampled (``scan`` or ``nodule``).
    """

    table: pd.DataFrame
    n_nodules: int
    n_matched: int
    not_in_manifest: list[str]
    n_bootstrap: int
    seed: int
    bootstrap_unit: str


def size_band(diameter_mm: float) -> str:
    """The :data:`SIZE_BANDS` name of a diameter (NaN or negative: ``unknown``)."""
    if not diameter_mm >= 0.0:
        return UNKNOWN
    for name, lo, hi in SIZE_BANDS:
        if lo <= diameter_mm < hi:
            return name
    return UNKNOWN


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    text = str(value).strip()
    return text if text else UNKNOWN


def manifest_nodules(manifest: pd.DataFrame) -> pd.DataFrame:
    """A manifest's nodule rows in one form: seriesuid, coordX, coordY, coordZ, type, attachment.

    Args:
        manifest: a generated set's manifest.csv or the LIDC manifest (see the module doc).

    Returns:
        One row per nodule; coordX/coordY NaN when the manifest has no world x/y; ``type``
        and ``attachment`` are :data:`UNKNOWN` where the row does not say and absent as
        columns when the manifest has no such column.

    Raises:
        ValueError: no seriesuid or coordZ column.
    """
    missing = [c for c in ("seriesuid", "coordZ") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}")
    rows = manifest
    if "kind" in rows.columns:
        rows = rows[rows["kind"].astype(str) == "nodule"]
    rows = rows.reset_index(drop=True)
    out = pd.DataFrame({"seriesuid": rows["seriesuid"].astype(str).str.strip()})
    for c in ("coordX", "coordY", "coordZ"):
        out[c] = (
            pd.to_numeric(rows[c], errors="coerce").to_numpy(np.float64)
            if c in rows.columns
            else np.full(len(rows), np.nan)
        )
    if "nodule_type" in rows.columns:
        out["type"] = [_text(v) for v in rows["nodule_type"]]
    elif {"texture", "calcification"} <= set(rows.columns):
        texture = pd.to_numeric(rows["texture"], errors="coerce").to_numpy(np.float64)
        calcification = pd.to_numeric(rows["calcification"], errors="coerce").to_numpy(np.float64)
        out["type"] = [
            nodule_type_from_ratings(_round_half_up(t), _round_half_up(c))
            if t >= 1.0 and c >= 1.0
            else UNKNOWN
            for t, c in zip(texture, calcification, strict=True)
        ]
    for column in ("attachment", "placement"):
        if column in rows.columns:
            out["attachment"] = [_text(v) for v in rows[column]]
            break
    return out


def match_manifest(nodules: pd.DataFrame, manifest: pd.DataFrame) -> NDArray[np.int64]:
    """The manifest row of each nodule, -1 when none: same scan, nearest first, one to one.

    Args:
        nodules: seriesuid, coordX, coordY, coordZ of the nodules (e.g. ``FrocResult.nodules``).
        manifest: :func:`manifest_nodules` output; rows with coordX and coordY are matched
            by centre within :data:`MATCH_MM`, the others by coordZ within :data:`MATCH_Z_MM`.

    Returns:
        Row of ``manifest`` per nodule.
    """
    found = np.full(len(nodules), -1, dtype=np.int64)
    if nodules.empty or manifest.empty:
        return found
    coords = ["coordX", "coordY", "coordZ"]
    nod_uid = nodules["seriesuid"].astype(str).to_numpy()
    nod_xyz = nodules[coords].to_numpy(np.float64)
    man_uid = manifest["seriesuid"].astype(str).to_numpy()
    man_xyz = manifest[coords].to_numpy(np.float64)
    has_xy = ~np.isnan(man_xyz[:, :2]).any(axis=1)
    for uid in np.intersect1d(nod_uid, man_uid):
        n = np.flatnonzero(nod_uid == uid)
        m = np.flatnonzero(man_uid == uid)
        full = np.sqrt(((nod_xyz[n, None, :] - man_xyz[None, m, :]) ** 2).sum(axis=-1))
        along_z = np.abs(nod_xyz[n, None, 2] - man_xyz[None, m, 2])
        distance = np.where(has_xy[m][None, :], full, along_z)
        limit = np.where(has_xy[m], MATCH_MM, MATCH_Z_MM)[None, :]
        i, j = np.nonzero(distance <= limit)
        used_n: set[int] = set()
        used_m: set[int] = set()
        for k in np.argsort(distance[i, j], kind="stable"):
            if i[k] in used_n or j[k] in used_m:
                continue
            used_n.add(int(i[k]))
            used_m.add(int(j[k]))
            found[n[i[k]]] = m[j[k]]
    return found


def nodule_groups(nodules: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Group of each nodule: size band, and type and attachment from its manifest row.

    Args:
        nodules: seriesuid, coordX/Y/Z, diameter_mm of the included nodules
            (``FrocResult.nodules``, whose order the items follow).
        manifest: the raw manifest (:func:`manifest_nodules` is applied).

    Returns:
        Columns ``manifest_row`` (-1: unmatched), ``size`` and, where the manifest gives
        them, ``type`` and ``attachment``; one row per nodule, in order.
    """
    rows = manifest_nodules(manifest)
    found = match_manifest(nodules, rows)
    groups = pd.DataFrame({"manifest_row": found})
    groups["size"] = [size_band(d) for d in nodules["diameter_mm"].to_numpy(np.float64)]
    for column in ("type", "attachment"):
        if column in rows.columns:
            values = rows[column].to_numpy(dtype=object)
            groups[column] = [values[r] if r >= 0 else UNKNOWN for r in found]
    return groups


def _ordered(values: Sequence[str], canonical: Sequence[str]) -> list[str]:
    present = set(values)
    known = [v for v in canonical if v in present]
    other = sorted(present - set(canonical) - {UNKNOWN})
    return [*known, *other, *([UNKNOWN] if UNKNOWN in present else [])]


def breakdown_froc(
    result: FrocResult,
    groups: pd.DataFrame,
    n_bootstrap: int | None = None,
    seed: int | None = None,
    rates: Sequence[float] = BREAKDOWN_RATES,
) -> Breakdown:
    """Sensitivities, CPM and bootstrap 95% CIs of each nodule group (subgroup FROC).

    Args:
        result: the full evaluation (:func:`~nodule.evaluation.froc.evaluate_froc`).
        groups: :func:`nodule_groups` of ``result.nodules``.
        n_bootstrap: resamples of each group's CI (default: the evaluation's).
        seed: seed of the bootstrap (default: the evaluation's); every group uses it.
        rates: FP/scan rates to report (each one of :data:`~nodule.evaluation.froc.FP_RATES`).

    Returns:
        The breakdown; the first table row is the whole evaluation (``all``).

    Raises:
        ValueError: a result without items, or groups of another length.
    """
    if result.items is None:
        raise ValueError("the result has no scored items (evaluate with evaluate_froc)")
    if len(groups) != result.items.nodule_scan.size:
        raise ValueError(f"{len(groups)} group rows for {result.items.nodule_scan.size} nodules")
    n_boot = result.n_bootstrap if n_bootstrap is None else int(n_bootstrap)
    seed_ = result.seed if seed is None else int(seed)
    canonical = {
        "size": [name for name, _, _ in SIZE_BANDS],
        "type": list(NODULE_TYPES),
        "attachment": list(ATTACHMENTS),
    }
    selections: list[tuple[str, str, NDArray[np.bool_]]] = [
        ("all", "all", np.ones(len(groups), dtype=bool))
    ]
    for group_by in GROUP_BYS:
        if group_by not in groups.columns:
            continue
        values = groups[group_by].astype(str).to_numpy()
        for group in _ordered(list(values), canonical[group_by]):
            selections.append((group_by, group, values == group))
    records = []
    for group_by, group, keep in selections:
        items = restrict_to_nodules(result.items, keep)
        est = estimate_froc(items, n_boot, seed_, bootstrap_unit=result.bootstrap_unit)
        record: dict[str, object] = {
            "group_by": group_by,
            "group": group,
            "n_nodules": int(keep.sum()),
            "n_hit": int(items.positive.sum()),
        }
        for rate in rates:
            lo, hi = (math.nan, math.nan)
            if est.sensitivity_ci95 is not None:
                lo, hi = est.sensitivity_ci95[rate]
            record.update(
                {
                    f"sens@{rate:g}": est.sensitivities[rate],
                    f"sens@{rate:g}_lo": lo,
                    f"sens@{rate:g}_hi": hi,
                }
            )
        lo, hi = est.cpm_ci95 if est.cpm_ci95 is not None else (math.nan, math.nan)
        record.update({"cpm": est.cpm, "cpm_lo": lo, "cpm_hi": hi})
        records.append(record)
    return Breakdown(
        table=pd.DataFrame(records),
        n_nodules=len(groups),
        n_matched=int((groups["manifest_row"].to_numpy() >= 0).sum()),
        not_in_manifest=[g for g in ("type", "attachment") if g not in groups.columns],
        n_bootstrap=n_boot,
        seed=seed_,
        bootstrap_unit=result.bootstrap_unit,
    )


def breakdown_tables(result: FrocResult, manifest: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The breakdown of an evaluation by a raw manifest, one table per group_by.

    Args:
        result: the evaluation (its bootstrap unit, resample count and seed are used).
        manifest: a generated set's manifest.csv or the LIDC manifest, as read.

    Returns:
        ``{"size": ..., "type": ..., "attachment": ...}`` (those the manifest gives), each
        the :attr:`Breakdown.table` rows of that group_by.
    """
    table = breakdown_froc(result, nodule_groups(result.nodules, manifest)).table
    return {
        group_by: table[table["group_by"] == group_by].reset_index(drop=True)
        for group_by in GROUP_BYS
        if (table["group_by"] == group_by).any()
    }


def _value(value: float, lo: float, hi: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    text = f"{value:.{digits}f}"
    if not (math.isnan(lo) or math.isnan(hi)):
        text += f" ({lo:.{digits}f}-{hi:.{digits}f})"
    return text


def format_breakdown(breakdown: Breakdown, rates: Sequence[float] = BREAKDOWN_RATES) -> str:
    """A readable table of the breakdown, with how many nodules the manifest matched."""
    b = breakdown
    unit = "scans" if b.bootstrap_unit == "scan" else "nodules (with their scans' false positives)"
    ci = (
        f"95% CIs from {b.n_bootstrap} bootstrap resamples of {unit}, seed {b.seed}"
        if b.n_bootstrap > 0
        else "no bootstrap"
    )
    lines = [
        "Breakdown by nodule group (subgroup FROC: the other nodules ignored, the false "
        f"positives of all scans; {ci})",
        f"manifest: {b.n_matched} of {b.n_nodules} nodules matched; unmatched ones are "
        f"'{UNKNOWN}' by type and attachment",
    ]
    if b.not_in_manifest:
        lines.append(f"not in the manifest: {', '.join(b.not_in_manifest)}")
    header = ["group_by", "group", "nodules", "hit", *(f"sens@{r:g}" for r in rates), "CPM"]
    rows = [header]
    for rec in b.table.to_dict("records"):
        rows.append(
            [
                str(rec["group_by"]),
                str(rec["group"]),
                str(rec["n_nodules"]),
                str(rec["n_hit"]),
                *(
                    _value(rec[f"sens@{r:g}"], rec[f"sens@{r:g}_lo"], rec[f"sens@{r:g}_hi"], 3)
                    for r in rates
                ),
                _value(rec["cpm"], rec["cpm_lo"], rec["cpm_hi"], 3),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
