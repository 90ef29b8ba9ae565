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
    DIR/generator.json                      what made the set: parameters, scans, fingerprint

A scan counts as complete when its sidecar exists and its image files match the sizes
and BLAKE2b hashes the sidecar records (``files``): the image is written under a
temporary name and renamed into place first, then the sidecar likewise, so an
interrupted job leaves no half scan that looks complete, and a data file damaged later
(a truncated or corrupted ``.zraw``) is found on resume and the scan made again, with a
warning (:func:`is_complete`). Sidecars written before the record existed get a cheaper
check: the ``.mhd`` data file's size against its header. ``nodule synth`` and
``nodule insert`` both write through this module: :func:`claim_folder` first (a folder
is resumed or extended only by a job with the same parameters, never shrunk), then the
scans, then :func:`assemble_tables` from the job's own scans.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
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
from nodule.errors import InputWarning
from nodule.fingerprint import check_fingerprint, fingerprint
from nodule.io import Volume, write_dicom_series, write_volume
from nodule.paths import write_text_atomic

Format = Literal["mhd", "dicom"]
N_SUBSETS = 10
GENERATOR_FILE = "generator.json"
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


FILES_KEY = "files"
"""Sidecar key: ``{file name relative to the subset folder: {"bytes": n, "blake2b": hex}}``."""


def file_record(path: Path) -> dict[str, Any]:
    """Size and BLAKE2b (128-bit) hash of a file, as the sidecar records it."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "blake2b": h.hexdigest()}


def _scan_files(scan: Path) -> list[Path]:
    """The files of a written scan: ``.mhd`` and its data file(s), or a DICOM folder's files."""
    if scan.is_dir():
        return sorted(p for p in scan.iterdir() if p.is_file())
    return [scan, *(p for p in (scan.with_suffix(".zraw"), scan.with_suffix(".raw")) if p.exists())]


def scan_problem(root: Path, index: int, series_uid: str, fmt: Format) -> str | None:
    """Why scan ``index`` is not complete and intact, or None when it is.

    Complete: the sidecar and the image exist. Intact: every file the sidecar records
    (:data:`FILES_KEY`) has its recorded size and hash; for a sidecar without the record
    (older sets) a ``.mhd``'s data file must have the size its header gives
    (``CompressedDataSize``, or DimSize x ElementType when not compressed).

    Returns:
        None, or a short reason (``no sidecar`` for a scan never finished).
    """
    side = sidecar_path(root, index, series_uid)
    scan = scan_path(root, index, series_uid, fmt)
    if not side.exists():
        return "no sidecar"
    if not scan.exists():
        return f"{scan} is missing"
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        return f"{side} is unreadable ({exc})"
    files = record.get(FILES_KEY) if isinstance(record, dict) else None
    if not isinstance(files, dict):
        return _legacy_mhd_problem(scan) if fmt == "mhd" else None
    for name, expected in sorted(files.items()):
        path = side.parent / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{path} has {size} bytes, {expected.get('bytes')} were written"
        if file_record(path)["blake2b"] != expected.get("blake2b"):
            return f"{path} differs from what was written (hash)"
    if scan.is_dir():
        recorded = {side.parent / name for name in files}
        extra = [p for p in _scan_files(scan) if p not in recorded]
        if extra:
            return f"{scan} holds {len(extra)} file(s) that were not written with it (e.g. {extra[0].name})"
    return None


_MHD_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8,
}


def _legacy_mhd_problem(header: Path) -> str | None:
    """A ``.mhd`` whose data file's size disagrees with its header, or None."""
    try:
        text = header.read_text(errors="replace")
    except OSError as exc:
        return f"{header} is unreadable ({exc})"
    keys = dict(re.findall(r"^\s*(\w+)\s*=\s*(.*?)\s*$", text, flags=re.MULTILINE))
    name = keys.get("ElementDataFile", "")
    if not name or name == "LOCAL" or name.startswith("LIST"):
        return None
    data = header.parent / name
    if not data.is_file():
        return f"{data} is missing"
    size = data.stat().st_size
    if keys.get("CompressedData", "").lower() == "true":
        expected = int(keys.get("CompressedDataSize", "0") or 0)
    else:
        try:
            n = 1
            for v in keys.get("DimSize", "").split():
                n *= int(v)
            expected = n * _MHD_SIZES[keys.get("ElementType", "")]
        except (KeyError, ValueError):
            return None
    if expected and size != expected:
        return f"{data} has {size} bytes, its header gives {expected}"
    return None


def is_complete(root: Path, index: int, series_uid: str, fmt: Format, *, verify: bool = True) -> bool:
    """Whether scan ``index`` was written completely (image and sidecar present) and, with
    ``verify``, is intact (:func:`scan_problem`); a damaged scan warns (:class:`InputWarning`)
    and counts as not complete, so that a resumed job makes it again."""
    if not verify:
        return sidecar_path(root, index, series_uid).exists() and scan_path(root, index, series_uid, fmt).exists()
    problem = scan_problem(root, index, series_uid, fmt)
    if problem is not None and problem != "no sidecar":
        warnings.warn(
            f"{Path(root)}: scan {index} ({series_uid}) is damaged: {problem}; it is made again",
            InputWarning,
            stacklevel=2,
        )
    return problem is None


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
    files = {str(p.relative_to(side.parent)): file_record(p) for p in _scan_files(final)}
    write_text_atomic(side, json.dumps({**record, FILES_KEY: files}, indent=1, sort_keys=True, default=float))
    return final


