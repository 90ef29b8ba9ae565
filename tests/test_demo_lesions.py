"""The demo's line on the training-side real scans' recorded lesions names the right scan."""

from __future__ import annotations

import json
from pathlib import Path

from nodule.demo import _known_lesion_line

A0001 = "1.3.6.1.4.1.14519.5.2.1.6655.2359.257508444832901632590301540805"


def test_each_lesion_is_named_by_its_scan(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    finding = {"id": "F002", "world_xyz_mm": [45.0, 190.0, -200.0], "probability": 0.9, "above_threshold": True}
    far = {"id": "F001", "world_xyz_mm": [-100.0, 0.0, 0.0], "probability": 0.99, "above_threshold": True}
    (studies / f"{A0001}.json").write_text(json.dumps({"findings": [far, finding]}))
    line = _known_lesion_line(tmp_path)
    assert line == "lung-pet-ct-dx-a0001 known lesion (81 mm): finding F002, rank 2, probability 0.900 (at or above the threshold)"
    (studies / f"{A0001}.json").write_text(json.dumps({"findings": [far]}))
    assert _known_lesion_line(tmp_path) == "lung-pet-ct-dx-a0001 known lesion (81 mm): no finding within its radius"
