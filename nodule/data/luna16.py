"""LUNA16 tables: annotations, excluded findings, candidates, submissions, scan lists and folds.

In memory every table is a pandas DataFrame with ``seriesuid`` as ``str`` and the
coordinate columns as ``float64`` (world mm, LUNA16 ``x, y, z``). Readers check the
columns and values and raise :class:`Luna16FormatError` naming the file, the line and
the column; writers keep every float exactly (shortest round-trip text, at least three
decimals). The scan list and the subset lists have no header, as in LUNA16.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from nodule.paths import atomic_path, write_text_atomic

TableKind = Literal["annotations", "excluded", "candidates", "submission"]

COORD_COLUMNS: tuple[str, str, str] = ("coordX", "coordY", "coordZ")


@dataclass(frozen=True)
class _Spec:
    required: tuple[str, ...]
    numeric: tuple[str, ...]
    optional_numeric: tuple[str, ...] = ()


_SPECS: dict[str, _Spec] = {
    "annotations": _Spec(
        ("seriesuid", *COORD_COLUMNS, "diameter_mm"), (*COORD_COLUMNS, "diameter_mm")
    ),
    "excluded": _Spec(
        ("seriesuid", *COORD_COLUMNS, "diameter_mm"), (*COORD_COLUMNS, "diameter_mm")
    ),
    "candidates": _Spec(
        ("seriesuid", *COORD_COLUMNS, "class"), (*COORD_COLUMNS, "class"), ("probability",)
    ),
    "submission": _Spec(
        ("seriesuid", *COORD_COLUMNS, "probability"), (*COORD_COLUMNS, "probability")
    ),
}


class Luna16FormatError(ValueError):
    """A LUNA16 table or list that does not follow the format.

    Attributes:
        source: the file (or the name of the in-memory table).
        line: 1-based line of the file (the header is line 1), or the row label of a DataFrame.
        column: the column concerned, if any.
    """

    def __init__(
        self, source: str, message: str, line: int | None = None, column: str | None = None
    ) -> None:
        self.source = source
        self.line = line
        self.column = column
        where = [source]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


def validate_table(
    table: pd.DataFrame,
    kind: TableKind,
    source: str = "<table>",
    seriesuids: Iterable[str] | None = None,
    first_line: int | None = None,
) -> pd.DataFrame:
    """Check a LUNA16 table and return a clean copy (``seriesuid`` str, numbers float64).

    Args:
        table: the table as read or built in memory; extra columns are kept.
        kind: ``annotations``, ``excluded``, ``candidates`` or ``submission``.
        source: name used in error messages (the file path when read from disk).
        seriesuids: the known scans; a row of another scan is an error. None: no check.
        first_line: file line of the first row (2 for a file with a header); None reports row labels.

    Returns:
        A new DataFrame with a fresh RangeIndex.

    Raises:
        Luna16FormatError: missing column, non-numeric / NaN / infinite value, empty or unknown seriesuid.
    """
    spec = _SPECS[kind]
    missing = [c for c in spec.required if c not in table.columns]
    if missing:
        raise Luna16FormatError(
            source, f"missing column(s) {missing} for {kind}; expected {list(spec.required)}"
        )
    out = table.reset_index(drop=True).copy()

    def where(pos: int) -> int:
        return pos + first_line if first_line is not None else int(table.index[pos])

    uid = out["seriesuid"]
    empty = uid.isna().to_numpy() | (uid.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        raise Luna16FormatError(
            source, "empty seriesuid", where(int(np.argmax(empty))), "seriesuid"
        )
    out["seriesuid"] = uid.astype(str).str.strip()
    numeric = [*spec.numeric, *(c for c in spec.optional_numeric if c in out.columns)]
    for column in numeric:
        values = pd.to_numeric(out[column], errors="coerce")
        bad = (values.isna() & out[column].notna()).to_numpy()
        if bad.any():
            pos = int(np.argmax(bad))
            raise Luna16FormatError(
                source, f"non-numeric value {out[column].iloc[pos]!r}", where(pos), column
            )
        array = values.to_numpy(dtype=np.float64)
        nan = np.isnan(array)
        if nan.any():
            raise Luna16FormatError(
                source, "missing or NaN value", where(int(np.argmax(nan))), column
            )
        inf = np.isinf(array)
        if inf.any():
            raise Luna16FormatError(source, "infinite value", where(int(np.argmax(inf))), column)
        out[column] = array
    if "class" in numeric:
        cls = out["class"].to_numpy()
        bad = ~np.isin(cls, (0.0, 1.0))
        if bad.any():
            pos = int(np.argmax(bad))
            raise Luna16FormatError(
                source, f"class must be 0 or 1, got {cls[pos]!r}", where(pos), "class"
            )
        out["class"] = cls.astype(np.int64)
    if seriesuids is not None:
        known = pd.Index(list(seriesuids))
        unknown = known.get_indexer(pd.Index(out["seriesuid"])) < 0 if len(out) else np.zeros(0, dtype=bool)
        if unknown.any():
            pos = int(np.argmax(unknown))
            raise Luna16FormatError(
                source, f"unknown seriesuid {out['seriesuid'].iloc[pos]!r}", where(pos), "seriesuid"
            )
    return out


def read_table(
    path: str | Path, kind: TableKind, seriesuids: Iterable[str] | None = None
) -> pd.DataFrame:
    """Read and check one LUNA16 table with a header (see :func:`validate_table`).

    Args:
        path: CSV file.
        kind: ``annotations``, ``excluded``, ``candidates`` or ``submission``.
        seriesuids: the known scans, or None for no check.

    Returns:
        The checked table.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"seriesuid": str}, skipinitialspace=True)
    except pd.errors.EmptyDataError as error:
        raise Luna16FormatError(str(path), "empty file, expected a header line") from error
    except pd.errors.ParserError as error:
        raise Luna16FormatError(
            str(path), f"not a valid CSV table ({error}){_separator_hint(path)}"
        ) from error
    except UnicodeDecodeError as error:
        raise Luna16FormatError(str(path), f"not a text CSV file ({error})") from error
    spec = _SPECS[kind]
    if any(c not in table.columns for c in spec.required) and (hint := _separator_hint(path)):
        raise Luna16FormatError(
            str(path), f"missing column(s) for {kind}; expected {list(spec.required)}{hint}"
        )
    return validate_table(table, kind, str(path), seriesuids, first_line=2)


