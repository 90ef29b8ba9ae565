"""scripts/phantom_realism.py runs on a small phantom against the real CT and writes its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scripts_loader import load_script

from nodule.io import Volume
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


def test_findings_are_left_out_of_the_lung_density_rows_not_of_its_volume() -> None:
    """A lung of -850 HU with one 10 mm ball of 0 HU (a recorded nodule): left out with
    its margin, the ball no longer counts as dense lung, and the lung volume stays."""
    realism = load_script("phantom_realism")
    a = np.full((40, 64, 64), -850.0, np.float32)
    zz, yy, xx = np.ogrid[:40, :64, :64]
    ball = (zz - 20) ** 2 + (yy - 32) ** 2 + (xx - 32) ** 2 <= 5**2
    a[ball] = 0.0
    lung = np.zeros(a.shape, bool)
    lung[5:35, 8:56, 8:56] = True
    vol = Volume(a, spacing=(1.0, 1.0, 1.0), origin=(-10.0, -20.0, -30.0))
    nodule = pd.DataFrame({"coordX": [22.0], "coordY": [12.0], "coordZ": [-10.0], "diameter_mm": [10.0]})
    mask = realism.findings_mask(vol, nodule)
    r = 5.0 + realism.FINDING_MARGIN_MM
    assert mask[20, 32, 32] and mask[20, 32, 32 + int(r)] and not mask[20, 32, 32 + int(r) + 1]
    assert mask.sum() == ((zz - 20) ** 2 + (yy - 32) ** 2 + (xx - 32) ** 2 <= r * r).sum()
    unknown = realism.findings_mask(vol, nodule.assign(diameter_mm=-1.0))
    assert unknown.sum() == ((zz - 20) ** 2 + (yy - 32) ** 2 + (xx - 32) ** 2 <= (realism.UNKNOWN_DIAMETER_MM / 2 + realism.FINDING_MARGIN_MM) ** 2).sum()
    with_ball, _ = realism.scan_metrics(vol, lung)
    without, _ = realism.scan_metrics(vol, lung, mask)
    assert with_ball["frac_above_500"] > 0.005 and without["frac_above_500"] == 0.0
    assert with_ball["structures_per_l"] > 0 and without["structures_per_l"] == 0.0
    assert without["lung_volume_l"] == with_ball["lung_volume_l"] == lung.sum() / 1e6
    assert abs(without["lung_hu_mean"] + 850.0) < 1e-3


def test_known_findings_of_the_shared_scans(luna16_dir: Path) -> None:
    """CPTAC's recorded lesion (data_manifests); LIDC-IDRI-0001's rows of the LUNA16 tables
    (1 nodule and 25 excluded findings); none for a folder the split does not name."""
    realism = load_script("phantom_realism")
    cptac = realism.known_findings("cptac-lscc-c3n-00247")
    assert len(cptac) == 1 and cptac["diameter_mm"].iloc[0] == 18.0
    assert len(realism.known_findings("lidc-idri-0001")) == 26
    assert len(realism.known_findings("not-a-real-scan")) == 0
