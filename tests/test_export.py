"""Export of a training run (nodule.training.export): the validation threshold chooser on a
hand-made table, and a whole export of a tiny ``nodule fit`` run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_cli import write_tiny_luna16

from nodule.models.bundle import RESEARCH_USE_ONLY, load_model
from nodule.training.export import choose_threshold, export_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Scored items of two scans with four nodules (one missed: only in the denominator):
# P = hit nodule (its best probability), F = false positive.
SCORES = [0.95, 0.90, 0.80, 0.70, 0.60, 0.50, 0.40]
POSITIVE = [True, False, True, False, False, True, False]


def test_threshold_lowest_with_at_most_one_fp_per_scan() -> None:
    # false positives scoring >= t: 0.95 -> 0, 0.9 -> 1, 0.8 -> 1, 0.7 -> 2, 0.6 -> 3: with two
    # scans, 1 FP/scan allows two, so the lowest admissible threshold is 0.7
    point = choose_threshold(SCORES, POSITIVE, n_nodules=4, n_scans=2, max_fp_per_scan=1.0)
    assert point.threshold == pytest.approx(0.70)
    assert (point.n_found, point.n_false_positives, point.n_scans, point.n_nodules) == (2, 2, 2, 4)
    assert point.fp_per_scan == pytest.approx(1.0) and point.sensitivity == pytest.approx(0.5)
    # a looser target reaches further down; order of the items does not matter
    order = np.random.default_rng(0).permutation(len(SCORES))
    loose = choose_threshold(np.take(SCORES, order), np.take(POSITIVE, order), 4, 2, max_fp_per_scan=2.0)
    assert loose.threshold == pytest.approx(0.40) and loose.n_found == 3 and loose.fp_per_scan == 2.0
    # one FP per scan allowed but only half a scan's worth: 0.5 FP/scan -> at most 1 FP -> 0.8
    assert choose_threshold(SCORES, POSITIVE, 4, 2, max_fp_per_scan=0.5).threshold == pytest.approx(0.80)


def test_threshold_ties_and_extremes() -> None:
    # a false positive tied with a nodule at 0.8 counts at that threshold
    tied = choose_threshold([0.9, 0.8, 0.8, 0.3], [True, True, False, False], 2, 1, max_fp_per_scan=0.0)
    assert tied.threshold == pytest.approx(0.9) and tied.n_found == 1 and tied.n_false_positives == 0
    # the highest score is a false positive and none is allowed: just above it, nothing found
    none = choose_threshold([0.9, 0.8], [False, True], 1, 1, max_fp_per_scan=0.0)
    assert 0.9 < none.threshold <= 1.0 and none.n_found == 0 and none.fp_per_scan == 0.0
    # every false positive fits: the lowest score
    every = choose_threshold([0.9, 0.2, 0.1], [True, False, True], 3, 10, max_fp_per_scan=1.0)
    assert every.threshold == pytest.approx(0.1) and every.n_found == 2
    with pytest.raises(ValueError, match="no scored"):
        choose_threshold([], [], 1, 1)
    with pytest.raises(ValueError, match="no scans"):
        choose_threshold([0.5], [True], 1, 0)


@pytest.fixture
def tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``nodule fit`` run of configs/tiny.yaml (train fold 0, validation fold 1, test fold 2)
    in ``tmp_path/run``."""
    from nodule.training.cli import lightning_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NODULE_CACHE", str(tmp_path / "cache"))
    write_tiny_luna16(tmp_path / "tiny_luna16")
    run = tmp_path / "run"
    lightning_main(
        [
            "fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.logger=false",
            f"--trainer.default_root_dir={run}", f"--checkpoint.dirpath={run / 'checkpoints'}",
        ]
    )
    return run


