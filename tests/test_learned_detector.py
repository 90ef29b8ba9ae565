"""The learned candidate detector: targets, weights, peaks, its places among the candidates,
and its training crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scripts_loader import load_script

from nodule.candidates.learned import (
    CELL,
    CandidateNet,
    LearnedConfig,
    detect_learned,
    detector_trained_on,
    load_detector,
    predict,
    save_detector,
    training_target,
)
from nodule.candidates.merge import keep_reserved


def test_target_marks_the_cell_nearest_the_centre_with_its_offset() -> None:
    centre = np.array([21.0, 18.5, 26.2])
    label, weight, offset = training_target((12, 12, 12), np.array([[*centre, 5.0]]))
    cells = np.argwhere(label > 0)
    assert cells.tolist() == [[5, 5, 7]]  # round(centre / 4); half the radius reaches no other cell
    np.testing.assert_allclose(cells[0] * CELL + offset[:, 5, 5, 7] * CELL, centre, atol=1e-5)
    # the cells beside the nodule (within radius + 2 mm) carry no loss, the rest do
    ring = np.linalg.norm(np.argwhere(weight == 0) * CELL - centre, axis=1)
    assert len(ring) > 0 and ring.max() <= 2.5 + 2.0
    assert weight[0, 0, 0] == 1 and weight[5, 5, 7] == 1


def test_target_large_nodule_has_several_positive_cells_and_excluded_regions_carry_no_loss() -> None:
    label, weight, _ = training_target((12, 12, 12), np.array([[24.0, 24.0, 24.0, 20.0]]), np.array([[8.0, 8.0, 40.0, 6.0]]))
    assert label.sum() > 1
    assert np.linalg.norm(np.argwhere(label > 0) * CELL - 24.0, axis=1).max() <= 5.0 + 1e-6
    assert weight[2, 2, 10] == 0 and label[2, 2, 10] == 0


def _table(rows: list[tuple[float, float, float, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["coordX", "coordY", "coordZ", "score", "detectors"])


def test_reserved_candidates_keep_their_places_and_absorb_close_ones() -> None:
    ranked = _table([(float(i * 10), 0.0, 0.0, 1.0 - i / 100, "solid") for i in range(10)])
    reserved = _table([(200.0, 0.0, 0.0, 0.05, "learned"), (21.0, 0.0, 0.0, 0.9, "learned")])
    out = keep_reserved(ranked, reserved, distance_mm=5.0, limit=5)
    assert len(out) == 5
    xs = set(out["coordX"])
    assert {200.0, 21.0} <= xs  # both reserved ones, even the weakest
    assert 20.0 not in xs  # within 5 mm of a reserved one: joined it
    assert out.loc[out["coordX"] == 21.0, "detectors"].item() == "learned+solid"
    assert xs - {200.0, 21.0} == {0.0, 10.0, 30.0}  # then the best ranked ones
    assert list(out["score"]) == sorted(out["score"], reverse=True)
    assert keep_reserved(ranked, reserved.iloc[:0], 5.0, 3)["coordX"].tolist() == [0.0, 10.0, 20.0]


def test_weights_round_trip_and_bad_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = CandidateNet((4, 4, 8))
    path = save_detector(net, tmp_path / "det.pt", {"trained_on_uids": ["1.2.3"]})
    loaded, info = load_detector(str(path))
    assert loaded.channels == (4, 4, 8) and info["trained_on_uids"] == ["1.2.3"]
    assert detector_trained_on(path) == ["1.2.3"]
    assert detector_trained_on(tmp_path / "none.pt") is None
    x = np.full((20, 24, 28), -850.0, np.float32)
    prob, offset = predict(loaded, x)
    assert prob.shape == (5, 6, 7) and offset.shape == (3, 5, 6, 7)
    assert np.all((prob > 0) & (prob < 1))
    with pytest.raises(FileNotFoundError, match=r"none\.pt"):
        load_detector(str(tmp_path / "none.pt"))
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is not candidate detector weights"):
        load_detector(str(tmp_path / "other.pt"))


def test_detect_learned_needs_the_1mm_grid_and_can_be_off() -> None:
    x = np.full((16, 16, 16), -850.0, np.float32)
    lungs = np.ones(x.shape, bool)
    with pytest.raises(ValueError, match="1 mm grid"):
        detect_learned(x, lungs, (1.5, 1.5, 1.5))
    assert len(detect_learned(x, lungs, (1.0, 1.0, 1.0), LearnedConfig(weights=None))) == 0


def test_training_crop_moves_the_target_with_the_image(tmp_path: Path) -> None:
    script = load_script("train_candidate_detector")
    size = script.PATCH
    z, y, x = np.mgrid[:size, :size, :size]
    centre = np.array([30.0, 27.0, 36.0])  # off the middle on every axis
    ball = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 3.0**2
    patch = np.where(ball, 0, -850).astype(np.int16)
    corner = np.array([100, 200, 300])
    np.savez(
        tmp_path / "scan.npz",
        patches=patch[None],
        corners=corner[None],
        kinds=np.array([1], np.int8),
        nodules=np.array([[*(centre + corner), 6.0]]),
        excluded=np.zeros((0, 4)),
    )
    data = script.PatchSet([tmp_path / "scan.npz"])
    rng = np.random.default_rng(3)
    for _ in range(12):
        image, label, _, offset = data.sample(0, rng)
        found = np.argwhere(image > -425).mean(axis=0)  # the ball where the crop put it
        cell = np.argwhere(label > 0)
        assert len(cell) == 1
        np.testing.assert_allclose(cell[0] * CELL + offset[(slice(None), *cell[0])] * CELL, found, atol=0.5)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Weights of an untrained network: the stage's plumbing, not the detector's skill."""
    torch.manual_seed(1)
    return str(save_detector(CandidateNet((4, 4, 8)), tmp_path_factory.mktemp("det") / "det.pt", {}))