def read_sidecars(root: Path) -> list[dict[str, Any]]:
    """All sidecars of a dataset, ordered by scan index."""
    records = [json.loads(p.read_text()) for p in Path(root).glob("subset*/*.json")]
    return sorted(records, key=lambda r: int(r["scan"]["index"]))


def read_generator(root: Path) -> dict[str, Any] | None:
    """The folder's ``generator.json`` (None if there is none)."""
    path = Path(root) / GENERATOR_FILE
    return dict(json.loads(path.read_text())) if path.exists() else None


def write_generator(root: Path, record: Mapping[str, Any]) -> Path:
    """Write ``generator.json`` atomically (temporary file, rename)."""
    return write_text_atomic(Path(root) / GENERATOR_FILE, json.dumps(dict(record), indent=1) + "\n")


def claim_folder(
    root: Path,
    params: Mapping[str, Any],
    series_uids: Sequence[str],
    legacy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check that a job may write its set into ``root``, then record it in ``generator.json``.

    A folder may be resumed or extended by a job with the same parameters: its
    ``generator.json`` must hold the same parameters and fingerprint, unless the folder
    holds no scan (sidecar) at all (a job that failed before its first scan binds nothing)
    (:func:`nodule.fingerprint.check_fingerprint`), and it may hold no scan (sidecar)
    other than the job's own, scan ``i`` with uid ``series_uids[i]``; so a rerun asking
    for fewer scans than the folder holds is refused, and so is a folder with scans but
    no ``generator.json``. Then ``generator.json`` gets the parameters, ``scans`` (the
    number of scans of this job) and ``fingerprint``.

    Args:
        root: dataset folder (created).
        params: everything that shapes the scans (not their number).
        series_uids: the uids of this job's scans, by index.
        legacy: values of parameters that a ``generator.json`` of an older version may
            lack (e.g. the shape bank version before it was recorded).

    Returns:
        What ``generator.json`` now holds.

    Raises:
        FingerprintMismatch: the folder holds a set made with other parameters.
        ValueError: it holds scans this job would not make, or scans without a
            ``generator.json``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    old = read_generator(root)
    own = {sidecar_path(root, i, uid) for i, uid in enumerate(series_uids)}
    foreign = sorted(p for p in root.glob("subset*/*.json") if p not in own)
    if old is not None and not foreign and not any(p.exists() for p in own):
        old = None  # a job that failed before its first scan: nothing to protect
    if old is None and (foreign or any(p.exists() for p in own)):
        raise ValueError(
            f"{root} holds scans but no {GENERATOR_FILE}: cannot tell what made them; "
            "use another folder, or remove this one to start over"
        )
    if old is not None:
        defaults = {k: v for k, v in (legacy or {}).items() if k not in old}
        recorded = {k: old[k] for k in params if k in old} | defaults
        check_fingerprint(root, "a data set", recorded, params, old.get("fingerprint"))
    if foreign:
        n = len(series_uids)
        indices = sorted(_scan_index(p) for p in foreign)
        if all(i >= n for i in indices):
            hint = (
                "a rerun may resume or extend a set, not shrink it: ask for at least "
                f"{indices[-1] + 1} scans, or use another folder"
            )
        else:
            hint = "they are not scans of this set (-1: unreadable); use another folder"
        raise ValueError(
            f"{root} holds {len(foreign)} scan(s) that this job ({n} scans) would not make "
            f"(indices {_short(indices)}); {hint}"
        )
    record = {**params, "scans": len(series_uids), "fingerprint": fingerprint(params)}
    write_generator(root, record)
    return record


def _scan_index(sidecar: Path) -> int:
    try:
        return int(json.loads(sidecar.read_text())["scan"]["index"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _short(values: Sequence[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def read_run_sidecars(root: Path, series_uids: Sequence[str]) -> list[dict[str, Any]]:
    """The sidecars of scans ``0 .. len(series_uids) - 1`` (scan ``i`` has uid ``series_uids[i]``).

    Raises:
        FileNotFoundError: a scan is not complete.
        ValueError: a sidecar describes another scan.
    """
    records = []
    for i, uid in enumerate(series_uids):
        path = sidecar_path(root, i, uid)
        if not path.exists():
            raise FileNotFoundError(f"scan {i} ({uid}) of {root} is not complete: no {path.name}")
        record = json.loads(path.read_text())
        scan = record["scan"]
        if int(scan["index"]) != i or str(scan["seriesuid"]) != uid:
            raise ValueError(f"{path} describes scan {scan['index']} ({scan['seriesuid']}), not {i} ({uid})")
        records.append(record)
    return records


def assemble_tables(root: Path, series_uids: Sequence[str]) -> dict[str, Path]:
    """Write the dataset-level tables from the sidecars of this job's scans.

    Only scans ``0 .. len(series_uids) - 1`` with their expected uids go into the tables
    (whatever else the folder may hold). Each sidecar holds ``scan`` (a flat dict with
    ``index`` and ``seriesuid``) and ``findings`` (flat dicts with ``kind``,
    ``coordX/Y/Z``, ``diameter_mm`` ...): kind ``nodule`` goes to annotations.csv, the
    others to annotations_excluded.csv. Every table is written atomically.

    Args:
        root: dataset folder.
        series_uids: the uids of the job's scans, by index.

    Returns:
        Name -> path of every table written.

    Raises:
        FileNotFoundError: a scan of the job is not complete.
    """
    root = Path(root)
    recs = read_run_sidecars(root, series_uids)
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