def test_export_tiny_run(tiny_run: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.json"  # as scripts/train_synth.py writes it, one variant "run"
    figure = {"set": "tiny", "cpm": 0.5, "cpm_ci95": [0.25, 0.75], "bootstrap_unit": "scan", "sensitivities": {"1.0": 0.5}, "n_scans": 2, "n_nodules": 3, "n_hits": 3}
    results.write_text(json.dumps([{"variant": "run", "test": figure, "external": [dict(figure, set="ext")]}]))
    out = tmp_path / "model" / "model.pt"
    model = export_model(tiny_run, out, results=results, timings={"train": {"seconds": 75.0, "cpus": 2}}, commands=["nodule fit --config configs/tiny.yaml"])

    assert model.path == out and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["MODEL_CARD.md", "model.pt"]
    assert 0.0 <= model.threshold <= 1.0
    meta = model.metadata
    threshold = meta["threshold"]
    assert threshold["threshold"] == model.threshold and threshold["max_fp_per_scan"] == 1.0
    assert threshold["n_scans"] == 2 and threshold["chosen_on"].endswith("[1]")  # the validation fold only
    assert threshold["fp_per_scan"] <= 1.0
    assert meta["training"]["val_folds"] == [1] and meta["training"]["n_scans"]["val"] == 2
    assert meta["figures"]["test_and_external"]["test"]["cpm_ci95"] == [0.25, 0.75]
    assert meta["research_use"] == RESEARCH_USE_ONLY

    # the model predicts as the checkpoint it came from
    ckpt = load_model(tiny_run / "checkpoints" / "last.ckpt")
    assert ckpt.patch == model.patch and ckpt.threshold == 0.5
    x = np.random.default_rng(0).random((6, 9, 16, 16), dtype=np.float32)
    best = torch.load(out, weights_only=True)["metadata"]["training"]["checkpoint"]
    np.testing.assert_allclose(model.predict(x), load_model(tiny_run / "checkpoints" / best).predict(x), atol=1e-6)

    card = (out.parent / "MODEL_CARD.md").read_text()
    for text in (RESEARCH_USE_ONLY, f"{model.threshold:.4f}", "0.500 [0.250, 0.750]", "1 min 15 s", "nodule fit --config configs/tiny.yaml", "Known limits"):
        assert text in card, text

    # a second export reuses the validation predictions (same checkpoint and data)
    submission = tiny_run / "export" / "validation_submission.csv"
    stamp = submission.stat().st_mtime_ns
    again = export_model(tiny_run, tmp_path / "again.pt", card=False)
    assert submission.stat().st_mtime_ns == stamp and again.threshold == model.threshold
    assert not (tmp_path / "MODEL_CARD.md").exists()


def test_extra_training_sets_come_from_the_fit_overrides(tmp_path: Path) -> None:
    """A run's config.yaml is rewritten by its later predictions (extra_train: []); the extra
    training sets that ``nodule fit`` got are read from run.json's overrides."""
    import yaml

    from nodule.training.export import training_data

    run = tmp_path / "run"
    run.mkdir()
    init = {"root": str(tmp_path / "data"), "train_folds": [0], "val_folds": [1], "extra_train": []}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": init}}))
    assert training_data(run).extra_train == ()
    overrides = ["--data.init_args.extra_train=[a]", "--data.init_args.extra_train=[train_cptac_seed0, train_a0001_seed0]"]
    (run / "run.json").write_text(json.dumps({"params": {"overrides": overrides}}))
    assert training_data(run).extra_train == ("train_cptac_seed0", "train_a0001_seed0")  # the last one wins
    # without overrides: the recipe the run was trained with (run.json records its fingerprint)
    from nodule.fingerprint import file_fingerprint

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"init_args": {**init, "extra_train": ["train_cptac_seed0"]}}}))
    (run / "run.json").write_text(json.dumps({"params": {"config": file_fingerprint(recipe), "overrides": []}}))
    assert training_data(run, recipe=recipe).extra_train == ("train_cptac_seed0",)
    other = tmp_path / "other.yaml"
    other.write_text(recipe.read_text() + "# edited after training\n")
    assert training_data(run, recipe=other).extra_train == ()  # not the file it trained with
