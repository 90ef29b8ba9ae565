"""Fingerprints: canonical, order-free, sensitive to every value; mismatches name what differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodule.fingerprint import (
    FINGERPRINT_CHARS,
    FingerprintMismatch,
    canonical_json,
    check_fingerprint,
    differences,
    file_fingerprint,
    fingerprint,
)

PARAMS = {"seed": 7, "preset": "small", "spacing": 1.25, "sizes": [1, 4], "nested": {"a": 1, "b": None}}


def test_stable_across_key_order_and_equivalent_types() -> None:
    reordered = {"nested": {"b": None, "a": 1}, "sizes": (1, 4), "spacing": 1.25, "preset": "small", "seed": 7}
    assert fingerprint(PARAMS) == fingerprint(reordered)
    assert canonical_json(PARAMS) == canonical_json(reordered)
    assert len(fingerprint(PARAMS)) == FINGERPRINT_CHARS
    assert int(fingerprint(PARAMS), 16) >= 0
    # numpy values and paths hash as their plain equivalents
    assert fingerprint({"seed": np.int64(7), "root": Path("/a/b")}) == fingerprint({"seed": 7, "root": "/a/b"})


@pytest.mark.parametrize(
    ("key", "value"),
    [("seed", 8), ("preset", "full"), ("spacing", 1.5), ("sizes", [1, 5]), ("nested", {"a": 2, "b": None}),
     ("nested", {"a": 1, "b": 0}), ("extra", None), ("seed", "7"), ("seed", 7.0), ("spacing", None)],
)
def test_differs_when_any_value_differs(key: str, value: object) -> None:
    assert fingerprint({**PARAMS, key: value}) != fingerprint(PARAMS)


def test_differences_and_mismatch_name_folder_and_parameters(tmp_path: Path) -> None:
    new = {**PARAMS, "seed": 8, "nested": {"a": 1, "b": 2}}
    assert differences(PARAMS, new) == ["nested.b: null -> 2", "seed: 7 -> 8"]
    assert differences(PARAMS, {**PARAMS, "sizes": (1, 4)}) == []
    assert check_fingerprint(tmp_path, "a set", PARAMS, dict(PARAMS)) == fingerprint(PARAMS)
    with pytest.raises(FingerprintMismatch, match="seed: 7 -> 8") as info:
        check_fingerprint(tmp_path, "a set", PARAMS, new, fingerprint(PARAMS))
    assert str(tmp_path) in str(info.value) and "other parameters" in str(info.value)
    assert info.value.folder == tmp_path and info.value.differing == ["nested.b: null -> 2", "seed: 7 -> 8"]
    # a record whose parameters were edited without its fingerprint is refused too
    with pytest.raises(FingerprintMismatch, match="does not match its parameters"):
        check_fingerprint(tmp_path, "a set", PARAMS, PARAMS, fingerprint(new))


def test_file_fingerprint(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("x: 1\n")
    b.write_text("x: 1\n")
    assert file_fingerprint(a) == file_fingerprint(b)
    b.write_text("x: 2\n")
    assert file_fingerprint(a) != file_fingerprint(b)
