"""Where shared reference data and generated data live.

Reference data (LUNA16 tables, the real CT) is found through ``NODULE_DATA``
(default ``../shared/data`` from the repository root). Generated data (synthetic
sets, caches, shape banks) lives under ``NODULE_CACHE`` (default
``~/.cache/nodule``), never inside the repository.

Output paths are checked before a command starts any work
(:func:`check_output_file`, :func:`check_output_dir`): an output that is one of the
inputs or lies inside an input study, an existing output file without ``--overwrite``,
an output under a regular file or in a place that cannot be written is refused with
:class:`OutputPathError`, naming the path and the problem.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The shared reference data folder (``$NODULE_DATA`` or ``../shared/data``)."""
    env = os.environ.get("NODULE_DATA")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data")


def cache_dir(*parts: str) -> Path:
    """A folder for generated data under ``$NODULE_CACHE`` (default ``~/.cache/nodule``), created."""
    env = os.environ.get("NODULE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "nodule"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def luna16_dir() -> Path:
    """The real LUNA16 reference tables (annotations, excluded, seriesuids, folds)."""
    return data_dir() / "luna16"


def real_ct_dir() -> Path:
    """The one real chest CT DICOM series shipped as shared data."""
    return data_dir() / "real_ct" / "cptac-lscc-c3n-00247"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a result to; renamed onto ``path`` on success.

    The temporary file (hidden, unique per call, so that concurrent writers never share
    one) is flushed to disk and renamed into place when the block ends without an
    exception, and removed otherwise: an interrupted job never leaves a half-written
    file under the final name. The parent folder is created.

    Args:
        path: the final file.

    Yields:
        The temporary path to write.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    try:
        yield part
        with part.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path` (a temporary file and a
    rename), so that an interrupted job never leaves a half-written file that looks complete."""
    with atomic_path(path) as part:
        part.write_text(text)
    return path


# --------------------------------------------------------------------------- output paths


class OutputPathError(ValueError):
    """An output path that a command refuses to write; the message names the path and the problem."""


_STUDY_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".raw", ".zraw", ".dcm", ".dicom", ".ima")
"""Files of a study: an existing one of these under an input folder is never overwritten."""


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop
        raise OutputPathError(f"{path}: cannot resolve the path: {exc}") from exc


def _mhd_data_files(header: Path) -> list[Path]:
    """The data files a ``.mhd`` header names, and its ``.raw``/``.zraw`` siblings."""
    files = [header.with_suffix(".raw"), header.with_suffix(".zraw")]
    try:
        with header.open("rb") as fh:
            text = fh.read(65536).decode("latin-1")
    except OSError:
        return files
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE)
    if match and match.group(1) != "LOCAL" and not match.group(1).startswith("LIST"):
        files.append(header.parent / match.group(1))
    return files


def _is_dicom_file(path: Path) -> bool:
    from nodule.io import looks_like_dicom  # SimpleITK and pydicom: imported on use

    return looks_like_dicom(path)


def _is_study_folder(folder: Path) -> bool:
    """A folder holding DICOM files directly (a DICOM study: nothing may be written into it)."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return False
    return any(_is_dicom_file(p) for p in files[:20])


def _input_conflict(out: Path, inputs: Sequence[Path]) -> str | None:
    """Why writing ``out`` (resolved) would touch an input, or None."""
    for given in inputs:
        try:
            item = Path(given).expanduser().resolve()
        except (OSError, RuntimeError):  # a symbolic link loop: nothing there to overwrite
            item = Path(os.path.abspath(Path(given).expanduser()))
        if out == item:
            return f"it is an input ({given})"
        if not item.exists():
            continue
        if item.is_file():
            data = [_resolved(p) for p in _mhd_data_files(item)] if item.suffix.lower() == ".mhd" else []
            if out in data:
                return f"it is the data file of the input {given}"
            if _is_dicom_file(item) and out.parent == item.parent:
                return f"it is inside the DICOM study folder of the input {given}"
            continue
        if not out.is_relative_to(item):
            continue
        if out.is_file() and out.name.lower().endswith(_STUDY_SUFFIXES):
            return f"it is a study file under the input {given}"
        for folder in (out.parent, *out.parent.parents):
            if not folder.is_relative_to(item):
                break
            if folder.is_dir() and _is_study_folder(folder):
                return f"it is inside the DICOM study {folder} (input {given})"
        if out.is_dir() and _is_study_folder(out):
            return f"it is the DICOM study {out} (input {given})"
    return None


def _refuse_input_conflict(given: Path, inputs: Sequence[Path], what: str) -> Path:
    """The resolved output path, or :class:`OutputPathError` when writing there would touch an input."""
    out = _resolved(given)
    conflict = _input_conflict(out, inputs)
    if conflict is not None:
        raise OutputPathError(f"{given}: refusing to write the {what} there: {conflict}")
    return out


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _check_place(path: Path, given: Path) -> None:
    """The nearest existing ancestor must be a folder that can be written."""
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputPathError(f"{given}: cannot create it: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{given}: cannot write there: no write permission in {ancestor}")
    try:  # read-only file systems (and root on them) pass os.access
        fd, probe = tempfile.mkstemp(prefix=".nodule-write-check-", dir=ancestor)
    except OSError as exc:
        raise OutputPathError(
            f"{given}: cannot write there: {ancestor}: {exc.strerror or exc}"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: Path, inputs: Sequence[Path], *, overwrite: bool) -> None:
    """Refuse an output file that cannot or must not be written, before any work starts.

    Refused (:class:`OutputPathError`, naming the path and the problem): the path is one
    of ``inputs`` (whatever ``overwrite``); it is a data file of an input ``.mhd``
    (``.raw``/``.zraw``), a study file (volume or DICOM) under an input folder, or lies
    inside a DICOM study folder of an input; it is an existing folder; it exists and
    ``overwrite`` is False; a parent is a regular file; the place cannot be written.
    Nothing is created (a probe file in the nearest existing folder is removed at once).

    Args:
        path: the output file.
        inputs: the command's input files and folders.
        overwrite: whether an existing output file may be replaced (``--overwrite``).

    Raises:
        OutputPathError: see above.
    """
    given = Path(path)
    out = _refuse_input_conflict(given, inputs, "output")
    if out.is_dir():
        raise OutputPathError(f"{given}: is a folder; expected the path of an output file")
    if out.exists():
        if not overwrite:
            raise OutputPathError(f"{given}: exists; pass --overwrite to replace it")
        if not os.access(out, os.W_OK):
            raise OutputPathError(f"{given}: exists and cannot be written (no write permission)")
    elif given.is_symlink():
        raise OutputPathError(f"{given}: a broken symbolic link; remove it or choose another path")
    _check_place(out, given)


def check_output_dir(path: Path, inputs: Sequence[Path], *, overwrite: bool = True) -> None:
    """Refuse an output folder that cannot or must not be written, before any work starts.

    Refused (:class:`OutputPathError`, naming the path and the problem): the path is one
    of ``inputs`` or lies inside an input DICOM study folder (or is one), or is a study
    file; it exists and is not a folder; it is a non-empty folder and ``overwrite`` is
    False (resumable commands pass True: they check what the folder holds themselves);
    a parent is a regular file; the place cannot be written. Nothing is created.

    Args:
        path: the output folder.
        inputs: the command's input files and folders.
        overwrite: whether a folder that already holds files may be written into.

    Raises:
        OutputPathError: see above.
    """
    given = Path(path)
    out = _refuse_input_conflict(given, inputs, "outputs")
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{given}: exists and is not a folder; expected an output folder")
    if out.is_dir():
        if not overwrite and any(out.iterdir()):
            raise OutputPathError(f"{given}: folder is not empty; pass --overwrite to write into it")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputPathError(f"{given}: cannot write there: no write permission")
        _check_place(out / "x", given)
    else:
        _check_place(out, given)
