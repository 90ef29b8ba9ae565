"""The ``nodule`` command: subcommands are wired, and ``candidates`` takes positional inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nodule.cli import COMMANDS, _positional_inputs, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in text


def test_positional_inputs_become_a_list() -> None:
    assert _positional_inputs(["candidates", "a b", "c.mhd", "--out", "x.csv"]) == [
        "candidates",
        "--inputs",
        '["a b", "c.mhd"]',
        "--out",
        "x.csv",
    ]
    unchanged = ["candidates", "--inputs", '["a"]', "--out", "x.csv"]
    assert _positional_inputs(unchanged) == unchanged
    assert _positional_inputs(["evaluate", "--out", "x"]) == ["evaluate", "--out", "x"]


def test_candidates_records_a_missing_study_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_such_study.mhd"
    out = tmp_path / "candidates.csv"
    with pytest.raises(SystemExit) as info:  # every study failed: exit status 1
        main(["candidates", str(missing), "--out", str(out), "--progress", "false"])
    assert info.value.code == 1
    summary = pd.read_csv(tmp_path / "candidates_summary.csv")
    assert len(summary) == 1
    assert summary["status"].iloc[0] != "ok"
    assert "no_such_study" in str(summary["error"].iloc[0])
    header = out.read_text().splitlines()[0]
    assert header.startswith("seriesuid,coordX,coordY,coordZ,probability")
    assert "failed" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_training_stage_fits_tests_and_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stage 6 of the demo on the tiny set of the training tests, with a tiny model."""
    import shutil

    from test_training_cli import write_tiny_luna16

    from nodule.demo import DEMO_CONFIG, training_stage

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    root = write_tiny_luna16(tmp_path / "tiny")
    candidates = tmp_path / "candidates"
    candidates.mkdir()
    for name in ("synthetic", "external", "real"):
        shutil.copy(root / "candidates.csv", candidates / f"{name}_candidates.csv")
    external = tmp_path / "external"  # as nodule insert makes it: one patient's anatomy
    shutil.copytree(root, external)
    (external / "generator.json").write_text('{"one_patient": true}')
    net = "--model.init_args.net.init_args"
    result = training_stage(
        root,
        external,
        candidates,
        tmp_path / "run",
        seed=0,
        extra=(
            "--data.init_args.dataset=null",
            "--data.init_args.train_folds=[0]",
            "--data.init_args.val_folds=[1]",
            "--data.init_args.test_folds=[2]",
            "--data.init_args.patch.size_px=16",
            "--data.init_args.patch.fov_mm=24",
            "--data.init_args.batch_size=8",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            f"{net}.input_size=16",
            f"{net}.channels=[4, 8]",
            f"{net}.kernel_sizes=[3, 3]",
        ),
        real=root,
    )
    assert DEMO_CONFIG.is_file()
    out = capsys.readouterr().out
    assert "synthetic test set: CPM" in out and "95% CI" in out
    assert "external set (inserted nodules, one real patient's anatomy; CI resamples nodules): CPM" in out
    assert getattr(result["external"], "bootstrap_unit", None) == "nodule"
    assert "real LIDC scans (real LUNA16 tables): 6 scans" in out and "false positives per scan" in out
    test = result["test"]
    assert getattr(test, "n_nodules", None) == 3 and getattr(test, "cpm_ci95", None) is not None
    assert getattr(result["external"], "n_scans", None) == 6
    assert Path(str(result["best_checkpoint"])).parent == tmp_path / "run" / "checkpoints"
    assert (tmp_path / "run" / "external_submission.csv").is_file()
