"""Files and plot of a LUNA16 FROC evaluation: froc.json, froc.png, nodules.csv, detections.csv,
summary.txt (and breakdown.csv with a manifest); comparison.json of a paired comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nodule.data.luna16 import (
    read_annotations,
    read_excluded,
    read_seriesuids,
    read_submission,
    write_csv,
)
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


def froc_json(result: FrocResult) -> dict[str, Any]:
    """The content of ``froc.json`` (NaN written as null)."""
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
    }


def format_summary(result: FrocResult) -> str:
    """A short text summary of the evaluation."""
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
    result: FrocResult, out: str | Path, breakdown: Breakdown | None = None
) -> dict[str, Path]:
    """Write froc.json, froc.png, nodules.csv, detections.csv and summary.txt into ``out``.

    Args:
        result: the evaluation.
        out: output folder.
        breakdown: a breakdown by nodule group: written to breakdown.csv and its table
            appended to summary.txt.

    Returns:
        ``{name: path}`` of the files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / name
        for name in ("froc.json", "froc.png", "nodules.csv", "detections.csv", "summary.txt")
    }
    paths["froc.json"].write_text(json.dumps(froc_json(result), indent=2) + "\n")
    plot_froc(result, paths["froc.png"])
    write_csv(result.nodules, paths["nodules.csv"], float_format="%.9f")
    write_csv(result.detections, paths["detections.csv"], float_format="%.9f")
    summary = format_summary(result)
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
    """
    result = evaluate_froc(
        read_submission(predictions),
        read_annotations(annotations),
        read_excluded(excluded) if excluded is not None else None,
        read_seriesuids(seriesuids) if seriesuids is not None else None,
        n_bootstrap=bootstrap,
        seed=seed,
        max_marks_per_scan=max_marks_per_scan,
        bootstrap_unit=resolve_bootstrap_unit(bootstrap_unit, annotations),
    )
    breakdown = None
    if manifest is not None:
        breakdown = breakdown_froc(result, nodule_groups(result.nodules, read_manifest(manifest)))
    paths = write_report(result, out, breakdown)
    print(paths["summary.txt"].read_text(), end="")
    return result


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
    comparison = compare_froc(
        read_submission(predictions_a),
        read_submission(predictions_b),
        read_annotations(annotations),
        read_excluded(excluded) if excluded is not None else None,
        read_seriesuids(seriesuids) if seriesuids is not None else None,
        n_bootstrap=bootstrap,
        seed=seed,
        bootstrap_unit=resolve_bootstrap_unit(bootstrap_unit, annotations),
        max_marks_per_scan=max_marks_per_scan,
    )
    labels = (str(predictions_a), str(predictions_b))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "comparison.json").write_text(
            json.dumps(comparison_json(comparison, *labels), indent=2) + "\n"
        )
    print(format_comparison(comparison, *labels), end="")
    return comparison
