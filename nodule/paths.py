"""Where shared reference data and generated data live.

Reference data (LUNA16 tables, the real CT) is found through ``NODULE_DATA``
(default ``../shared/data`` from the repository root). Generated data (synthetic
sets, caches, shape banks) lives under ``NODULE_CACHE`` (default
``~/.cache/nodule``), never inside the repository.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
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
