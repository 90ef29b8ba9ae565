"""The files of a ``nodule detect`` batch folder, written atomically and rebuilt from records.

Layout of ``DIR`` (every format carries its name and version, :data:`FORMATS`):

* ``detect.json``: the batch's settings, the model's identity and their fingerprint; a
  rerun with other settings or another model is refused (:mod:`nodule.fingerprint`);
* ``records/<key>.json``: one per input study (``key``: a hash of its path and series,
  never a folder name), written last, when everything else of the study is on disk:
  the study's summary row and the name of its document. A study with a record is done;
  a study without one is (re)done, so a hard kill loses at most the studies in flight;
* ``studies/<id>.json``: the study document (``id``: its SeriesInstanceUID or file stem,
  made file-name safe): series, geometry, input warnings, model version, threshold and
  every finding (world and voxel centre, diameter, probability, detectors, overlay);
* ``overlays/<id>/<finding>.png``: axial, coronal and sagittal crops of each finding at or
  above the threshold;
* ``summary.csv``: one row per input study (``status`` ``ok``, ``failed`` or
  ``duplicate``, ``reason``, warnings, counts, seconds per stage);
* ``detections.csv``: one row per finding of every study, the LUNA16 submission columns
  (``seriesuid, coordX, coordY, coordZ, probability``) first: a valid submission for
  ``nodule evaluate``;
* ``index.html``: the studies and their findings with the overlays, for a browser.

``summary.csv``, ``detections.csv`` and ``index.html`` are rebuilt from the records
(:func:`write_aggregates`) in a fixed order (by input, then series), so they never hold a
duplicated or lost row and do not depend on the order studies finished in. A shard
(``--shard I/N``) writes ``summary.shard-I-of-N.csv`` and ``detections.shard-I-of-N.csv``
of its own studies; :func:`merge_batches` (``nodule detect-merge``) gathers the records of
one or more batch folders and writes the whole batch's files.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nodule.detection.pipeline import NOTICE, STAGES
from nodule.detection.studies import in_shard
from nodule.paths import write_text_atomic

FORMATS = {
    "batch": "nodule-detect-batch/1",
    "record": "nodule-detect-record/1",
    "study": "nodule-detect-study/1",
    "summary": "nodule-detect-summary/1",
    "detections": "nodule-detect-detections/1",
}
"""Format name and version of every file a batch writes."""

SUMMARY_COLUMNS = (
    "study_id",
    "series_uid",
    "input",
    "input_series",
    "status",
    "reason",
    "warnings",
    "n_candidates",
    "n_findings",
    "n_above_threshold",
    "max_probability",
    *(f"seconds_{s}" for s in STAGES),
    "seconds_total",
    "key",
    "notice",
    "format",
)
"""Columns of ``summary.csv``."""

DETECTION_COLUMNS = (
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "probability",
    "study_id",
    "finding_id",
    "diameter_mm",
    "voxelZ",
    "voxelY",
    "voxelX",
    "above_threshold",
    "threshold",
    "detectors",
    "overlay",
    "format",
)
"""Columns of ``detections.csv``: a LUNA16 submission followed by the extras."""


def _dump(value: Any) -> str:
    return json.dumps(_finite(value), indent=1, allow_nan=False, default=_jsonable) + "\n"


def _finite(value: Any) -> Any:
    """NaN and infinities -> None, recursively, so that files are strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def record_path(out: Path, key: str) -> Path:
    """The record of the study or input with ``key``."""
    return out / "records" / f"{key}.json"


def document_path(out: Path, study_id: str) -> Path:
    """The document of a study."""
    return out / "studies" / f"{study_id}.json"


