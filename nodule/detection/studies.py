"""Which studies a batch of inputs holds: discovery, series choice, duplicates and shards.

:func:`find_studies` turns the inputs of ``nodule detect`` into studies:

* files and folders are searched as by :func:`nodule.candidates.batch.discover`
  (``.mhd/.mha/.nii/.nii.gz`` files, DICOM folders, LUNA16 layouts);
* a DICOM folder that holds several series becomes one study per CT series; series
  that are not CT, or are localizers (``ImageType`` LOCALIZER, or fewer than
  :data:`MIN_SERIES_FILES` files), are skipped, and the folder's series with the choice
  made for each are recorded in every study of the folder (:attr:`StudyRef.series_in_folder`);
* an input folder that holds no study at all (an empty folder, a folder of text files)
  is returned as an :class:`EmptyInput`, to be recorded as failed (a path that does not
  exist is a study whose reading fails, naming the problem);
* the same file or folder reached through two inputs (a symbolic link, a folder and a
  file inside it) is processed once, with a warning. The same scan stored twice (two
  copies of one series) is found later, by its SeriesInstanceUID.

Each study has a :attr:`StudyRef.key`, a hash of its resolved path and series, that
names its record and decides its shard (:func:`in_shard`): a study's shard never
depends on the other inputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from nodule.candidates.batch import discover
from nodule.io import find_dicom_series

logger = logging.getLogger(__name__)

MIN_SERIES_FILES = 16
"""A series with fewer files than this is a localizer or a single-slice series, not a study."""


@dataclass(frozen=True)
class StudyRef:
    """One study to process.

    Attributes:
        path: a volume file, a DICOM file or a DICOM folder.
        series_uid: the series to read from a DICOM folder with several (None: the reader's choice).
        series_in_folder: the folder's series and what was done with each (``uid``,
            ``modality``, ``files``, ``image_type``, ``choice``: ``processed`` or why skipped).
    """

    path: Path
    series_uid: str | None = None
    series_in_folder: tuple[dict[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        """16 hex digits naming the study's record: a hash of its resolved path and series."""
        text = f"{os.path.realpath(self.path)}|{self.series_uid or ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EmptyInput:
    """An input that holds no study.

    Attributes:
        path: the input as given.
        reason: why, for a person.
    """

    path: Path
    reason: str

    @property
    def key(self) -> str:
        """16 hex digits naming the input's failure record."""
        text = f"empty|{os.path.realpath(self.path)}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Discovery:
    """What :func:`find_studies` found.

    Attributes:
        studies: the studies, in input order.
        empty: inputs that hold no study.
        warnings: notes for the user (duplicates, skipped series).
    """

    studies: list[StudyRef]
    empty: list[EmptyInput]
    warnings: list[str]


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # an unreadable header: the reader reports it
        return None


def _split_series(folder: Path) -> list[StudyRef]:
    """One study per CT series of a DICOM folder that holds several series."""
    try:
        series = find_dicom_series(folder)
    except RuntimeError:
        series = {}
    if len(series) <= 1:
        return [StudyRef(folder)]
    rows: list[dict[str, Any]] = []
    for uid in sorted(series):
        files = series[uid]
        ds = _header(files[0])
        modality = str(ds.get("Modality", "")) if ds is not None else ""
        image_type = [str(v) for v in ds.get("ImageType", [])] if ds is not None else []
        if modality != "CT":
            choice = f"skipped: modality {modality or 'unknown'}, not CT"
        elif any(v.upper() == "LOCALIZER" for v in image_type):
            choice = "skipped: localizer"
        elif len(files) < MIN_SERIES_FILES:
            choice = f"skipped: {len(files)} files, fewer than {MIN_SERIES_FILES} (localizer or single slices)"
        else:
            choice = "processed"
        rows.append(
            {"uid": uid, "modality": modality, "files": len(files), "image_type": "\\".join(image_type), "choice": choice}
        )
    chosen = [r["uid"] for r in rows if r["choice"] == "processed"]
    if not chosen:  # nothing usable: the reader names the problem
        return [StudyRef(folder, None, tuple(rows))]
    return [StudyRef(folder, uid, tuple(rows)) for uid in chosen]


def find_studies(inputs: Sequence[str | os.PathLike[str]], series_uid: str | None = None) -> Discovery:
    """The studies of the inputs of a batch (see the module doc).

    Args:
        inputs: files and folders.
        series_uid: keep only this series: the DICOM folders that hold it (read as that
            series) and the volume files named by it.

    Returns:
        The studies, the inputs without a study, and warnings.
    """
    studies: list[StudyRef] = []
    empty: list[EmptyInput] = []
    notes: list[str] = []
    seen: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        found = []
        for entry in discover([path]):
            if entry.problem is not None:
                empty.append(EmptyInput(entry.path, entry.problem))
            else:
                found.append(entry.path)
        for study in found:
            real = os.path.realpath(study)
            if real in seen:
                notes.append(f"{study} is the same as {seen[real]}: processed once")
                continue
            seen[real] = study
            refs = _split_series(study) if study.is_dir() else [StudyRef(study)]
            if series_uid is not None:
                refs = _only_series(refs, series_uid)
            notes += [
                f"{study}: series {row['uid']} {row['choice']}"
                for ref in refs[:1]
                for row in ref.series_in_folder
                if row["choice"] != "processed" and row["uid"] != ref.series_uid
            ]
            studies.extend(refs)
    if series_uid is not None and not studies:
        empty.append(EmptyInput(Path(f"series {series_uid}"), f"series {series_uid} not found in the inputs"))
    return Discovery(studies, empty, notes)


def _only_series(refs: list[StudyRef], uid: str) -> list[StudyRef]:
    """The study of series ``uid`` among a folder's or file's studies (asked for by name, it is
    read even when the folder's choice skipped it)."""
    from nodule.io import series_uid_from_filename

    if not refs:
        return []
    first = refs[0]
    if first.path.is_dir():
        listed = {row["uid"] for row in first.series_in_folder}
        if uid in listed or uid in _series_of(first.path):
            return [StudyRef(first.path, uid, first.series_in_folder)]
        return []
    return [first] if series_uid_from_filename(first.path) == uid else []


def _series_of(folder: Path) -> set[str]:
    try:
        return set(find_dicom_series(folder))
    except RuntimeError:
        return set()


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Whether the study or input with this key belongs to shard ``(index, count)``
    (index from 0; None: every study)."""
    if shard is None:
        return True
    index, count = shard
    return int(key, 16) % count == index


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """``"I/N"`` (I from 0 to N-1) -> ``(I, N)``; None reads a Slurm job array
    (``SLURM_ARRAY_TASK_ID`` counted from ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``)
    when set, else no sharding.

    Raises:
        ValueError: a malformed shard, or an index outside ``0..N-1``.
    """
    environ = dict(os.environ) if env is None else env
    if text is None:
        if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
            return None
        try:
            index = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(environ["SLURM_ARRAY_TASK_COUNT"])
        except ValueError as exc:
            raise ValueError(f"bad Slurm array variables: {exc}") from exc
        source = "SLURM_ARRAY_TASK_ID/COUNT"
    else:
        source = f"--shard {text}"
        parts = text.split("/")
        try:
            index, count = (int(p) for p in parts) if len(parts) == 2 else (-1, 0)
        except ValueError:
            index, count = -1, 0
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"{source}: a shard is I/N with N >= 1 and 0 <= I < N")
    return index, count
