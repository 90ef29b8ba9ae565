"""A dataset in the LUNA16 layout, written one scan at a time and assembled at the end.

::

    DIR/subsetK/<seriesuid>.mhd (+ .zraw)   scan i in subset i mod 10 (or a DICOM folder
    DIR/subsetK/<seriesuid>/                 per scan with format "dicom")
    DIR/subsetK/<seriesuid>.json            sidecar: the scan's rows (written last)
    DIR/annotations.csv                     seriesuid,coordX,coordY,coordZ,diameter_mm
    DIR/annotations_excluded.csv            the same columns; diameter -1 if unknown
    DIR/seriesuids.csv                      headerless, one uid a line
    DIR/folds/subsetK.csv                   headerless
    DIR/manifest.csv                        one row per finding, with its scan's record
    DIR/scans.csv                           one row per scan

A scan counts as complete when its sidecar exists: the image is written under a
temporary name and renamed into place first, then the sidecar likewise, so an
interrupted job leaves no half scan that looks complete. ``nodule synth`` and
``nodule insert`` both write through this module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from nodule.data.luna16 import (
    write_annotations,
    write_csv,
    write_excluded,
    write_folds,
    write_seriesuids,
)
from nodule.io import Volume, write_dicom_series, write_volume
from nodule.paths import write_text_atomic

Format = Literal["mhd", "dicom"]
N_SUBSETS = 10
ANNOTATION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]


def subset_of(index: int) -> int:
    """LUNA16 subset of scan ``index`` (``index mod 10``)."""
    return int(index) % N_SUBSETS


def scan_path(root: Path, index: int, series_uid: str, fmt: Format) -> Path:
    """Where scan ``index`` lives: ``subsetK/<uid>.mhd`` or the folder ``subsetK/<uid>/``."""
    sub = Path(root) / f"subset{subset_of(index)}"
    return sub / (f"{series_uid}.mhd" if fmt == "mhd" else series_uid)


def sidecar_path(root: Path, index: int, series_uid: str) -> Path:
    """The per-scan JSON sidecar ``subsetK/<uid>.json``."""
    return Path(root) / f"subset{subset_of(index)}" / f"{series_uid}.json"


def is_complete(root: Path, index: int, series_uid: str, fmt: Format) -> bool:
    """Whether scan ``index`` was written completely (image and sidecar present)."""
    return sidecar_path(root, index, series_uid).exists() and scan_path(root, index, series_uid, fmt).exists()


def write_scan(
    root: Path,
    index: int,
    volume: Volume,
    record: Mapping[str, Any],
    fmt: Format = "mhd",
) -> Path:
    """Write one scan and its sidecar atomically (temporary names, then renames).

    Args:
        root: dataset folder.
        index: scan index (its subset is ``index mod 10``).
        volume: the scan; its ``series_uid`` names the files.
        record: JSON-serialisable sidecar content (the scan's table rows).
        fmt: ``mhd`` (compressed) or ``dicom`` (one file per slice in a folder).

    Returns:
        The scan's path.
    """
    uid = volume.series_uid
    final = scan_path(root, index, uid, fmt)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{uid}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if fmt == "mhd":
        write_volume(volume, tmp / f"{uid}.mhd")
        for part in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".mhd"):  # header last
            part.replace(final.parent / part.name)
        tmp.rmdir()
    elif fmt == "dicom":
        write_dicom_series(volume, tmp, series_uid=uid, overwrite=True)
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
    else:
        raise ValueError(f"format must be 'mhd' or 'dicom', got {fmt!r}")
    side = sidecar_path(root, index, uid)
    write_text_atomic(side, json.dumps(record, indent=1, sort_keys=True, default=float))
    return final


def read_sidecars(root: Path) -> list[dict[str, Any]]:
    """All sidecars of a dataset, ordered by scan index."""
    records = [json.loads(p.read_text()) for p in Path(root).glob("subset*/*.json")]
    return sorted(records, key=lambda r: int(r["scan"]["index"]))


def assemble_tables(root: Path, records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Write the dataset-level tables from the sidecars.

    Each sidecar holds ``scan`` (a flat dict with ``index`` and ``seriesuid``) and
    ``findings`` (flat dicts with ``kind``, ``coordX/Y/Z``, ``diameter_mm`` ...):
    kind ``nodule`` goes to annotations.csv, the others to annotations_excluded.csv.

    Args:
        root: dataset folder.
        records: the sidecars (default: read them).

    Returns:
        Name -> path of every table written.
    """
    root = Path(root)
    recs = list(records) if records is not None else read_sidecars(root)
    rows, scans = [], []
    for rec in recs:
        scan = dict(rec["scan"])
        scans.append(scan)
        for f in rec["findings"]:
            rows.append({"seriesuid": scan["seriesuid"], **f, **{f"scan_{k}": v for k, v in scan.items() if k != "seriesuid"}})
    manifest = pd.DataFrame(rows)
    if manifest.empty:
        manifest = pd.DataFrame(columns=[*ANNOTATION_COLUMNS, "kind"])
    for c in ("coordX", "coordY", "coordZ", "diameter_mm"):
        manifest[c] = manifest[c].astype(float)
    for c in manifest.columns:  # fields only some findings have: empty cells, not "nan"
        if manifest[c].dtype == object:
            manifest[c] = manifest[c].where(manifest[c].notna(), "")
    nod = manifest[manifest["kind"] == "nodule"][ANNOTATION_COLUMNS]
    exc = manifest[manifest["kind"] != "nodule"][ANNOTATION_COLUMNS]
    uids = [str(s["seriesuid"]) for s in scans]
    folds: dict[int, list[str]] = {k: [] for k in range(N_SUBSETS)}
    for s in scans:
        folds[subset_of(int(s["index"]))].append(str(s["seriesuid"]))
    out = {
        "annotations": write_annotations(nod.reset_index(drop=True), root / "annotations.csv"),
        "excluded": write_excluded(exc.reset_index(drop=True), root / "annotations_excluded.csv"),
        "seriesuids": write_seriesuids(root / "seriesuids.csv", uids),
        "folds": write_folds(root / "folds", folds),
        "manifest": write_csv(manifest.reset_index(drop=True), root / "manifest.csv"),
        "scans": write_csv(pd.DataFrame(scans), root / "scans.csv"),
    }
    return out
