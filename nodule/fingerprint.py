"""Fingerprints of outputs: one hash of everything that shapes an output, checked on reuse.

A job that writes into a folder (a patch cache, a ``nodule synth`` or ``nodule insert``
set, a training run of ``scripts/train_synth.py``) records the parameters that shape
what it writes, and their fingerprint, in a JSON file beside the output (``cache.json``,
``generator.json``, ``run.json``). A later job that would reuse or extend the folder
computes the fingerprint of its own parameters and goes on only if it is the same;
otherwise :func:`check_fingerprint` raises :class:`FingerprintMismatch`, naming the
folder and the parameters that differ.

The fingerprint is the first :data:`FINGERPRINT_CHARS` hex digits of the SHA-256 of the
parameters' canonical JSON (:func:`canonical_json`: sorted keys, no whitespace), so it
does not depend on the order the parameters were given in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

FINGERPRINT_CHARS = 16
"""Hex digits of a fingerprint (64 bits)."""


def _to_json(value: Any) -> Any:
    """JSON-ready form of values ``json`` does not know (paths, numpy values, dataclasses)."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}: {value!r}")


def canonical_json(params: Mapping[str, Any]) -> str:
    """The canonical JSON text of parameters: sorted keys, no whitespace, ASCII.

    Tuples become lists, paths strings, numpy values Python ones and dataclasses dicts.

    Args:
        params: the parameters (JSON-serialisable after the conversions above).

    Returns:
        The text that :func:`fingerprint` hashes.
    """
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=_to_json)


def fingerprint(params: Mapping[str, Any]) -> str:
    """The fingerprint of parameters: SHA-256 of :func:`canonical_json`, short hex.

    Args:
        params: everything that shapes the output.

    Returns:
        :data:`FINGERPRINT_CHARS` lowercase hex digits.
    """
    digest = hashlib.sha256(canonical_json(params).encode()).hexdigest()
    return digest[:FINGERPRINT_CHARS]


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """The fingerprint of a file's bytes (SHA-256, short hex), e.g. a configuration file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The parameters that differ, one ``name: old -> new`` line each (nested keys dotted).

    Values are compared through their canonical JSON, so a tuple equals the same list.

    Args:
        old: the recorded parameters.
        new: the parameters of this job.

    Returns:
        The differing parameters, sorted by name (missing ones shown as ``<missing>``).
    """
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{key}.{line}" for line in differences(a, b)]
        elif _canonical_value(a) != _canonical_value(b):
            out.append(f"{key}: {_show(a)} -> {_show(b)}")
    return out


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _canonical_value(value: Any) -> str:
    if value is _MISSING:
        return "<missing>"
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_to_json)


def _show(value: Any) -> str:
    if value is _MISSING:
        return "<missing>"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return _canonical_value(value)


class FingerprintMismatch(ValueError):
    """A folder holds an output made with other parameters than the job asks for.

    Attributes:
        folder: the folder.
        differing: the ``name: old -> new`` lines of the parameters that differ.
    """

    def __init__(self, folder: Path, message: str, differing: list[str]) -> None:
        super().__init__(message)
        self.folder = folder
        self.differing = differing


def check_fingerprint(
    folder: str | os.PathLike[str],
    what: str,
    recorded: Mapping[str, Any],
    params: Mapping[str, Any],
    recorded_fingerprint: str | None = None,
) -> str:
    """Check that a folder's recorded parameters are those of this job.

    Args:
        folder: the folder (named in the error).
        what: what it holds, for the error (e.g. ``"a patch cache"``).
        recorded: the parameters recorded in the folder.
        params: the parameters of this job.
        recorded_fingerprint: the fingerprint recorded beside them, if any (it must
            match them too: a record whose parameters were edited is refused).

    Returns:
        The fingerprint of ``params``.

    Raises:
        FingerprintMismatch: the fingerprints differ.
    """
    new = fingerprint(params)
    old = fingerprint(recorded)
    if old == new and recorded_fingerprint in (None, new):
        return new
    differing = differences(recorded, params)
    detail = "; ".join(differing) if differing else (
        f"its record's fingerprint {recorded_fingerprint} does not match its parameters"
    )
    shown = recorded_fingerprint or old
    raise FingerprintMismatch(
        Path(folder),
        f"{folder} holds {what} made with other parameters (fingerprint {shown}, this job "
        f"{new}): {detail}. Use another folder, or remove this one to start over.",
        differing,
    )
