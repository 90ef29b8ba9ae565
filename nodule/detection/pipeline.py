"""Detection in one study: read, lung mask, input checks, candidates, patches, model, merge.

:func:`run_study` takes one :class:`~nodule.detection.studies.StudyRef` through the
path of the system and returns a :class:`StudyOutcome`: the study's document (what
``studies/<id>.json`` holds, see :mod:`nodule.detection.outputs`) and its summary row,
with the seconds of each stage. Any failure (unreadable input, no lungs, ...) becomes a
failed outcome with a reason naming the file and the problem; it never escapes.

Detections are the candidates scored by the model, then merged: a detection whose centre
lies within the radius of a more probable one, or within
:attr:`DetectSettings.merge_distance_mm` of it, is dropped (one finding per nodule).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from nodule.candidates.detect import CandidateConfig, detect_candidates
from nodule.candidates.learned import LearnedConfig
from nodule.detection.checks import InputLimits, input_warnings
from nodule.detection.studies import StudyRef
from nodule.io import Volume, read_volume
from nodule.lung import NoLungFoundError, segment_lungs
from nodule.models.bundle import ModelBundle
from nodule.patches import extract_patches
from nodule.viz import render_finding

NOTICE = "research use only, not for clinical use"
"""Said by every study document and summary row."""

STAGES = ("read", "lung", "candidates", "patches", "model", "merge", "overlays")
"""Timed stages of a study, in order."""

T = TypeVar("T")


@dataclass(frozen=True)
class DetectSettings:
    """What shapes a batch's results (recorded and fingerprinted in ``detect.json``).

    Attributes:
        threshold: probability from which a finding is reported (None: the model's
            operating threshold, chosen on validation data when it was trained).
        max_candidates: candidates scored per study (the candidate stage's cap).
        work_spacing_mm: voxel size of the candidate stage's working grid (coarser is
            faster and misses more small nodules).
        learned_detector: weights of the candidate stage's learned detector
            (:mod:`nodule.candidates.learned`; ``"default"`` the shipped ones); None: the
            hand-made detectors only.
        merge_distance_mm: detections closer than this (or inside a more probable one's
            radius) are merged into the more probable.
        max_overlays: overlay PNGs per study at most (the most probable findings first).
        batch_size: patches per forward pass of the model.
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
    """

    threshold: float | None = None
    max_candidates: int = 150
    work_spacing_mm: float = 1.0
    learned_detector: str | None = None
    merge_distance_mm: float = 8.0
    max_overlays: int = 20
    batch_size: int = 256
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be positive, got {self.max_candidates}")
        if not self.work_spacing_mm > 0:
            raise ValueError(f"work_spacing_mm must be positive, got {self.work_spacing_mm}")
        if not self.merge_distance_mm >= 0:
            raise ValueError(f"merge_distance_mm must be >= 0, got {self.merge_distance_mm}")
        if self.max_overlays < 0:
            raise ValueError(f"max_overlays must be >= 0, got {self.max_overlays}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def resolved_device(self) -> str:
        """``cuda`` when asked for or when ``auto`` finds a GPU, else ``cpu``."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def fingerprint_params(self, model: ModelBundle) -> dict[str, Any]:
        """The parameters a batch folder records: these settings (minus the device and
        batch size, which do not change results) and the model's identity."""
        params = asdict(self)
        params.pop("device")
        params.pop("batch_size")
        params["threshold"] = self.threshold_for(model)
        params["model"] = {"version": model.version, "config_hash": model.config_hash}
        return params

    def threshold_for(self, model: ModelBundle) -> float:
        """The operating threshold: this one, or the model's."""
        return float(model.threshold if self.threshold is None else self.threshold)


@dataclass
class StudyOutcome:
    """The result of one study.

    Attributes:
        document: the study document (``studies/<id>.json``); None when it failed.
        row: its summary row (``status`` ok / failed, ``reason``, counts, seconds).
    """

    document: dict[str, Any] | None
    row: dict[str, Any]


