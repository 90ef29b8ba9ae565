"""Candidates for many studies: discovery, parallel processing, CSV output.

:func:`discover_studies` turns inputs (DICOM folders, ``.mhd/.mha/.nii(.gz)`` files,
folders of such files, a LUNA16-layout folder) into one path per study;
:func:`run_batch` runs :func:`~nodule.candidates.detect.detect_candidates` on each,
in parallel processes if asked, with a progress bar, and writes

* the candidate CSV: ``seriesuid,coordX,coordY,coordZ,probability`` (the detector
  score) followed by the columns of :data:`~nodule.candidates.detect.CANDIDATE_COLUMNS`,
  a valid LUNA16 submission;
* the summary CSV: one row per study with its status, the error (naming the file and
  the problem) of a study that failed, the warnings of its reading (e.g. a few NaN
  voxels read as air), lung volume, candidates per detector and the seconds of each step.

A study that fails (unreadable, no lungs, ...) is recorded and the batch goes on; so is
an input that yields no study (an empty folder, a folder without CT images): a failed
row ``no CT study found in FOLDER: ...``. The output files are checked before any work
starts (:func:`nodule.paths.check_output_file`): never an input, never inside an input
study, an existing file only with ``overwrite``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from nodule.candidates.detect import (
    DETECTORS,
    CandidateConfig,
    detect_candidates,
    empty_candidates,
    set_detector_threads,
)
from nodule.errors import InputWarning
from nodule.io import DICOM_SUFFIXES, VOLUME_SUFFIXES, looks_like_dicom, read_volume
from nodule.paths import OutputPathError, check_output_file

SUMMARY_COLUMNS = (
    "study",
    "seriesuid",
    "status",
    "error",
    "warnings",
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


@dataclass(frozen=True)
class Study:
    """One entry of :func:`discover`: a study path, or an input that yields none.

    Attributes:
        path: the study (file or DICOM folder), or the input that yields no study.
        problem: None for a study; else why the input yields none
            (``no CT study found in FOLDER: ...``).
    """

    path: Path
    problem: str | None = None


def _no_study_reason(folder: Path) -> str:
    """Why a folder yields no study (its content, briefly)."""
    files: list[Path] = []
    folders: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".")]
        folders.extend(dirs)
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        if len(files) > 1000:
            break
    if not files:
        what = f"it holds only {len(folders)} empty subfolder(s)" if folders else "it is empty"
    else:
        example = ", ".join(p.name for p in files[:3])
        what = (
            f"{len(files)}{'+' if len(files) > 1000 else ''} file(s), none a volume "
            f"({', '.join(VOLUME_SUFFIXES)}) or a DICOM image (e.g. {example})"
        )
    return f"no CT study found in {folder}: {what}"


def discover(inputs: Sequence[str | os.PathLike[str]]) -> list[Study]:
    """:func:`discover_studies` with the inputs that yield no study kept as entries with a
    problem, in input order: an empty folder, a folder without volume or DICOM files
    (``no CT study found in FOLDER: ...``). A path that does not exist is kept as a study
    (reading it names the problem).

    Args:
        inputs: files and folders.

    Returns:
        The entries, studies without duplicates.
    """
    found: list[Study] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        studies = _studies_of(path)
        if not studies and path.is_dir():
            found.append(Study(path, _no_study_reason(path)))
        for study in studies:
            if study not in seen:
                seen.add(study)
                found.append(Study(study))
    return found


def _studies_of(path: Path) -> list[Path]:
    if path.is_dir():
        subsets = sorted(p for p in path.glob("subset*") if p.is_dir())
        if subsets:
            return sorted(
                f
                for s in subsets
                for f in s.iterdir()
                if f.suffix == ".mhd" or (f.is_dir() and not f.name.startswith("."))
            )
        return list(_walk(path))
    return [path]


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
        The study paths (inputs that yield no study are left out; see :func:`discover`).
    """
    return [entry.path for entry in discover(inputs) if entry.problem is None]


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
    row.update(study=str(path), seriesuid="", status="ok", error="", warnings="")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            volume = read_volume(path)
        for w in caught:
            if issubclass(w.category, InputWarning):
                row["warnings"] = "; ".join(filter(None, [row["warnings"], str(w.message)]))
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
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


def _failed_row(path: Path, error: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(study=str(path), seriesuid="", status="error", error=error, warnings="")
    return row


def summary_path_for(out: Path) -> Path:
    """Default summary path next to the candidate CSV: ``<stem>_summary.csv``."""
    return out.with_name(f"{out.stem}_summary.csv")


def _init_worker(threads: int) -> None:
    """A worker's threads (torch's for the learned detector, and the detectors run at once):
    the cores shared among the workers."""
    import torch

    torch.set_num_threads(threads)
    set_detector_threads(threads)


def run_batch(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    jobs: int = 1,
    summary: str | os.PathLike[str] | None = None,
    config: CandidateConfig | None = None,
    progress: bool = True,
    overwrite: bool = True,
) -> BatchResult:
    """Detect candidates in every study of ``inputs`` and write the CSVs.

    The output paths are checked first (:func:`nodule.paths.check_output_file`): an
    output that is an input or lies inside an input study is refused, and so is an
    existing output unless ``overwrite``. Every study that fails, and every input that
    yields no study, is a failed row of the summary.

    Args:
        inputs: files and folders (see :func:`discover`).
        out: candidate CSV to write; None writes nothing.
        jobs: worker processes (1: in this process).
        summary: summary CSV; default ``<out stem>_summary.csv`` beside ``out``.
        config: candidate parameters (None: defaults).
        progress: show a progress bar over the studies.
        overwrite: replace existing output files (the command's default is not to).

    Returns:
        The candidates and the summary.

    Raises:
        OutputPathError: an output path is refused (before any study is read).
    """
    from nodule.data.luna16 import write_csv, write_submission

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    summary_out = None
    if out is not None:
        summary_out = Path(summary) if summary is not None else summary_path_for(Path(out))
        given = [Path(p) for p in inputs]
        check_output_file(Path(out), given, overwrite=overwrite)
        check_output_file(summary_out, given, overwrite=overwrite)
        if Path(out).resolve() == summary_out.resolve():
            raise OutputPathError(f"{summary_out}: the summary would overwrite the candidate CSV")
    entries = discover(inputs)
    studies = [e.path for e in entries if e.problem is None]
    todo = [i for i, e in enumerate(entries) if e.problem is None]
    results: list[tuple[pd.DataFrame, dict[str, Any]] | None] = [
        None if e.problem is None else (empty_candidates(), _failed_row(e.path, e.problem))
        for e in entries
    ]
    bar = tqdm(total=len(studies), unit="study", disable=not progress, desc="candidates")
    if jobs <= 1 or len(studies) <= 1:
        for i in todo:
            results[i] = process_study(entries[i].path, config)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker, initargs=(max(1, (os.cpu_count() or 1) // jobs),)) as pool:
            futures = {pool.submit(_job, (entries[i].path, config)): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except Exception as exc:  # the worker itself died
                    row = _failed_row(entries[i].path, _error_text(entries[i].path, exc))
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
    out_path = None
    if out is not None and summary_out is not None:
        out_path = write_submission(candidates, Path(out))
        summary_out = write_csv(table, summary_out)
    return BatchResult(candidates, table, out_path, summary_out)
