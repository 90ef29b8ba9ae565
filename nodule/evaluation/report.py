"""Files and plot of a LUNA16 FROC evaluation: froc.json, froc.png, nodules.csv, detections.csv,
summary.txt (and breakdown.csv with a manifest); comparison.json of a paired comparison.

The input files are checked before they are evaluated (:func:`check_inputs`). Refused
(a ``ValueError`` naming the file): a semicolon- or tab-separated CSV (with that hint),
missing columns, NaN or non-numeric values, an annotation diameter <= 0, a nodule listed
twice in the annotations, a seriesuid listed twice, a submission none of whose
detections is on a scan of the seriesuids list (a mix-up of files). Warned about
(:class:`~nodule.errors.InputWarning`, printed by the command and kept in summary.txt
and in froc.json's ``input_warnings``), because the evaluation stays well defined:

* an empty submission (every sensitivity is 0);
* duplicate rows (same seriesuid, coordinates and probability), evaluated as given;
* probabilities outside [0, 1] (only their order matters to the FROC);
* detections on scans that are not in the seriesuids list: dropped;
* with no seriesuids list, detections on scans without annotations: those scans count
  as scans without nodules, which changes FP/scan (give ``--seriesuids``);
* annotated nodules on scans that are not in the seriesuids list: not evaluated.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nodule.data.luna16 import (
    Luna16FormatError,
    read_annotations,
    read_excluded,
    read_seriesuids,
    read_submission,
    write_csv,
)
from nodule.errors import InputWarning
from nodule.evaluation.breakdown import Breakdown, breakdown_froc, format_breakdown, nodule_groups
from nodule.evaluation.compare import (
    UNIT_TEXT,
    Comparison,
    compare_froc,
    comparison_json,
    format_comparison,
)
from nodule.evaluation.froc import (
    BOOTSTRAP_UNITS,
    FP_RATES,
    OFFICIAL_MAX_MARKS_PER_SCAN,
    BootstrapUnit,
    FrocResult,
    evaluate_froc,
)
from nodule.paths import check_output_dir

BOOTSTRAP_UNIT_CHOICES = ("auto", *BOOTSTRAP_UNITS)
"""Values of ``--bootstrap_unit``: auto picks by the data set folder (:func:`bootstrap_unit_for`)."""


def bootstrap_unit_for(folder: str | Path) -> BootstrapUnit:
    """The bootstrap unit a data set folder calls for.

    ``nodule`` when ``folder/generator.json`` exists and says ``"one_patient": true`` (the
    scans are variants of one patient's CT, not independent), else ``scan``.

    Args:
        folder: data set folder (the annotations' folder).

    Returns:
        ``"nodule"`` or ``"scan"``.
    """
    path = Path(folder) / "generator.json"
    if not path.is_file():
        return "scan"
    generator = json.loads(path.read_text())
    return (
        "nodule" if isinstance(generator, dict) and generator.get("one_patient") is True else "scan"
    )


def resolve_bootstrap_unit(bootstrap_unit: str, annotations: str | Path) -> BootstrapUnit:
    """``auto`` -> :func:`bootstrap_unit_for` the annotations' folder; ``scan``/``nodule`` as given.

    Raises:
        ValueError: another value.
    """
    if bootstrap_unit == "auto":
        return bootstrap_unit_for(Path(annotations).parent)
    if bootstrap_unit not in BOOTSTRAP_UNITS:
        raise ValueError(
            f"bootstrap_unit must be one of {BOOTSTRAP_UNIT_CHOICES}, got {bootstrap_unit!r}"
        )
    return bootstrap_unit


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def froc_json(result: FrocResult, input_warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The content of ``froc.json`` (NaN written as null), with the input warnings of
    :func:`check_inputs`."""
    return {
        "cpm": _number(result.cpm),
        "sensitivity": {_rate_key(r): _number(s) for r, s in result.sensitivities.items()},
        "cpm_ci95": None if result.cpm_ci95 is None else [_number(v) for v in result.cpm_ci95],
        "sensitivity_ci95": None
        if result.sensitivity_ci95 is None
        else {_rate_key(r): [_number(v) for v in ci] for r, ci in result.sensitivity_ci95.items()},
        "n_scans": result.n_scans,
        "n_nodules": result.n_nodules,
        "n_detections": result.n_detections,
        "n_hits": result.n_hits,
        "n_false_positives": result.n_false_positives,
        "n_duplicates": result.n_duplicates,
        "n_excluded_hits": result.n_excluded_hits,
        "n_over_cap": result.n_over_cap,
        "n_not_listed": result.n_not_listed,
        "seriesuids_given": result.seriesuids_given,
        "max_marks_per_scan": result.max_marks_per_scan,
        "n_bootstrap": result.n_bootstrap,
        "seed": result.seed,
        "bootstrap_unit": result.bootstrap_unit,
        "input_warnings": list(input_warnings),
    }


def format_summary(result: FrocResult, input_warnings: Sequence[str] = ()) -> str:
    """A short text summary of the evaluation (and the input warnings, if any)."""
    scans = (
        "from the seriesuids list"
        if result.seriesuids_given
        else "taken from the annotations and the predictions (no seriesuids list given)"
    )
    share = result.n_hits / result.n_nodules if result.n_nodules else math.nan
    fp_rate = result.n_false_positives / result.n_scans if result.n_scans else math.nan
    cap = "no cap" if result.max_marks_per_scan is None else f"{result.max_marks_per_scan} a scan"
    lines = [
        "LUNA16 FROC evaluation",
        f"scans: {result.n_scans} ({scans})",
        f"nodules: {result.n_nodules}, hit {result.n_hits} ({share:.1%})",
        f"detections evaluated: {result.n_detections}: {result.n_hits} nodules hit, "
        f"{result.n_false_positives} false positives ({fp_rate:.2f} per scan), "
        f"{result.n_duplicates} duplicates and {result.n_excluded_hits} on excluded findings ignored",
        f"detections dropped: {result.n_over_cap} over the cap ({cap}), "
        f"{result.n_not_listed} of scans not in the list",
        "sensitivity at FP/scan:",
    ]
    for rate, sens in result.sensitivities.items():
        ci = ""
        if result.sensitivity_ci95 is not None:
            lo, hi = result.sensitivity_ci95[rate]
            ci = f"  (95% CI {lo:.3f}-{hi:.3f})"
        lines.append(f"  {rate:>6g}: {sens:.3f}{ci}")
    if result.cpm_ci95 is None:
        lines.append(f"CPM: {result.cpm:.4f} (no bootstrap)")
    else:
        lo, hi = result.cpm_ci95
        lines.append(
            f"CPM: {result.cpm:.4f} (95% CI {lo:.4f}-{hi:.4f}, {result.n_bootstrap} bootstrap "
            f"resamples of {UNIT_TEXT[result.bootstrap_unit]}, seed {result.seed})"
        )
    if input_warnings:
        lines.append("input warnings:")
        lines.extend(f"  - {w}" for w in input_warnings)
    return "\n".join(lines) + "\n"


FROC_GRID = np.exp2(np.linspace(-3.0, 3.0, 1201))
"""FP/scan points at which FROC curves are drawn (1/8 to 8, log-spaced)."""


def froc_axes(ax: Any) -> None:
    """The FROC plot's axes: log FP/scan 1/8..8 with the seven CPM rates as ticks, sensitivity 0..1."""
    rates = np.asarray(FP_RATES)
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0], FP_RATES[-1])
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_ylim(0, 1)
    ax.set_yticks(np.linspace(0, 1, 11))
    ax.grid(True, which="both", alpha=0.4)
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")


