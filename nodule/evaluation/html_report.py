"""The report of a ``nodule crossval`` run: ``report.html`` (self-contained) and ``report.md``.

Everything is read back from the run folder (``summary.json``, the pooled and per-fold
``predictions.csv``, the external ensembles' predictions), so ``nodule report RUN_DIR``
regenerates it at any time. The HTML embeds its pictures as base64 PNG and loads
nothing from elsewhere. Content: the FROC curves on one plot (pooled CV thick, each fold
thin, each external set its own colour; log FP/scan axis 1/8..8), tables of the pooled,
per-fold and external CPMs with their CIs and the sensitivities at the seven FP rates,
breakdowns by nodule size band / type / attachment (when ``nodule.evaluation.breakdown``
and the data set's ``manifest.csv`` are there), the ten most confident false positives
and every nodule missed at 1 FP/scan as 9-view thumbnails, the configuration, software
versions and data provenance. Scans are named by SeriesInstanceUID only; no patient
name or DICOM patient ID is read or written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nodule.data.luna16 import read_submission
from nodule.evaluation.froc import FP_RATES, FrocCurve, FrocResult
from nodule.evaluation.report import FROC_GRID, froc_axes
from nodule.paths import atomic_path, write_text_atomic

N_FALSE_POSITIVES = 10
"""False positives shown: the most confident ones."""
OPERATING_FPS = 1.0
"""FP/scan of the operating point below which a nodule counts as missed."""
_PRIVATE_KEY = re.compile(r"patient.?(name|id)", re.IGNORECASE)
_NUMBER = re.compile(r"^-?[\d.]+( \[[\d.]+, [\d.]+\])?$|^\d+/\d+$|^-$")
"""Table cells shown right-aligned: numbers, numbers with a CI, counts ``hit/n``."""


@dataclass(frozen=True)
class Curve:
    """One FROC curve of the plot."""

    label: str
    curve: FrocCurve
    width: float
    color: str | None = None


def _scrub(value: Any) -> Any:
    """Drop keys that could hold a patient's name or DICOM patient ID."""
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items() if not _PRIVATE_KEY.search(str(k))}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def plot_froc_curves(curves: Sequence[Curve], path: Path | None = None) -> bytes:
    """Several FROC curves on one plot (log FP/scan axis 1/8..8, as
    :func:`~nodule.evaluation.report.plot_froc`); returns the PNG bytes (and writes ``path``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 5.2), dpi=120)
    ax = fig.add_subplot()
    for c in curves:
        ax.plot(
            FROC_GRID,
            np.interp(FROC_GRID, c.curve.fps, c.curve.sensitivity),
            lw=c.width,
            color=c.color,
            alpha=1.0 if c.width >= 2 else 0.55,
            label=c.label,
        )
    froc_axes(ax)
    ax.set_title("FROC: cross-validation (pooled and per fold) and external sets")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        with atomic_path(path) as part:
            part.write_bytes(data)
    return data


def _png(image: np.ndarray) -> bytes:
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, image, cmap="gray", vmin=0, vmax=255, format="png")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _patch_config(config_text: str) -> Any:
    """The view geometry of the run's configuration (``data.init_args.patch``)."""
    import yaml

    from nodule.patches import PatchConfig

    raw = yaml.safe_load(config_text) or {}
    patch = ((raw.get("data") or {}).get("init_args") or {}).get("patch") or {}
    return PatchConfig(**patch)


