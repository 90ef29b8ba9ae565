"""Shared fixtures: the reference data folders (skipped with a reason when absent) and an
isolated cache folder so that tests never read or write the user's ~/.cache/nodule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodule.io import Volume, read_volume
from nodule.paths import data_dir


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["NODULE_CACHE"] = str(tmp_path_factory.mktemp("nodule_cache"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path}; set NODULE_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def luna16_dir() -> Path:
    """$NODULE_DATA/luna16: the real LUNA16 annotations, excluded, seriesuids and folds."""
    return _require(data_dir() / "luna16", "LUNA16 reference tables")


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    """$NODULE_DATA/real_ct/cptac-lscc-c3n-00247: one real chest CT DICOM series."""
    return _require(data_dir() / "real_ct" / "cptac-lscc-c3n-00247", "the real CT series")


@pytest.fixture(scope="session")
def real_ct_volume(real_ct_dir: Path) -> Volume:
    """The real CT read once per test session (treat as read-only)."""
    return read_volume(real_ct_dir)