def plot_froc(result: FrocResult, path: str | Path, label: str = "CAD") -> Path:
    """Draw the FROC (log FP/scan axis 1/8..8), its bootstrap band, the seven operating points and the CPM.

    Args:
        result: the evaluation.
        path: PNG to write.
        label: legend label of the curve.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6.4, 4.8), dpi=150)
    ax = fig.add_subplot()
    ax.plot(
        FROC_GRID,
        np.interp(FROC_GRID, result.curve.fps, result.curve.sensitivity),
        color="C0",
        lw=2,
        label=label,
    )
    if result.band is not None:
        ax.fill_between(
            result.band.fps,
            result.band.lower,
            result.band.upper,
            color="C0",
            alpha=0.2,
            label=f"95% CI ({result.n_bootstrap} bootstrap resamples)",
        )
    rates = np.asarray(FP_RATES)
    sens = np.asarray([result.sensitivities[r] for r in FP_RATES])
    ax.plot(rates, sens, "o", color="C3", label="operating points", clip_on=False, zorder=3)
    for i, (r, s) in enumerate(zip(rates, sens, strict=True)):
        align = "left" if i == 0 else "right" if i == len(rates) - 1 else "center"
        ax.annotate(
            f"{s:.3f}", (r, s), textcoords="offset points", xytext=(0, -14), ha=align, fontsize=8
        )
    froc_axes(ax)
    title = f"FROC - CPM {result.cpm:.3f}"
    if result.cpm_ci95 is not None:
        title += f" (95% CI {result.cpm_ci95[0]:.3f}-{result.cpm_ci95[1]:.3f})"
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_report(
    result: FrocResult,
    out: str | Path,
    breakdown: Breakdown | None = None,
    input_warnings: Sequence[str] = (),
) -> dict[str, Path]:
    """Write froc.json, froc.png, nodules.csv, detections.csv and summary.txt into ``out``.

    Args:
        result: the evaluation.
        out: output folder.
        breakdown: a breakdown by nodule group: written to breakdown.csv and its table
            appended to summary.txt.
        input_warnings: warnings about the inputs (:func:`check_inputs`), kept in
            froc.json and summary.txt.

    Returns:
        ``{name: path}`` of the files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / name
        for name in ("froc.json", "froc.png", "nodules.csv", "detections.csv", "summary.txt")
    }
    paths["froc.json"].write_text(json.dumps(froc_json(result, input_warnings), indent=2) + "\n")
    plot_froc(result, paths["froc.png"])
    write_csv(result.nodules, paths["nodules.csv"], float_format="%.9f")
    write_csv(result.detections, paths["detections.csv"], float_format="%.9f")
    summary = format_summary(result, input_warnings)
    if breakdown is not None:
        paths["breakdown.csv"] = write_csv(breakdown.table, out / "breakdown.csv")
        summary += "\n" + format_breakdown(breakdown)
    paths["summary.txt"].write_text(summary)
    return paths


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a nodule manifest (a generated set's manifest.csv or the LIDC manifest), seriesuid as text."""
    return pd.read_csv(path, dtype={"seriesuid": str}, keep_default_na=True, low_memory=False)


def evaluate_files(
    predictions: str | Path,
    annotations: str | Path,
    out: str | Path,
    excluded: str | Path | None = None,
    seriesuids: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    max_marks_per_scan: int | None = OFFICIAL_MAX_MARKS_PER_SCAN,
    bootstrap_unit: str = "auto",
    manifest: str | Path | None = None,
) -> FrocResult:
    """Read LUNA16 files, evaluate (:func:`~nodule.evaluation.froc.evaluate_froc`), write the report, print the summary.

    Args:
        predictions: submission CSV.
        annotations: annotations CSV.
        out: output folder.
        excluded: excluded findings CSV, or None.
        seriesuids: headerless scan list, or None for the scans of annotations and predictions.
        bootstrap: bootstrap resamples (0: no CI).
        seed: seed of the bootstrap.
        max_marks_per_scan: per-scan detection cap (official 100); None: none.
        bootstrap_unit: ``scan``, ``nodule`` or ``auto`` (:func:`bootstrap_unit_for` the
            annotations' folder).
        manifest: nodule manifest for a breakdown by size band, type and attachment
            (breakdown.csv, :mod:`nodule.evaluation.breakdown`), or None.

    Returns:
        The evaluation.

    Raises:
        OutputPathError: ``out`` cannot be written, or is one of the inputs.
        Luna16FormatError, ValueError: an input refused by :func:`check_inputs`.
    """
    inputs = [Path(p) for p in (predictions, annotations, excluded, seriesuids, manifest) if p is not None]
    check_output_dir(Path(out), inputs, overwrite=True)
    if max_marks_per_scan is not None and max_marks_per_scan < 1:
        raise ValueError(f"max_marks_per_scan must be at least 1 (or None), got {max_marks_per_scan}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    unit = resolve_bootstrap_unit(bootstrap_unit, annotations)
    tables = _read_inputs([predictions], annotations, excluded, seriesuids)
    submission = tables.submissions[0]
    result = evaluate_froc(
        submission,
        tables.annotations,
        tables.excluded,
        tables.seriesuids,
        n_bootstrap=bootstrap,
        seed=seed,
        max_marks_per_scan=max_marks_per_scan,
        bootstrap_unit=unit,
    )
    breakdown = None
    if manifest is not None:
        breakdown = breakdown_froc(result, nodule_groups(result.nodules, read_manifest(manifest)))
    paths = write_report(result, out, breakdown, tables.warnings)
    print(paths["summary.txt"].read_text(), end="")
    return result


class _Inputs:
    """Checked tables of an evaluation and the warnings about them."""

    def __init__(
        self,
        submissions: list[pd.DataFrame],
        annotations: pd.DataFrame,
        excluded: pd.DataFrame | None,
        seriesuids: list[str] | None,
        warnings: list[str],
    ) -> None:
        self.submissions = submissions
        self.annotations = annotations
        self.excluded = excluded
        self.seriesuids = seriesuids
        self.warnings = warnings


def _read_inputs(
    predictions: Sequence[str | Path],
    annotations: str | Path,
    excluded: str | Path | None,
    seriesuids: str | Path | None,
) -> _Inputs:
    """Read and check the files of an evaluation; warn (:class:`InputWarning`) as
    :func:`check_inputs` says."""
    subs = [read_submission(p) for p in predictions]
    ann = read_annotations(annotations)
    exc = read_excluded(excluded) if excluded is not None else None
    uids = read_seriesuids(seriesuids) if seriesuids is not None else None
    found: list[str] = []
    for path, sub in zip(predictions, subs, strict=True):
        checked = check_inputs(
            sub,
            ann,
            uids,
            predictions_file=path,
            annotations_file=annotations,
            seriesuids_file=seriesuids,
        )
        for text in checked:
            if text not in found:
                found.append(text)
    for text in found:
        warnings.warn(text, InputWarning, stacklevel=3)
    return _Inputs(subs, ann, exc, uids, found)


def check_inputs(
    submission: pd.DataFrame,
    annotations: pd.DataFrame,
    seriesuids: Sequence[str] | None,
    *,
    predictions_file: str | Path = "predictions",
    annotations_file: str | Path = "annotations",
    seriesuids_file: str | Path | None = None,
) -> list[str]:
    """Check the tables of an evaluation beyond their format (see the module docstring).

    Args:
        submission: the checked submission (:func:`~nodule.data.luna16.read_submission`).
        annotations: the checked annotations.
        seriesuids: the scans evaluated, or None (the scans of the tables).
        predictions_file: the submission's file, named in messages.
        annotations_file: the annotations' file, named in messages.
        seriesuids_file: the scan list's file, named in messages.

    Returns:
        The warnings (one sentence each, naming the file).

    Raises:
        Luna16FormatError: an annotation diameter <= 0, or a nodule listed twice.
        ValueError: no detection of a non-empty submission is on a listed scan.
    """
    found: list[str] = []
    pred, ann = str(predictions_file), str(annotations_file)
    coords = ["coordX", "coordY", "coordZ"]
    diameters = annotations["diameter_mm"].to_numpy(dtype=np.float64)
    if (diameters <= 0).any():
        pos = int(np.argmax(diameters <= 0))
        raise Luna16FormatError(
            ann,
            f"diameter_mm must be > 0 for a nodule, got {diameters[pos]:g} "
            f"({int((diameters <= 0).sum())} such row(s))",
            pos + 2,
            "diameter_mm",
        )
    twice = annotations.duplicated(["seriesuid", *coords], keep="first").to_numpy()
    if twice.any():
        pos = int(np.argmax(twice))
        raise Luna16FormatError(
            ann,
            f"nodule listed twice (same seriesuid and coordinates; {int(twice.sum())} such "
            "row(s)): it would count as two nodules",
            pos + 2,
        )
    if len(submission) == 0:
        found.append(f"{pred}: the submission holds no detection: every sensitivity is 0")
        return found
    same = submission.duplicated(["seriesuid", *coords, "probability"], keep="first").to_numpy()
    if same.any():
        found.append(
            f"{pred}: {int(same.sum())} duplicate row(s) (same seriesuid, coordinates and "
            f"probability; the first on line {int(np.argmax(same)) + 2}); evaluated as given: "
            "on a nodule a repeat counts as a duplicate, elsewhere as another false positive"
        )
    prob = submission["probability"].to_numpy(dtype=np.float64)
    outside = (prob < 0) | (prob > 1)
    if outside.any():
        found.append(
            f"{pred}: {int(outside.sum())} probabilit{'y' if outside.sum() == 1 else 'ies'} "
            f"outside [0, 1] (from {prob.min():g} to {prob.max():g}); evaluated as given "
            "(the FROC depends only on their order), but a LUNA16 submission holds probabilities"
        )
    det_uids = pd.Index(submission["seriesuid"].unique())
    if seriesuids is not None:
        listed = pd.Index(list(seriesuids))
        where = str(seriesuids_file or "the seriesuids list")
        off = det_uids[~det_uids.isin(listed)]
        if len(off) == len(det_uids):
            raise ValueError(
                f"{pred}: none of its detections is on a scan of {where} (e.g. seriesuid "
                f"{off[0]}); wrong submission or wrong list?"
            )
        if len(off):
            rows = int(submission["seriesuid"].isin(off).sum())
            found.append(
                f"{pred}: {rows} detection(s) on {len(off)} scan(s) not in {where} are dropped "
                f"(e.g. seriesuid {off[0]})"
            )
        ann_off = annotations.loc[~annotations["seriesuid"].isin(listed), "seriesuid"]
        if len(ann_off):
            found.append(
                f"{ann}: {len(ann_off)} nodule(s) on {ann_off.nunique()} scan(s) not in {where} "
                f"are not evaluated (e.g. seriesuid {ann_off.iloc[0]})"
            )
    else:
        extra = det_uids[~det_uids.isin(pd.Index(annotations["seriesuid"].unique()))]
        if len(extra):
            n_scans = len(set(annotations["seriesuid"]) | set(det_uids))
            beside = Path(str(annotations_file)).parent / "seriesuids.csv"
            hint = f" (e.g. --seriesuids {beside})" if beside.is_file() else ""
            found.append(
                f"{pred}: {len(extra)} scan(s) with detections have no annotation (e.g. seriesuid "
                f"{extra[0]}) and no seriesuids list was given: they count as scans without "
                f"nodules ({n_scans} scans in all, which sets FP/scan); give the list of the "
                f"scans evaluated with --seriesuids{hint}"
            )
    return found


def compare_files(
    predictions_a: str | Path,
    predictions_b: str | Path,
    annotations: str | Path,
    out: str | Path | None = None,
    excluded: str | Path | None = None,
    seriesuids: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    bootstrap_unit: str = "auto",
    max_marks_per_scan: int | None = OFFICIAL_MAX_MARKS_PER_SCAN,
) -> Comparison:
    """Read two submissions and the reference, compare them (:func:`~nodule.evaluation.compare.compare_froc`),
    write ``out/comparison.json`` and print the summary paragraph.

    Args:
        predictions_a: submission A (the difference is B - A).
        predictions_b: submission B.
        annotations: annotations CSV.
        out: output folder for comparison.json, or None to only print.
        excluded: excluded findings CSV, or None.
        seriesuids: headerless scan list, or None for the scans of the tables.
        bootstrap: paired bootstrap resamples (0: none).
        seed: seed of the bootstrap.
        bootstrap_unit: ``scan``, ``nodule`` or ``auto`` (:func:`bootstrap_unit_for`).
        max_marks_per_scan: per-scan detection cap (official 100); None: none.

    Returns:
        The comparison.
    """
    inputs = [Path(p) for p in (predictions_a, predictions_b, annotations, excluded, seriesuids) if p is not None]
    if out is not None:
        check_output_dir(Path(out), inputs, overwrite=True)
    unit = resolve_bootstrap_unit(bootstrap_unit, annotations)
    tables = _read_inputs([predictions_a, predictions_b], annotations, excluded, seriesuids)
    comparison = compare_froc(
        tables.submissions[0],
        tables.submissions[1],
        tables.annotations,
        tables.excluded,
        tables.seriesuids,
        n_bootstrap=bootstrap,
        seed=seed,
        bootstrap_unit=unit,
        max_marks_per_scan=max_marks_per_scan,
    )
    labels = (str(predictions_a), str(predictions_b))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        record = {**comparison_json(comparison, *labels), "input_warnings": tables.warnings}
        (Path(out) / "comparison.json").write_text(json.dumps(record, indent=2) + "\n")
    print(format_comparison(comparison, *labels), end="")
    return comparison