def finding_thumbnails(rows: pd.DataFrame, root: Path, patch: Any) -> list[bytes]:
    """9-view montages (PNG) of findings at ``coordX, coordY, coordZ`` of their scans, made as
    :meth:`~nodule.training.datamodule.Luna16DataModule.views_at` makes views (each scan read once)."""
    from nodule.io import read_volume
    from nodule.patch_cache import CacheConfig, resampled_views
    from nodule.patches import scale_hu
    from nodule.training.callbacks import views_montage
    from nodule.training.datamodule import find_scans

    scans = find_scans(root)
    config = CacheConfig(patch=patch)
    out: list[bytes | None] = [None] * len(rows)
    positions = np.arange(len(rows))
    for uid, group in rows.assign(_pos=positions).groupby("seriesuid", sort=False):
        centres = group[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
        views = scale_hu(resampled_views(read_volume(scans[str(uid)][0]), centres, config), patch)
        for pos, v in zip(group["_pos"], views, strict=True):
            montage = views_montage(v, patch.out_min, patch.out_max)
            out[int(pos)] = _png(np.kron(montage, np.ones((2, 2), np.uint8)))
    return [b for b in out if b is not None]


# --------------------------------------------------------------------------- content


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cpm_text(fig: Mapping[str, Any]) -> str:
    ci = fig.get("cpm_ci95")
    text = _fmt(fig.get("cpm"))
    if ci and None not in ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def _figure_row(label: str, fig: Mapping[str, Any], extra: Sequence[str] = ()) -> list[str]:
    sens = fig.get("sensitivity") or {}
    return [
        label,
        *extra,
        _cpm_text(fig),
        *(_fmt(sens.get(f"{r:g}")) for r in FP_RATES),
        str(fig.get("n_scans", "-")),
        f"{fig.get('n_hits', '-')}/{fig.get('n_nodules', '-')}",
        str(fig.get("bootstrap_unit", "scan")),
    ]


RATE_HEADERS = [f"sens@{r:g}" for r in FP_RATES]


def _tables(summary: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    cv_head = ["model", "train / val folds", "CPM [95% CI]", *RATE_HEADERS, "scans", "hit/nodules", "bootstrap"]
    cv_rows = [_figure_row("pooled (all folds)", summary["pooled"], ["-"])]
    for r in summary["per_fold"]:
        folds = f"{r['train_folds']} / [{r['val_fold']}] (best val CPM {_fmt(r.get('best_val_cpm'))})"
        cv_rows.append(_figure_row(r["name"], r["test"], [folds]))
    ext_head = ["external set", "model", "CPM [95% CI]", *RATE_HEADERS, "scans", "hit/nodules", "bootstrap"]
    ext_rows = []
    for name, ext in (summary.get("external") or {}).items():
        ext_rows.append(_figure_row(name, ext["ensemble"], ["ensemble of the fold models"]))
        if ext.get("final_model"):
            ext_rows.append(_figure_row(name, ext["final_model"], ["final model (all folds)"]))
    return {"cv": (cv_head, cv_rows), "external": (ext_head, ext_rows)}


def _evaluate(
    predictions: pd.DataFrame, root: Path, uids: Sequence[str], n_bootstrap: int = 0, seed: int = 0
) -> FrocResult:
    from nodule.evaluation.crossval import evaluate_scans
    from nodule.evaluation.report import bootstrap_unit_for

    return evaluate_scans(predictions, root, uids, n_bootstrap, seed, bootstrap_unit_for(root))


def _ci_text(value: float, lo: float, hi: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" + ("" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.3f}, {hi:.3f}]")


def _breakdowns(root: Path, result: FrocResult) -> tuple[str, list[tuple[str, pd.DataFrame]]]:
    """Breakdowns of the pooled evaluation by size band / type / attachment
    (:func:`nodule.evaluation.breakdown.breakdown_tables` with the data set's ``manifest.csv``,
    CIs by the pooled evaluation's bootstrap), or why there are none."""
    from nodule.evaluation.breakdown import BREAKDOWN_RATES, breakdown_tables

    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return f"not available: {root} has no manifest.csv", []
    out = []
    for group_by, table in breakdown_tables(result, pd.read_csv(manifest, dtype={"seriesuid": str})).items():
        shown = pd.DataFrame({group_by: table["group"], "nodules": table["n_nodules"], "hit": table["n_hit"]})
        for rate in BREAKDOWN_RATES:
            key = f"sens@{rate:g}"
            shown[f"{key} [95% CI]"] = [
                _ci_text(v, lo, hi) for v, lo, hi in zip(table[key], table[f"{key}_lo"], table[f"{key}_hi"], strict=True)
            ]
        shown["CPM [95% CI]"] = [
            _ci_text(v, lo, hi) for v, lo, hi in zip(table["cpm"], table["cpm_lo"], table["cpm_hi"], strict=True)
        ]
        out.append((f"by {group_by}", shown))
    return "", out


@dataclass
class ReportData:
    """What the report shows, read from a run folder."""

    run_dir: Path
    summary: dict[str, Any]
    pooled: FrocResult
    folds: list[tuple[str, FrocResult]]
    external: list[tuple[str, FrocResult]]
    false_positives: pd.DataFrame
    missed: pd.DataFrame
    fp_images: list[bytes]
    missed_images: list[bytes]
    breakdown_note: str
    breakdowns: list[tuple[str, pd.DataFrame]]
    froc_png: bytes


def load_report_data(run_dir: Path) -> ReportData:
    """Read a crossval run folder and evaluate what the report plots (no bootstrap: the CIs
    come from ``summary.json``).

    Raises:
        FileNotFoundError: no ``summary.json`` (the run has not finished).
    """
    from nodule.training.callbacks import missed_nodules, top_false_positives
    from nodule.training.datamodule import folder_folds

    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no summary; run nodule crossval first")
    summary = json.loads(path.read_text())
    root = Path(summary["provenance"]["data"])
    assignment = summary["fold_assignment"]
    uids = [u for k in summary["folds"] for u in assignment[str(k)]]
    pooled = _evaluate(
        read_submission(run_dir / "predictions.csv"), root, uids, int(summary["bootstrap"]), int(summary["seed"])
    )
    folds = [
        (r["name"], _evaluate(read_submission(run_dir / r["name"] / "predictions.csv"), root, assignment[str(r["test_fold"])]))
        for r in summary["per_fold"]
    ]
    external = []
    for name, ext in (summary.get("external") or {}).items():
        ext_root = Path(ext["root"])
        table = read_submission(run_dir / "external" / name / "predictions.csv")
        ext_uids = [u for scans in folder_folds(ext_root).values() for u in scans]
        external.append((name, _evaluate(table, ext_root, ext_uids)))
    curves = [Curve(f"pooled CV (CPM {pooled.cpm:.3f})", pooled.curve, 3.0, "black")]
    curves += [Curve(f"{n} ({r.cpm:.3f})", r.curve, 1.0, f"C{i % 10}") for i, (n, r) in enumerate(folds)]
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    curves += [
        Curve(f"external {n} (ensemble, {r.cpm:.3f})", r.curve, 2.2, palette[i % len(palette)])
        for i, (n, r) in enumerate(external)
    ]
    froc_png = plot_froc_curves(curves, run_dir / "froc.png")
    patch = _patch_config(summary["config"]["text"])
    false_positives = top_false_positives(pooled, N_FALSE_POSITIVES).reset_index(drop=True)
    missed = missed_nodules(pooled, OPERATING_FPS).reset_index(drop=True)
    note, breakdowns = _breakdowns(root, pooled)
    return ReportData(
        run_dir=run_dir,
        summary=summary,
        pooled=pooled,
        folds=folds,
        external=external,
        false_positives=false_positives,
        missed=missed,
        fp_images=finding_thumbnails(false_positives, root, patch),
        missed_images=finding_thumbnails(missed, root, patch),
        breakdown_note=note,
        breakdowns=breakdowns,
        froc_png=froc_png,
    )


# --------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin-bottom:6px}
.sub{color:#666;margin-top:0}.headline{font-size:20px;background:#f3f6fa;border-left:5px solid #1f4e8c;padding:10px 14px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.pooled td{font-weight:bold;background:#fafae8}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ccc;border-radius:4px;padding:6px;width:214px;font-size:11px;background:#fafafa}
.card img{width:200px;height:200px;image-rendering:pixelated;display:block;margin:0 auto 4px}
.uid{word-break:break-all;color:#444}pre{background:#f6f6f6;padding:10px;font-size:12px;overflow-x:auto}
.note{color:#666;font-style:italic}
"""


def _html_table(
    head: Sequence[str], rows: Sequence[Sequence[str]], first_bold: bool = False, css: str = ""
) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="pooled"' if first_bold and i == 0 else ""
        cells = "".join(
            f'<td class="n">{html.escape(str(c))}</td>' if _NUMBER.match(str(c)) else f"<td>{html.escape(str(c))}</td>"
            for c in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _frame_table(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = [str(c) for c in frame.reset_index().columns] if frame.index.name else [str(c) for c in frame.columns]
    data = frame.reset_index() if frame.index.name else frame
    rows = [[_fmt(v) if isinstance(v, float) else str(v) for v in r] for r in data.itertuples(index=False)]
    return head, rows


def _cards(rows: pd.DataFrame, images: Sequence[bytes], kind: str) -> str:
    if rows.empty:
        return '<p class="note">none</p>'
    cards = []
    for (_, row), image in zip(rows.iterrows(), images, strict=True):
        prob = row["probability"]
        prob_text = "never detected" if pd.isna(prob) else f"p = {float(prob):.3f}"
        size = f", {float(row['diameter_mm']):.1f} mm" if kind == "missed" else ""
        cards.append(
            '<div class="card">'
            f'<img alt="9 views" src="{_b64(image)}">'
            f"<b>{html.escape(prob_text)}{size}</b><br>"
            f'<span class="uid">{html.escape(str(row["seriesuid"]))}</span><br>'
            f"x, y, z = {float(row['coordX']):.1f}, {float(row['coordY']):.1f}, {float(row['coordZ']):.1f} mm"
            "</div>"
        )
    return f'<div class="grid">{"".join(cards)}</div>'


def _provenance_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    p = summary["provenance"]
    ranker = p.get("ranker") or {}
    rows = [
        ["data folder", p["data"]],
        ["split", f"{p.get('split')} ({p.get('split_path')})"],
        ["split data set", str(p.get("dataset") or "none (each scan its own patient unless the split knows it)")],
        ["ranker trained on sets", ", ".join(ranker.get("trained_on_sets") or []) or "-"],
        ["ranker training scans recorded", str(ranker.get("trained_on_scans") if ranker.get("trained_on_scans") is not None else "none recorded")],
    ]
    rows += [[f"external {n}", r] for n, r in (summary.get("external_sets") or {}).items()]
    return rows


def render_html(data: ReportData) -> str:
    """The self-contained HTML page."""
    s = data.summary
    tables = _tables(s)
    pooled = s["pooled"]
    minutes = s.get("fold_minutes_total", 0.0)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Cross-validation report: {html.escape(data.run_dir.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Cross-validation report: {html.escape(data.run_dir.name)}</h1>",
        f"<p class='sub'>{html.escape(str(data.run_dir))}; generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>",
        f"<p class='headline'>Pooled CPM <b>{html.escape(_cpm_text(pooled))}</b> over {pooled['n_scans']} scans and "
        f"{pooled['n_nodules']} nodules ({len(s['folds'])} folds, LUNA16 evaluation of the pooled predictions, "
        f"cap {pooled.get('max_marks_per_scan')} marks a scan, {pooled.get('n_bootstrap')} bootstrap resamples by "
        f"{html.escape(str(pooled.get('bootstrap_unit')))}). Time spent in the folds (training and prediction): "
        f"{minutes:.1f} min.</p>",
        "<h2>FROC</h2>",
        f'<img alt="FROC curves" style="width:1100px;max-width:100%" src="{_b64(data.froc_png)}">',
        "<h2>Cross-validation: pooled and per fold</h2>",
        "<p>Each fold's model is tested on its own fold (CPM with its CI); the pooled row evaluates every fold's "
        "predictions together, once, as LUNA16 does.</p>",
        _html_table(*tables["cv"], first_bold=True, css="cv"),
        "<h2>External sets</h2>",
        _html_table(*tables["external"]) if tables["external"][1] else "<p class='note'>no external set</p>",
        "<h2>Breakdowns (pooled predictions)</h2>",
    ]
    if data.breakdowns:
        for title, frame in data.breakdowns:
            parts += [f"<h3>{html.escape(title)}</h3>", _html_table(*_frame_table(frame))]
    else:
        parts.append(f"<p class='note'>{html.escape(data.breakdown_note)}</p>")
    parts += [
        f"<h2>The {N_FALSE_POSITIVES} most confident false positives (pooled)</h2>",
        _cards(data.false_positives, data.fp_images, "fp"),
        f"<h2>Missed nodules at {OPERATING_FPS:g} FP/scan ({len(data.missed)} of {data.pooled.n_nodules})</h2>",
        "<p>Scored below the pooled FROC's threshold at that operating point, or never among the candidates "
        "(the views are centred on the reference position).</p>",
        _cards(data.missed, data.missed_images, "missed"),
        "<h2>Configuration</h2>",
        f"<p>{html.escape(s['config']['path'])}; overrides: {html.escape(' '.join(s['config']['overrides']) or 'none')}; "
        f"seed {s['seed']} (fold k trains with seed + k)</p>",
        f"<pre>{html.escape(s['config']['text'])}</pre>",
        "<h2>Software</h2>",
        _html_table(["package", "version"], [[k, v] for k, v in s["versions"].items()]),
        "<h2>Data provenance</h2>",
        _html_table(["what", "value"], _provenance_rows(s)),
        "<h3>generator.json of the data folder</h3>",
        f"<pre>{html.escape(json.dumps(_scrub(s['provenance'].get('generator')), indent=1))}</pre>",
        "<h3>Fold assignment (scans per fold)</h3>",
        _html_table(
            ["fold", "scans"], [[k, str(len(v))] for k, v in s["fold_assignment"].items()]
        ),
        "</body></html>",
    ]
    return "\n".join(parts)


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: ReportData) -> str:
    """The report as Markdown (tables and lists; the FROC plot is ``froc.png`` beside it)."""
    s = data.summary
    tables = _tables(s)
    out = [
        f"# Cross-validation report: {data.run_dir.name}",
        "",
        f"Pooled CPM **{_cpm_text(s['pooled'])}** over {s['pooled']['n_scans']} scans and "
        f"{s['pooled']['n_nodules']} nodules ({len(s['folds'])} folds; bootstrap by {s['pooled'].get('bootstrap_unit')}).",
        "",
        "![FROC](froc.png)",
        "",
        "## Cross-validation",
        "",
        _md_table(*tables["cv"]),
        "",
        "## External sets",
        "",
        _md_table(*tables["external"]) if tables["external"][1] else "none",
        "",
        "## Breakdowns",
        "",
    ]
    if data.breakdowns:
        for title, frame in data.breakdowns:
            out += [f"### {title}", "", _md_table(*_frame_table(frame)), ""]
    else:
        out += [data.breakdown_note, ""]
    for title, rows in (
        (f"## The {N_FALSE_POSITIVES} most confident false positives", data.false_positives),
        (f"## Missed nodules at {OPERATING_FPS:g} FP/scan", data.missed),
    ):
        out += [title, ""]
        out += [
            f"- {r['seriesuid']} at ({r['coordX']:.1f}, {r['coordY']:.1f}, {r['coordZ']:.1f}) mm, "
            + ("never detected" if pd.isna(r["probability"]) else f"p = {r['probability']:.3f}")
            for _, r in rows.iterrows()
        ] or ["none"]
        out.append("")
    out += [
        "## Configuration",
        "",
        f"{s['config']['path']}; overrides: {' '.join(s['config']['overrides']) or 'none'}; seed {s['seed']}",
        "",
        "```yaml",
        s["config"]["text"].rstrip(),
        "```",
        "",
        "## Software",
        "",
        _md_table(["package", "version"], [[k, v] for k, v in s["versions"].items()]),
        "",
        "## Data provenance",
        "",
        _md_table(["what", "value"], _provenance_rows(s)),
        "",
        "```json",
        json.dumps(_scrub(s["provenance"].get("generator")), indent=1),
        "```",
        "",
    ]
    return "\n".join(out)


def write_html_report(run_dir: Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``froc.png`` of a crossval run folder.

    Returns:
        ``{"html": ..., "md": ..., "png": ...}``.
    """
    run_dir = Path(run_dir)
    data = load_report_data(run_dir)
    return {
        "html": write_text_atomic(run_dir / "report.html", render_html(data)),
        "md": write_text_atomic(run_dir / "report.md", render_markdown(data)),
        "png": run_dir / "froc.png",
    }
