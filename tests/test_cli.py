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
    main(["candidates", str(missing), "--out", str(out), "--progress", "false"])
    summary = pd.read_csv(tmp_path / "candidates_summary.csv")
    assert len(summary) == 1
    assert summary["status"].iloc[0] != "ok"
    assert "no_such_study" in str(summary["error"].iloc[0])
    header = out.read_text().splitlines()[0]
    assert header.startswith("seriesuid,coordX,coordY,coordZ,probability")
    assert "failed" in capsys.readouterr().err
