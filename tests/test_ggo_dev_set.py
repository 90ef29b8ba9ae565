"""The subsolid-rich development set of scripts/ggo_dev_set.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from scripts_loader import load_script

from nodule.data import phantom


def test_dev_set_draws_the_given_types_and_leaves_the_generator_alone(tmp_path: Path) -> None:
    before = dict(phantom.TYPE_P)
    only_ggo = {"solid": 0.0, "calcified": 0.0, "part-solid": 0.0, "ground-glass": 1.0}
    out = load_script("ggo_dev_set").make_dev_set(tmp_path / "dev", 4, seed=5, preset="small", types=only_ggo, shapes="ellipsoid")
    manifest = pd.read_csv(out / "manifest.csv")
    nodules = manifest[manifest["kind"] == "nodule"]
    assert len(nodules) > 0
    assert set(nodules["nodule_type"]) == {"ground-glass"}
    assert before == phantom.TYPE_P
    assert len(list(out.glob("subset*/*.mhd"))) == 4


def test_dev_set_refuses_a_folder_of_other_types(tmp_path: Path) -> None:
    script = load_script("ggo_dev_set")
    out = tmp_path / "dev"
    script.make_dev_set(out, 1, seed=5, preset="small", shapes="ellipsoid")
    with pytest.raises(ValueError, match="other parameters"):
        script.make_dev_set(out, 2, seed=5, preset="small", types={"solid": 1.0}, shapes="ellipsoid")
    assert len(list(out.glob("subset*/*.mhd"))) == 1