def write_study(out: Path, row: dict[str, Any], document: dict[str, Any] | None) -> None:
    """Write a study's document (if any) then its record, each atomically (the record last)."""
    doc_name = None
    if document is not None:
        doc_name = f"studies/{document['study_id']}.json"
        write_text_atomic(out / doc_name, _dump({"format": FORMATS["study"], **document}))
    record = {"format": FORMATS["record"], "row": row, "document": doc_name}
    write_text_atomic(record_path(out, row["key"]), _dump(record))


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """The complete records of a batch folder, by key: a record whose document is missing
    or unreadable (a study cut short) is left out, so the study is done again."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((out / "records").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if record.get("format") != FORMATS["record"]:
                continue
            doc = record.get("document")
            if doc is not None:
                json.loads((out / doc).read_text())
        except (OSError, ValueError):
            continue
        found[path.stem] = record
    return found


def _sort_key(record: dict[str, Any]) -> tuple[str, str, str]:
    row = record["row"]
    return (str(row.get("input", "")), str(row.get("input_series", "")), str(row.get("key", "")))


def summary_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """``summary.csv`` of records, in input order."""
    rows = [{**r["row"], "format": FORMATS["summary"]} for r in sorted(records, key=_sort_key)]
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def detections_table(out: Path, records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """``detections.csv`` of the ok studies of records, in input order, findings by probability."""
    rows: list[dict[str, Any]] = []
    for record in sorted(records, key=_sort_key):
        if record["row"].get("status") != "ok" or record.get("document") is None:
            continue
        doc = json.loads((out / record["document"]).read_text())
        threshold = doc["model"]["threshold"]
        for f in doc["findings"]:
            x, y, z = f["world_xyz_mm"]
            vz, vy, vx = f["voxel_zyx"]
            rows.append(
                {
                    "seriesuid": doc["series_uid"],
                    "coordX": x,
                    "coordY": y,
                    "coordZ": z,
                    "probability": f["probability"],
                    "study_id": doc["study_id"],
                    "finding_id": f["id"],
                    "diameter_mm": f["diameter_mm"],
                    "voxelZ": vz,
                    "voxelY": vy,
                    "voxelX": vx,
                    "above_threshold": f["above_threshold"],
                    "threshold": threshold,
                    "detectors": f["detectors"],
                    "overlay": f["overlay"] or "",
                    "format": FORMATS["detections"],
                }
            )
    return pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


def write_aggregates(
    out: Path, shard: tuple[int, int] | None = None, *, model: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild ``summary.csv``, ``detections.csv`` and ``index.html`` from the records
    (a shard: its own ``*.shard-I-of-N.csv``, no index).

    Args:
        out: the batch folder.
        shard: ``(index, count)`` of a shard run, None for the whole batch.
        model: the model's identity for the index page.

    Returns:
        The summary and detections tables written.
    """
    records = [r for k, r in read_records(out).items() if in_shard(k, shard)]
    summary = summary_table(records)
    detections = detections_table(out, records)
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    _write_csv(summary, out / f"summary{suffix}.csv")
    _write_csv(detections, out / f"detections{suffix}.csv")
    if shard is None:
        write_text_atomic(out / "index.html", index_html(out, summary, detections, model))
    return summary, detections