@pytest.mark.parametrize("spacing", [1.0, 1.5])
def test_stage_gives_the_learned_peaks_their_places(random_weights: str, spacing: float) -> None:
    from test_candidates import make_phantom

    from nodule.candidates import CandidateConfig, detect_candidates

    phantom = make_phantom()
    quota = 7
    on = CandidateConfig(work_spacing_mm=spacing, max_per_scan=20, learned=LearnedConfig(weights=random_weights, max_candidates=quota, min_probability=0.0))
    off = CandidateConfig(work_spacing_mm=spacing, max_per_scan=20, learned=LearnedConfig(weights=None))
    with_learned = detect_candidates(phantom.volume, phantom.labels, on)
    without = detect_candidates(phantom.volume, phantom.labels, off)
    assert with_learned.counts["learned"] == quota and without.counts["learned"] == 0
    assert "learned" in with_learned.seconds
    learned = with_learned.candidates["detectors"].str.split("+").apply(lambda d: "learned" in d)
    assert learned.sum() == quota  # every peak kept (the phantom's peaks lie > 5 mm apart)
    assert not without.candidates["detectors"].str.contains("learned").any()
    # the other places go to the best ranked candidates that are not within 5 mm of a peak
    xyz = ["coordX", "coordY", "coordZ"]
    peaks = with_learned.candidates.loc[learned, xyz].to_numpy()
    ranked = without.candidates[xyz].to_numpy()
    free = ranked[np.linalg.norm(ranked[:, None] - peaks[None], axis=2).min(axis=1) >= 5.0][: 20 - quota]
    kept = with_learned.candidates.loc[~learned, xyz].to_numpy()
    assert len(kept) == len(free) > 0
    np.testing.assert_allclose(np.sort(kept, axis=0), np.sort(free, axis=0))



def test_cli_runs_the_learned_detector_from_given_weights_and_names_a_bad_file(
    random_weights: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nodule.cli import main
    from nodule.data.phantom import generate_phantom
    from nodule.io import write_volume

    study = write_volume(generate_phantom(seed=3, index=0, preset="small").volume, tmp_path / "study.mhd")
    base = ["candidates", str(study), "--progress", "false"]
    main([*base, "--out", str(tmp_path / "on.csv"), "--learned_detector", random_weights])
    assert pd.read_csv(tmp_path / "on.csv")["detectors"].str.contains("learned").any()
    assert pd.read_csv(tmp_path / "on_summary.csv")["n_learned"].iloc[0] > 0
    with pytest.raises(SystemExit) as stop:
        main([*base, "--out", str(tmp_path / "bad.csv"), "--learned_detector", str(tmp_path / "missing.pt")])
    assert stop.value.code == 1
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "bad.csv").exists()
