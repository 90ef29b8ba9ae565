"""scripts/phantom_realism.py runs on a small phantom against the real CT and writes its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nodule.paths import REPO_ROOT

ROWS = (
    "lung volume",
    "lung HU mean",
    "lung HU std",
    "Wasserstein",
    "fraction of lung volume > -500 HU",
    "per litre",
    "noise in air",
    "noise in subcutaneous fat",
    "chest wall",
)


def test_realism_script_on_a_small_phantom(real_ct_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "realism.md"
    env = {**os.environ, "NODULE_DATA": str(real_ct_dir.parent.parent)}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "phantom_realism.py"), "--n", "1"]
    command += ["--preset", "small", "--out", str(out), "--images", str(tmp_path / "images")]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=300)
    text = out.read_text()
    for row in ROWS:
        assert row in text, f"realism table lacks the row {row!r}"
    assert (tmp_path / "images" / "realism_0.png").stat().st_size > 10_000
    result = json.loads(out.with_suffix(".json").read_text())
    assert 2.0 < result["real"]["lung_volume_l"] < 8.0
    assert len(result["rows"]) >= len(ROWS)
    for row in result["rows"]:
        assert len(row["phantoms"]) == 1, row["metric"]