def study_id_for(series_uid: str) -> str:
    """A file-name-safe study id from a SeriesInstanceUID or file stem."""
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in series_uid.strip())
    return safe.strip(".") or "study"


def merge_detections(table: pd.DataFrame, distance_mm: float) -> pd.DataFrame:
    """Drop each detection that lies within a more probable one's radius or within
    ``distance_mm`` of it (greedy, most probable first).

    Args:
        table: detections with ``coordX, coordY, coordZ, probability, diameter_mm``.
        distance_mm: merge distance.

    Returns:
        The kept detections, most probable first.
    """
    ordered = table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
    if len(ordered) < 2:
        return ordered
    xyz = ordered[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
    radius = np.maximum(ordered["diameter_mm"].fillna(0.0).to_numpy(np.float64) / 2, distance_mm)
    tree = cKDTree(xyz)
    kept = np.ones(len(ordered), bool)
    for i in range(len(ordered)):
        if not kept[i]:
            continue
        for j in tree.query_ball_point(xyz[i], float(radius[i])):
            if j > i:
                kept[j] = False
    return ordered[kept].reset_index(drop=True)


def _timed(seconds: dict[str, float], stage: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    try:
        return fn()
    finally:
        seconds[stage] = round(time.perf_counter() - start, 4)


def _geometry(volume: Volume) -> dict[str, Any]:
    info = volume.info
    return {
        "shape_zyx": list(volume.shape),
        "spacing_xyz_mm": [round(v, 6) for v in volume.spacing],
        "origin_xyz_mm": [round(v, 6) for v in volume.origin],
        "direction": [round(v, 6) for v in volume.direction],
        "slice_thickness_mm": info.slice_thickness,
        "kernel": info.kernel,
        "manufacturer": info.manufacturer,
    }


def _failure_reason(ref: StudyRef, exc: BaseException) -> str:
    """One line for a person: the error's message (:func:`nodule.errors.error_line`), what it
    means where that is not plain, and the input it concerns."""
    from nodule.errors import error_line

    text = error_line(exc)
    if isinstance(exc, NoLungFoundError):
        text = f"no lungs found ({text}): not a chest CT, or not in HU"
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    if str(ref.path) not in text:
        text = f"{ref.path}: {text}"
    return text


def base_row(ref: StudyRef) -> dict[str, Any]:
    """A summary row for ``ref`` before anything is known."""
    return {
        "key": ref.key,
        "study_id": "",
        "series_uid": "",
        "input": str(ref.path),
        "input_series": ref.series_uid or "",
        "status": "failed",
        "reason": "",
        "warnings": "",
        "n_candidates": 0,
        "n_findings": 0,
        "n_above_threshold": 0,
        "max_probability": float("nan"),
        **{f"seconds_{s}": float("nan") for s in STAGES},
        "seconds_total": float("nan"),
        "notice": NOTICE,
    }


def run_study(
    ref: StudyRef,
    model: ModelBundle,
    settings: DetectSettings,
    out_dir: Path,
) -> StudyOutcome:
    """Detect nodules in one study; overlays are written under ``out_dir/overlays/<id>/``.

    Args:
        ref: the study.
        model: the classifier with its patch geometry and threshold.
        settings: batch settings.
        out_dir: the batch folder (overlays are written here, atomically, per finding).

    Returns:
        The outcome; a failure is a failed row with its reason, never an exception.
    """
    row = base_row(ref)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    threshold = settings.threshold_for(model)
    try:
        volume = _timed(seconds, "read", lambda: read_volume(ref.path, ref.series_uid))
        row["series_uid"] = volume.series_uid
        study_id = study_id_for(volume.series_uid)
        row["study_id"] = study_id
        lung = _timed(seconds, "lung", lambda: segment_lungs(volume))
        warnings = input_warnings(volume, lung, InputLimits())
        config = CandidateConfig(
            max_per_scan=settings.max_candidates,
            work_spacing_mm=settings.work_spacing_mm,
            learned=LearnedConfig(weights=settings.learned_detector),
        )
        found = _timed(seconds, "candidates", lambda: detect_candidates(volume, lung, config))
        table = found.candidates
        centres = table[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
        patches = _timed(seconds, "patches", lambda: extract_patches(volume, centres, model.patch))
        device = settings.resolved_device()
        probs = _timed(
            seconds,
            "model",
            lambda: model.predict(patches, batch_size=settings.batch_size, device=device)
            if len(patches)
            else np.zeros(0, np.float32),
        )
        scored = table.assign(probability=np.asarray(probs, np.float64), detector_rank=np.arange(1, len(table) + 1))
        merged = _timed(seconds, "merge", lambda: merge_detections(scored, settings.merge_distance_mm))
        findings = _findings(merged, threshold, study_id)
        _timed(
            seconds,
            "overlays",
            lambda: _write_overlays(volume, findings, out_dir, study_id, settings.max_overlays),
        )
    except Exception as exc:  # a bad study is recorded, the batch goes on
        row["reason"] = _failure_reason(ref, exc)
        for stage, value in seconds.items():
            row[f"seconds_{stage}"] = value
        row["seconds_total"] = round(time.perf_counter() - start, 4)
        return StudyOutcome(None, row)
    above = [f for f in findings if f["above_threshold"]]
    row.update(
        status="ok",
        warnings=" | ".join(warnings),
        n_candidates=len(table),
        n_findings=len(findings),
        n_above_threshold=len(above),
        max_probability=max((f["probability"] for f in findings), default=float("nan")),
    )
    for stage, value in seconds.items():
        row[f"seconds_{stage}"] = value
    row["seconds_total"] = round(time.perf_counter() - start, 4)
    document = {
        "study_id": study_id,
        "series_uid": volume.series_uid,
        "notice": NOTICE,
        "input": {
            "path": str(ref.path),
            "series_uid_asked": ref.series_uid,
            "series_in_folder": list(ref.series_in_folder),
        },
        "geometry": _geometry(volume),
        "warnings": warnings,
        "lung_ml": round(float(lung.total_ml), 1),
        "model": {
            "version": model.version,
            "config_hash": model.config_hash,
            "threshold": threshold,
        },
        "n_candidates": len(table),
        "findings": findings,
        "seconds": {**seconds, "total": row["seconds_total"]},
    }
    return StudyOutcome(document, row)


def _findings(merged: pd.DataFrame, threshold: float, study_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, r in enumerate(merged.to_dict("records"), start=1):
        fid = f"F{i:03d}"
        above = bool(r["probability"] >= threshold)
        out.append(
            {
                "id": fid,
                "world_xyz_mm": [round(float(r["coordX"]), 3), round(float(r["coordY"]), 3), round(float(r["coordZ"]), 3)],
                "voxel_zyx": [round(float(r["voxelZ"]), 2), round(float(r["voxelY"]), 2), round(float(r["voxelX"]), 2)],
                "diameter_mm": round(float(r["diameter_mm"]), 2),
                "probability": round(float(r["probability"]), 6),
                "above_threshold": above,
                "detectors": str(r["detectors"]),
                "candidate_rank": int(r["detector_rank"]),
                "overlay": None,
            }
        )
    return out


def overlay_path(study_id: str, finding_id: str) -> str:
    """The overlay of a finding, relative to the batch folder."""
    return f"overlays/{study_id}/{finding_id}.png"


def _write_overlays(
    volume: Volume, findings: list[dict[str, Any]], out_dir: Path, study_id: str, limit: int
) -> None:
    from nodule.paths import atomic_path

    for finding in [f for f in findings if f["above_threshold"]][:limit]:
        rel = overlay_path(study_id, finding["id"])
        title = (
            f"{study_id[-28:]}  {finding['id']}  p={finding['probability']:.3f}  "
            f"d~{finding['diameter_mm']:.1f} mm  ({NOTICE})"
        )
        with atomic_path(out_dir / rel) as part:
            render_finding(volume, tuple(finding["world_xyz_mm"]), finding["diameter_mm"], part, title=title)
        finding["overlay"] = rel
