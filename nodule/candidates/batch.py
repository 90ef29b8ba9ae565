"""Candidates for many studies: discovery, parallel processing, CSV output.

:func:`discover_studies` turns inputs (DICOM folders, ``.mhd/.mha/.nii(.gz)`` files,
folders of such files, a LUNA16-layout folder) into one path per study;
:func:`run_batch` runs :func:`~nodule.candidates.detect.detect_candidates` on each,
in parallel processes if asked, with a progress bar, and writes

* the candidate CSV: ``seriesuid,coordX,coordY,coordZ,probability`` (the detector
  score) followed by the columns of :data:`~nodule.candidates.detect.CANDIDATE_COLUMNS`,
  a valid LUNA16 submission;
* the summary CSV: one row per study with its status, the error (naming the file and
  the problem) of a study that failed, lung volume, candidates per detector and the
  seconds of each step.

A study that fails (unreadable, no lungs, ...) is recorded and the batch goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from nodule.candidates.detect import DETECTORS, CandidateConfig, detect_candidates, empty_candidates
from nodule.io import DICOM_SUFFIXES, VOLUME_SUFFIXES, looks_like_dicom, read_volume

SUMMARY_COLUMNS = (
    "study",
    "seriesuid",
    "status",
    "error",
    "lung_ml",
    *(f"n_{d}" for d in DETECTORS),
    "n_candidates",
    "seconds_read",
    "seconds_lung",
    "seconds_resample",
    *(f"seconds_{d}" for d in DETECTORS),
    "seconds_rank",
    "seconds_merge",
    "seconds_total",
)
"""Columns of the per-study summary."""

_SKIP_SUFFIXES = (".raw", ".zraw", ".csv", ".txt", ".json", ".md", ".png", ".jpg", ".npy", ".npz", ".xml")


@dataclass
class BatchResult:
    """What :func:`run_batch` produced.

    Attributes:
        candidates: all candidates, study by study in input order.
        summary: one row per study (:data:`SUMMARY_COLUMNS`).
        candidates_path: the candidate CSV written (None if not written).
        summary_path: the summary CSV written (None if not written).
    """

    candidates: pd.DataFrame
    summary: pd.DataFrame
    candidates_path: Path | None
    summary_path: Path | None


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def _looks_like_dicom(path: Path) -> bool:
    name = path.name.lower()
    if not name.endswith(DICOM_SUFFIXES) and (
        name.endswith(_SKIP_SUFFIXES) or _is_volume_file(path) or name.startswith(".")
    ):
        return False
    return looks_like_dicom(path)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        here = Path(root)
        volumes = sorted(here / f for f in files if _is_volume_file(here / f))
        yield from volumes
        others = sorted(f for f in files if not _is_volume_file(here / f))
        if any(_looks_like_dicom(here / f) for f in others[:20]):
            yield here


def discover_studies(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """One path per study, in input order, without duplicates.

    Rules: a volume file (``.mhd/.mha/.nii/.nii.gz``) or a DICOM file is a study; a
    folder with ``subset*`` folders is a LUNA16 layout (``subset*/*.mhd`` and the DICOM
    folders ``subset*/<seriesuid>/`` of sets written as DICOM; the lung masks of
    ``seg-lungs-LUNA16`` are not studies); any other folder is searched
    recursively: each volume file is a study, and each folder holding DICOM files is
    one study (its series with most files is read). A path that does not exist is
    kept, so that its error is recorded in the summary.

    Args:
        inputs: files and folders.

    Returns:
        The study paths.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            subsets = sorted(p for p in path.glob("subset*") if p.is_dir())
            if subsets:
                found.extend(
                    sorted(f for s in subsets for f in s.iterdir() if f.suffix == ".mhd" or (f.is_dir() and not f.name.startswith(".")))
                )
            else:
                found.extend(_walk(path))
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def _error_text(path: Path, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if str(path) in text else f"{path}: {text}"


def process_study(path: Path, config: CandidateConfig | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read one study and detect its candidates; failures become a summary row.

    Args:
        path: the study (see :func:`discover_studies`).
        config: candidate parameters (None: defaults).

    Returns:
        The candidates (empty on failure) and the summary row (:data:`SUMMARY_COLUMNS`).
    """
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(study=str(path), seriesuid="", status="ok", error="")
    start = time.perf_counter()
    try:
        volume = read_volume(path)
        row["seconds_read"] = time.perf_counter() - start
        row["seriesuid"] = volume.series_uid
        result = detect_candidates(volume, None, config or CandidateConfig())
    except Exception as exc:  # a bad study is recorded, the batch goes on
        row.update(status="error", error=_error_text(path, exc))
        row["seconds_total"] = time.perf_counter() - start
        return empty_candidates(), row
    row["lung_ml"] = result.lung_ml
    for d in DETECTORS:
        row[f"n_{d}"] = result.counts[d]
    row["n_candidates"] = len(result.candidates)
    for step, sec in result.seconds.items():
        row[f"seconds_{step}"] = sec
    row["seconds_total"] = time.perf_counter() - start
    return result.candidates, row


def _job(args: tuple[Path, CandidateConfig | None]) -> tuple[pd.DataFrame, dict[str, Any]]:
    return process_study(*args)


def summary_path_for(out: Path) -> Path:
    """Default summary path next to the candidate CSV: ``<stem>_summary.csv``."""
    return out.with_name(f"{out.stem}_summary.csv")


def run_batch(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    jobs: int = 1,
    summary: str | os.PathLike[str] | None = None,
    config: CandidateConfig | None = None,
    progress: bool = True,
) -> BatchResult:
    """Detect candidates in every study of ``inputs`` and write the CSVs.

    Args:
        inputs: files and folders (see :func:`discover_studies`).
        out: candidate CSV to write; None writes nothing.
        jobs: worker processes (1: in this process).
        summary: summary CSV; default ``<out stem>_summary.csv`` beside ``out``.
        config: candidate parameters (None: defaults).
        progress: show a progress bar over the studies.

    Returns:
        The candidates and the summary.
    """
    from nodule.data.luna16 import write_csv, write_submission

    studies = discover_studies(inputs)
    results: list[tuple[pd.DataFrame, dict[str, Any]] | None] = [None] * len(studies)
    bar = tqdm(total=len(studies), unit="study", disable=not progress, desc="candidates")
    if jobs <= 1 or len(studies) <= 1:
        for i, path in enumerate(studies):
            results[i] = process_study(path, config)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_job, (path, config)): i for i, path in enumerate(studies)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except Exception as exc:  # the worker itself died
                    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
                    row.update(study=str(studies[i]), seriesuid="", status="error", error=_error_text(studies[i], exc))
                    results[i] = (empty_candidates(), row)
                bar.update()
    bar.close()
    done = [r for r in results if r is not None]
    frames = [c for c, _ in done if len(c)]
    candidates = pd.concat(frames, ignore_index=True) if frames else empty_candidates()
    table = pd.DataFrame([r for _, r in done], columns=list(SUMMARY_COLUMNS))
    for column in SUMMARY_COLUMNS:
        if column.startswith("n_"):
            table[column] = table[column].astype("Int64")
        elif column.startswith(("seconds_", "lung_")):
            table[column] = table[column].astype("float64")
    out_path = summary_out = None
    if out is not None:
        out_path = write_submission(candidates, Path(out))
        summary_out = write_csv(table, Path(summary) if summary is not None else summary_path_for(Path(out)))
    return BatchResult(candidates, table, out_path, summary_out)