def _separator_hint(path: Path) -> str:
    """``; the file looks semicolon-separated ...`` when its header line holds no comma but
    semicolons (or tabs), else ``""``."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            header = fh.readline()
    except OSError:
        return ""
    if "," in header:
        return ""
    for name, sep in (("semicolon", ";"), ("tab", "\t")):
        if sep in header:
            return (
                f"; the file looks {name}-separated: LUNA16 tables are comma-separated "
                "(in a spreadsheet, export as CSV with commas)"
            )
    return ""


def read_annotations(path: str | Path, seriesuids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read ``annotations.csv`` (seriesuid,coordX,coordY,coordZ,diameter_mm)."""
    return read_table(path, "annotations", seriesuids)


def read_excluded(path: str | Path, seriesuids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read ``annotations_excluded.csv`` (as annotations; a diameter of -1 means unknown)."""
    return read_table(path, "excluded", seriesuids)


def read_candidates(path: str | Path, seriesuids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a candidates table (seriesuid,coordX,coordY,coordZ,class[,probability,...])."""
    return read_table(path, "candidates", seriesuids)


def read_submission(path: str | Path, seriesuids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a submission (seriesuid,coordX,coordY,coordZ,probability[,...]); extra columns kept."""
    return read_table(path, "submission", seriesuids)


def format_floats(values: Iterable[float]) -> list[str]:
    """Text of floats that reads back exactly (shortest round trip), with at least three decimals."""
    out = []
    for value in values:
        text = repr(float(value))
        dot = text.find(".")
        if dot < 0 or len(text) - dot < 4 or "e" in text:
            text = np.format_float_positional(value, unique=True, min_digits=3, trim="k")
        out.append(text)
    return out


def write_csv(
    table: pd.DataFrame,
    path: str | Path,
    float_format: str | Callable[[Iterable[float]], list[str]] = format_floats,
) -> Path:
    """Write a table as CSV with a header, faster than ``DataFrame.to_csv`` for large plain tables.

    Args:
        table: the table; NaN is written as an empty cell.
        path: CSV file (parent folders are created); written to a temporary file beside
            it and renamed into place (:func:`~nodule.paths.atomic_path`), so that an
            interrupted write never leaves a half table under this name.
        float_format: printf format of the float columns, or a function formatting a column
            (default :func:`format_floats`: exact, at least three decimals).

    Returns:
        The path written.
    """
    path = Path(path)
    columns: list[list[str]] = []
    quoted = False
    for name in table.columns:
        series = table[name]
        if pd.api.types.is_float_dtype(series):
            values = series.to_numpy(dtype=np.float64)
            nan = np.isnan(values)
            if isinstance(float_format, str):
                text = [float_format % v for v in values.tolist()]
            else:
                text = float_format(values.tolist())
            if nan.any():
                text = ["" if n else t for n, t in zip(nan.tolist(), text, strict=True)]
        else:
            text = ["" if v is None or v is pd.NA else str(v) for v in series.tolist()]
            if any(("," in t) or ('"' in t) or ("\n" in t) for t in text):
                quoted = True
                break
        columns.append(text)
    with atomic_path(path) as part:
        if quoted:
            table.to_csv(
                part,
                index=False,
                float_format=float_format if isinstance(float_format, str) else None,
            )
        else:
            with part.open("w", newline="") as f:
                f.write(",".join(map(str, table.columns)) + "\n")
                f.writelines(",".join(row) + "\n" for row in zip(*columns, strict=True))
    return path


def write_table(table: pd.DataFrame, path: str | Path, kind: TableKind) -> Path:
    """Write a LUNA16 table with a header: required columns first, floats exact (>= 3 decimals).

    Args:
        table: the table; it is checked with :func:`validate_table` first.
        path: CSV file to write (parent folders are created).
        kind: ``annotations``, ``excluded``, ``candidates`` or ``submission``.

    Returns:
        The path written.
    """
    clean = validate_table(table, kind, str(path))
    spec = _SPECS[kind]
    columns = [*spec.required, *(c for c in clean.columns if c not in spec.required)]
    return write_csv(clean[columns], path)


def write_annotations(table: pd.DataFrame, path: str | Path) -> Path:
    """Write an annotations table."""
    return write_table(table, path, "annotations")


def write_excluded(table: pd.DataFrame, path: str | Path) -> Path:
    """Write an excluded-findings table."""
    return write_table(table, path, "excluded")


def write_candidates(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a candidates table (extra columns such as ``probability`` kept)."""
    return write_table(table, path, "candidates")


def write_submission(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a submission table (extra columns kept after the five LUNA16 ones)."""
    return write_table(table, path, "submission")


def read_seriesuids(path: str | Path) -> list[str]:
    """Read a headerless list of SeriesInstanceUIDs (``seriesuids.csv``, ``subsetK.csv``).

    Only the first comma-separated field of a line counts (as in the LUNA16 script); blank
    lines are skipped, and a first line ``seriesuid`` is taken for a header and skipped.

    Raises:
        Luna16FormatError: a seriesuid listed twice.
    """
    path = Path(path)
    uids: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        uid = raw.split(",", 1)[0].strip()
        if not uid or (number == 1 and uid == "seriesuid"):
            continue
        if uid in first_line:
            raise Luna16FormatError(
                str(path),
                f"seriesuid {uid!r} listed twice (first on line {first_line[uid]})",
                number,
            )
        first_line[uid] = number
        uids.append(uid)
    return uids


def write_seriesuids(path: str | Path, seriesuids: Iterable[str]) -> Path:
    """Write a headerless list of seriesuids, one a line (atomically: temporary file, rename)."""
    return write_text_atomic(Path(path), "".join(f"{uid}\n" for uid in seriesuids))


_SUBSET = re.compile(r"^subset(\d+)\.csv$")


def read_folds(folder: str | Path) -> dict[int, list[str]]:
    """Read the LUNA16 subsets ``folder/subsetK.csv`` (headerless lists) into ``{K: seriesuids}``.

    Raises:
        Luna16FormatError: no subset file, or a scan in two subsets.
    """
    folder = Path(folder)
    files = sorted(
        ((int(m.group(1)), p) for p in folder.glob("subset*.csv") if (m := _SUBSET.match(p.name))),
        key=lambda kp: kp[0],
    )
    if not files:
        raise Luna16FormatError(str(folder), "no subsetK.csv file")
    folds: dict[int, list[str]] = {}
    seen: dict[str, int] = {}
    for k, path in files:
        uids = read_seriesuids(path)
        for uid in uids:
            if uid in seen:
                raise Luna16FormatError(
                    str(path), f"seriesuid {uid!r} is also in subset{seen[uid]}"
                )
            seen[uid] = k
        folds[k] = uids
    return folds


def write_folds(folder: str | Path, folds: Mapping[int, Sequence[str]]) -> Path:
    """Write ``folder/subsetK.csv`` for every fold K (headerless lists)."""
    folder = Path(folder)
    for k, uids in folds.items():
        write_seriesuids(folder / f"subset{k}.csv", uids)
    return folder


def fold_of(folds: Mapping[int, Sequence[str]]) -> dict[str, int]:
    """Invert folds: ``{seriesuid: K}``."""
    return {uid: k for k, uids in folds.items() for uid in uids}