def merge_batches(folders: Sequence[Path], out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gather the records, documents and overlays of shard folders into ``out`` and write
    the whole batch's ``summary.csv``, ``detections.csv`` and ``index.html``.

    Args:
        folders: batch folders (shards); one of them may be ``out`` itself.
        out: the merged batch folder.

    Returns:
        The merged summary and detections.

    Raises:
        ValueError: a folder that is not a batch folder, or batches made with other settings.
    """
    manifests = []
    for folder in folders:
        path = folder / "detect.json"
        if not path.is_file():
            raise ValueError(f"{folder}: not a nodule detect folder (no detect.json)")
        manifests.append(json.loads(path.read_text()))
    prints = {m.get("fingerprint") for m in manifests}
    if len(prints) > 1:
        raise ValueError(
            "the folders were made with different settings or models (fingerprints "
            f"{', '.join(sorted(str(p) for p in prints))}): they do not form one batch"
        )
    out.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        if folder.resolve() == out.resolve():
            continue
        for record_file in sorted((folder / "records").glob("*.json")):
            record = json.loads(record_file.read_text())
            doc = record.get("document")
            if doc is not None:
                study_id = Path(doc).stem
                source = folder / "overlays" / study_id
                if source.is_dir():
                    shutil.copytree(source, out / "overlays" / study_id, dirs_exist_ok=True)
                write_text_atomic(out / doc, (folder / doc).read_text())
            write_text_atomic(out / "records" / record_file.name, record_file.read_text())
    if not (out / "detect.json").exists():
        write_text_atomic(out / "detect.json", _dump(manifests[0]))
    return write_aggregates(out, None, model=manifests[0].get("params", {}).get("model"))


def index_html(
    out: Path, summary: pd.DataFrame, detections: pd.DataFrame, model: dict[str, Any] | None
) -> str:
    """The review page: every study (status, reason, warnings) and its findings at or above
    the threshold with their overlays."""
    esc = html.escape
    ok = int((summary["status"] == "ok").sum())
    failed = int((summary["status"] == "failed").sum())
    dup = int((summary["status"] == "duplicate").sum())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>nodule detect</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;"
        "vertical-align:top}.failed{background:#fdd}.duplicate{background:#eee}.warn{color:#a60}"
        ".notice{background:#ffe;border:1px solid #cc9;padding:6px}img{width:480px}</style></head><body>",
        "<h1>nodule detect</h1>",
        f"<p class='notice'><b>{esc(NOTICE.capitalize())}.</b> Findings are the output of a model "
        "trained on synthetic CT; a person must review every one.</p>",
        f"<p>{len(summary)} studies: {ok} ok, {failed} failed, {dup} duplicate. "
        f"{int(detections['above_threshold'].astype(bool).sum()) if len(detections) else 0} findings "
        "at or above the threshold.",
    ]
    if model:
        parts.append(f" Model {esc(str(model.get('version')))} (config {esc(str(model.get('config_hash')))}).")
    parts.append("</p><h2>Studies</h2><table><tr><th>study</th><th>status</th><th>findings &ge; threshold"
                 "</th><th>max p</th><th>reason / warnings</th><th>input</th></tr>")
    for row in summary.to_dict("records"):
        status = esc(str(row["status"]))
        sid = str(row["study_id"] or "") or f"(input {row['key']})"
        link = f"<a href='#{esc(sid)}'>{esc(sid)}</a>" if status == "ok" else esc(sid)
        note = esc(str(row["reason"] or "")) if status != "ok" else (
            "<span class='warn'>" + esc(str(row["warnings"] or "")) + "</span>"
        )
        maxp = "" if pd.isna(row["max_probability"]) else f"{float(row['max_probability']):.3f}"
        parts.append(
            f"<tr class='{status}'><td>{link}</td><td>{status}</td><td>{row['n_above_threshold']}</td>"
            f"<td>{maxp}</td><td>{note}</td><td>{esc(str(row['input']))}</td></tr>"
        )
    parts.append("</table>")
    shown = detections[detections["above_threshold"].astype(bool)] if len(detections) else detections
    for study, group in shown.groupby("study_id", sort=False):
        parts.append(f"<h2 id='{esc(str(study))}'>{esc(str(study))}</h2>")
        for f in group.to_dict("records"):
            name = esc(str(f["finding_id"]))
            caption = (
                f"{name}: p = {float(f['probability']):.3f}, diameter about {float(f['diameter_mm']):.1f} mm, "
                f"world ({float(f['coordX']):.1f}, {float(f['coordY']):.1f}, {float(f['coordZ']):.1f}) mm, "
                f"detectors {esc(str(f['detectors']))}"
            )
            overlay = esc(str(f["overlay"])) if isinstance(f["overlay"], str) and f["overlay"] else ""
            image = f"<br><a href='{overlay}'><img src='{overlay}' alt='{name}'></a>" if overlay else ""
            parts.append(f"<p>{caption}{image}</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
