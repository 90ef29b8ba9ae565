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
    names = [real_ct_dir.name]  # one real scan keeps the test short; the default is all four
    command = [sys.executable, str(REPO_ROOT / "scripts" / "phantom_realism.py"), "--n", "1", "--real", *names]
    command += ["--preset", "small", "--out", str(out), "--images", str(tmp_path / "images")]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=900)
    text = out.read_text()
    for row in ROWS:
        assert row in text, f"realism table lacks the row {row!r}"
    result = json.loads(out.with_suffix(".json").read_text())
    assert sorted(result["scans"]) == sorted(names)
    for name in names:
        assert f"## {name}" in text
        assert 10_000 < (tmp_path / "images" / f"realism_{name}.png").stat().st_size < 400_000
        scan = result["scans"][name]
        assert 2.0 < scan["real"]["lung_volume_l"] < 8.0
        assert scan["kernel"] in ("soft", "standard", "sharp") and scan["noise_hu"] > 0
        assert scan["settings"]["slice_thickness"] > 0
        assert len(scan["rows"]) >= len(ROWS)
        for row in scan["rows"]:
            assert len(row["phantoms"]) == 1, row["metric"]
            assert row["result"] in ("pass", "FAIL", "-")
    # a rerun (without pictures) reads every phantom's metrics from the cache: the same rows
    subprocess.run(command[:-2], check=True, env=env, capture_output=True, timeout=900)
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["scans"] == result["scans"]
