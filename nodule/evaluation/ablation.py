"""``nodule ablation``: supervised against semi-supervised methods at several labelled fractions.

The methods: pseudo-labels, mean teacher, FocalMix, GAN nodules, and combinations.

Every arm (method x labelled fraction) is one :func:`~nodule.evaluation.crossval.run_crossval`
of the same LightningCLI recipe, folds, seeds and external sets, with the arm's settings as
LightningCLI overrides (``data.init_args.label_fraction``; for pseudo-labels the
:class:`~nodule.training.pseudo_labels.PseudoLabelling` callback and the unlabelled
training sets; for the mean teacher (and FocalMix, the same callback with mixing) the
:class:`~nodule.training.mean_teacher.MeanTeacher` callback, the unlabelled training sets,
their share of the draws and the teacher's second augmentation; for the GAN
``data.init_args.gan_generator``). Each arm lives in its own
run folder under ``out`` and resumes as crossval does, so the ablation resumes arm by arm
and fold by fold.

The summary (``ablation.json``, ``report.md``, ``cpm_vs_fraction.png``) gives per arm the
pooled cross-validation CPM and the external CPMs (fold ensemble) with 95 % bootstrap
CIs, and each method's gain over supervised training at the same fraction with its paired
bootstrap CI (:func:`~nodule.evaluation.compare.compare_froc` on the same scans); the
inserted-into-real external sets are also pooled into one. The conclusion is written from
those intervals; a set too small for its interval to mean anything (fewer than
``MIN_SCANS`` scans or ``MIN_NODULES`` nodules, e.g. the two real LIDC scans) gets
"cannot tell" whatever its interval.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nodule.data.layout import read_generator
from nodule.data.luna16 import read_annotations, read_excluded, read_submission
from nodule.paths import write_text_atomic

BASELINE = "supervised"
PARTS = ("pseudo_label", "mean_teacher", "focalmix", "mixup", "gan")
# The parts that are a MeanTeacher callback (each with its own settings in the design):
# mean teacher, FocalMix, and mixup alone (FocalMix's mixing of labelled candidates without
# unlabelled draws, the control that tells FocalMix's use of unlabelled data from mixup's
# regularisation).
TEACHER_PARTS = {"mean_teacher": {}, "focalmix": {"mixup_alpha": 0.75}, "mixup": {"mixup_alpha": 0.75, "unlabelled_fraction": 0.0}}
MIN_SCANS = 5
MIN_NODULES = 15


@dataclass(frozen=True)
class AblationConfig:
    """An ablation design (``configs/ablation.yaml``); see the module docstring."""

    lightning_config: Path
    data: Path
    out: Path
    folds: str = "0-4"
    external: tuple[Path, ...] = ()
    fractions: tuple[float, ...] = (0.1, 0.25, 1.0)
    methods: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pseudo_label: dict[str, Any] = field(default_factory=dict)
    mean_teacher: dict[str, Any] = field(default_factory=dict)
    focalmix: dict[str, Any] = field(default_factory=dict)
    mixup: dict[str, Any] = field(default_factory=dict)
    unlabelled_train: tuple[str, ...] = ()
    gan: dict[str, Any] = field(default_factory=dict)
    label_seed: int = 0
    seed: int = 0
    bootstrap: int = 1000
    overrides: tuple[str, ...] = ()


def load_ablation_config(path: Path) -> AblationConfig:
    """Read an ablation YAML (``~`` and ``$VARS`` expanded in its paths).

    Raises:
        ValueError: unknown keys, no supervised method, or a method naming an unknown part.
    """
    import yaml

    from nodule.training.cli import expand_path

    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = set(AblationConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (known: {sorted(known)})")
    methods = {str(k): tuple(v or ()) for k, v in (raw.get("methods") or {BASELINE: []}).items()}
    if BASELINE not in methods:
        raise ValueError(f"{path}: methods must include {BASELINE!r}, the baseline of every gain")
    for name, parts in methods.items():
        bad = sorted(set(parts) - set(PARTS))
        if bad:
            raise ValueError(f"{path}: method {name} uses unknown parts {bad} ({', '.join(PARTS)})")
    gan = dict(raw.get("gan") or {})
    if "generator" in gan:
        gan["generator"] = expand_path(str(gan["generator"]))
    return AblationConfig(
        lightning_config=Path(expand_path(str(raw["lightning_config"]))),
        data=Path(expand_path(str(raw["data"]))),
        out=Path(expand_path(str(raw["out"]))),
        folds=str(raw.get("folds", "0-4")),
        external=tuple(Path(expand_path(str(p))) for p in raw.get("external") or ()),
        fractions=tuple(float(f) for f in raw.get("fractions") or (0.1, 0.25, 1.0)),
        methods=methods,
        pseudo_label=dict(raw.get("pseudo_label") or {}),
        mean_teacher=dict(raw.get("mean_teacher") or {}),
        focalmix=dict(raw.get("focalmix") or {}),
        mixup=dict(raw.get("mixup") or {}),
        unlabelled_train=tuple(raw.get("unlabelled_train") or ()),
        gan=gan,
        label_seed=int(raw.get("label_seed", 0)),
        seed=int(raw.get("seed", 0)),
        bootstrap=int(raw.get("bootstrap", 1000)),
        overrides=tuple(raw.get("overrides") or ()),
    )


def arm_name(method: str, fraction: float) -> str:
    """The run folder of an arm, e.g. ``pseudo_label-f010``."""
    return f"{method}-f{round(fraction * 100):03d}"


def arm_overrides(config: AblationConfig, method: str, fraction: float) -> list[str]:
    """The LightningCLI overrides of one arm."""
    parts = config.methods[method]
    args = [
        *config.overrides,
        f"--data.init_args.label_fraction={fraction}",
        f"--data.init_args.label_seed={config.label_seed}",
    ]
    if "pseudo_label" in parts:
        callback = {"class_path": "nodule.training.pseudo_labels.PseudoLabelling", "init_args": config.pseudo_label}
        args.append(f"--trainer.callbacks+={json.dumps(callback)}")
    consistency = [p for p in TEACHER_PARTS if p in parts]
    if len(consistency) > 1:
        raise ValueError(f"method {method} combines {consistency}: one MeanTeacher callback at most")
    if consistency:
        part = consistency[0]
        settings = {**TEACHER_PARTS[part], **getattr(config, part)}
        unlabelled_fraction = float(settings.pop("unlabelled_fraction", 0.5))
        callback = {"class_path": "nodule.training.mean_teacher.MeanTeacher", "init_args": settings}
        args.append(f"--trainer.callbacks+={json.dumps(callback)}")
        args.append(f"--data.init_args.unlabelled_fraction={unlabelled_fraction}")
        args.append("--data.init_args.teacher_views=true")
    if ({"pseudo_label"} | set(TEACHER_PARTS)) & set(parts):
        args.append(f"--data.init_args.unlabelled_train={json.dumps(list(config.unlabelled_train))}")
    if "gan" in parts:
        if not config.gan.get("generator"):
            raise ValueError(f"method {method} uses the GAN but the ablation names no gan.generator")
        args.append(f"--data.init_args.gan_generator={config.gan['generator']}")
        for key in ("fraction", "bank_size"):
            if key in config.gan:
                args.append(f"--data.init_args.gan_{key}={config.gan[key]}")
    return args


def _tables(roots: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    annotations = pd.concat([read_annotations(r / "annotations.csv") for r in roots], ignore_index=True)
    excluded = [read_excluded(r / "annotations_excluded.csv") for r in roots if (r / "annotations_excluded.csv").is_file()]
    return annotations, (pd.concat(excluded, ignore_index=True) if excluded else None)


def _ci(pair: Any) -> list[float] | None:
    return None if pair is None else [float(pair[0]), float(pair[1])]


def _comparison(
    base: list[Path], other: list[Path], roots: list[Path], uids: list[str], config: AblationConfig, unit: str
) -> dict[str, Any]:
    from nodule.evaluation.compare import compare_froc

    a = pd.concat([read_submission(p) for p in base], ignore_index=True)
    b = pd.concat([read_submission(p) for p in other], ignore_index=True)
    annotations, excluded = _tables(roots)
    c = compare_froc(a, b, annotations, excluded, uids, n_bootstrap=config.bootstrap, seed=config.seed, bootstrap_unit=unit)  # type: ignore[arg-type]
    return {
        "cpm": c.cpm_b,
        "cpm_ci95": _ci(c.cpm_b_ci95),
        "baseline_cpm": c.cpm_a,
        "gain": c.difference,
        "gain_ci95": _ci(c.difference_ci95),
        "n_scans": c.n_scans,
        "n_nodules": c.n_nodules,
    }


def inserted_sets(roots: tuple[Path, ...] | list[Path]) -> list[Path]:
    """The data sets made by ``nodule insert`` (their ``generator.json`` says so): nodules
    inserted into real scans, pooled in the summary; real scans with their own findings
    (e.g. ``real_lidc``) are not among them."""
    return [root for root in roots if (read_generator(root) or {}).get("generator") == "nodule insert"]


def _verdict(gain: dict[str, Any]) -> str:
    n_scans, n_nodules = gain.get("n_scans"), gain.get("n_nodules")
    if (n_scans is not None and n_scans < MIN_SCANS) or (n_nodules is not None and n_nodules < MIN_NODULES):
        return f"cannot tell (too small: {n_scans} scans, {n_nodules} nodules)"
    ci = gain.get("gain_ci95")
    if ci is None or any(v is None or math.isnan(v) for v in ci):
        return "cannot tell (no interval)"
    if ci[0] > 0:
        return "helps"
    if ci[1] < 0:
        return "hurts"
    return "cannot tell (CI spans 0)"


def summarise(config: AblationConfig) -> dict[str, Any]:
    """Figures of every finished arm, the gains over supervised and the goals (module docstring)."""
    from nodule.evaluation.crossval import SUMMARY, folder_folds
    from nodule.evaluation.report import bootstrap_unit_for

    out: dict[str, Any] = {"arms": {}, "gains": {}, "goals": {}}
    inserted = inserted_sets(config.external)
    sets: dict[str, list[Path]] = {"crossval": [config.data]}
    for p in config.external:
        sets[p.name] = [p]
    if len(inserted) > 1:
        sets["inserted_pooled"] = inserted

    def predictions(arm: Path, name: str) -> list[Path]:
        if name == "crossval":
            return [arm / "predictions.csv"]
        roots = sets[name]
        return [arm / "external" / r.name / "predictions.csv" for r in roots]

    def uids_of(name: str) -> list[str]:
        if name == "crossval":
            summary = json.loads((config.out / arm_name(BASELINE, config.fractions[0]) / SUMMARY).read_text())
            return [u for uids in summary["fold_assignment"].values() for u in uids]
        return [u for r in sets[name] for uids in folder_folds(r).values() for u in uids]

    for fraction in config.fractions:
        base = config.out / arm_name(BASELINE, fraction)
        for method in config.methods:
            arm = config.out / arm_name(method, fraction)
            if not (arm / SUMMARY).is_file() or not (base / SUMMARY).is_file():
                continue
            summary = json.loads((arm / SUMMARY).read_text())
            record: dict[str, Any] = {"method": method, "fraction": fraction, "wall_time_s": summary["wall_time_s"]}
            for name, roots in sets.items():
                unit = bootstrap_unit_for(roots[0]) if len(roots) == 1 else "scan"
                record[name] = _comparison(predictions(base, name), predictions(arm, name), roots, uids_of(name), config, unit)
            out["arms"][arm_name(method, fraction)] = record
    # goal (a): at the smallest fraction, the share of the supervised gap that each method recovers
    lo, hi = min(config.fractions), max(config.fractions)
    for method in config.methods:
        if method == BASELINE:
            continue
        low = out["arms"].get(arm_name(method, lo))
        sup_lo, sup_hi = out["arms"].get(arm_name(BASELINE, lo)), out["arms"].get(arm_name(BASELINE, hi))
        top = out["arms"].get(arm_name(method, hi))
        for name in sets:
            if low and sup_lo and sup_hi:
                gap = sup_hi[name]["cpm"] - sup_lo[name]["cpm"]
                share = (low[name]["cpm"] - sup_lo[name]["cpm"]) / gap if gap > 0 else math.nan
                out["goals"].setdefault("a_recovered_share", {}).setdefault(method, {})[name] = share
            if top:
                out["goals"].setdefault("b_gain_at_full_labels", {}).setdefault(method, {})[name] = {
                    "gain": top[name]["gain"],
                    "gain_ci95": top[name]["gain_ci95"],
                    "verdict": _verdict(top[name]),
                }
    return out


def plot_ablation(result: dict[str, Any], path: Path) -> Path:
    """CPM (95 % CI) against labelled fraction, one line per method, one panel per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(result["arms"].values())
    names = [n for n in ("crossval", "inserted_pooled", "real_lidc") if arms and n in arms[0]]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        for method in dict.fromkeys(a["method"] for a in arms):
            mine = sorted((a for a in arms if a["method"] == method), key=lambda a: a["fraction"])
            x = [100 * a["fraction"] for a in mine]
            y = [a[name]["cpm"] for a in mine]
            ci = [a[name]["cpm_ci95"] or [v, v] for a, v in zip(mine, y, strict=True)]
            err = [[v - c[0] for v, c in zip(y, ci, strict=True)], [c[1] - v for v, c in zip(y, ci, strict=True)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("labelled scans (%)")
        ax.set_ylabel("CPM")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.3f}" if isinstance(v, float) and v < 0 else f"{v:.3f}"


def report_markdown(result: dict[str, Any]) -> str:
    """The ablation's table, gains and conclusion as Markdown."""
    lines = ["# Semi-supervision ablation", ""]
    arms = list(result["arms"].values())
    if not arms:
        return "\n".join([*lines, "No arm has finished yet."]) + "\n"
    names = [k for k in arms[0] if isinstance(arms[0][k], dict)]
    lines.append("| method | labelled | " + " | ".join(f"{n} CPM [95% CI] | gain vs supervised [paired 95% CI]" for n in names) + " |")
    lines.append("|---|---|" + "---|---|" * len(names))
    for a in arms:
        cells = []
        for n in names:
            r = a[n]
            ci = r["cpm_ci95"] or [math.nan, math.nan]
            g = r["gain_ci95"] or [math.nan, math.nan]
            cells.append(f"{r['cpm']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
            cells.append("-" if a["method"] == BASELINE else f"{r['gain']:+.3f} [{g[0]:+.3f}, {g[1]:+.3f}] {_verdict(r)}")
        lines.append(f"| {a['method']} | {100 * a['fraction']:.0f} % | " + " | ".join(cells) + " |")
    lines += ["", "## Conclusion (written from the intervals above)", ""]
    for a in arms:
        if a["method"] == BASELINE:
            continue
        verdicts = ", ".join(f"{n}: {_verdict(a[n])} ({a[n]['gain']:+.3f})" for n in names)
        lines.append(f"- {a['method']} at {100 * a['fraction']:.0f} % labels: {verdicts}.")
    share = result["goals"].get("a_recovered_share", {})
    for method, by_set in share.items():
        text = ", ".join(f"{n} {_fmt(v)}" for n, v in by_set.items())
        lines.append(f"- Goal (a), share of the supervised gap recovered at the smallest fraction by {method}: {text} (goal: >= 0.5).")
    for method, by_set in result["goals"].get("b_gain_at_full_labels", {}).items():
        text = ", ".join(f"{n} {v['verdict']} ({_fmt(v['gain'])})" for n, v in by_set.items())
        lines.append(f"- Goal (b), {method} with all labels plus unlabelled scans vs supervised: {text} (goal: CI above 0 on the external sets).")
    return "\n".join(lines) + "\n"


def run_ablation(config: AblationConfig, methods: list[str] | None = None, fractions: list[float] | None = None) -> dict[str, Any]:
    """Run (or resume) every arm, then write ablation.json, report.md and the plot."""
    from nodule.evaluation.crossval import run_crossval

    start = time.perf_counter()
    for fraction in fractions or config.fractions:
        for method in methods or list(config.methods):
            print(f"ablation arm {arm_name(method, fraction)}", flush=True)
            run_crossval(
                config=config.lightning_config,
                data=config.data,
                folds=config.folds,
                out=config.out / arm_name(method, fraction),
                external=list(config.external),
                bootstrap=config.bootstrap,
                seed=config.seed,
                overrides=arm_overrides(config, method, fraction),
                report=False,
            )
    result = summarise(config)
    result["wall_time_s_this_call"] = time.perf_counter() - start
    result["wall_time_s_arms"] = sum(a["wall_time_s"] for a in result["arms"].values())
    config.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(config.out / "ablation.json", json.dumps(result, indent=1, default=str) + "\n")
    write_text_atomic(config.out / "report.md", report_markdown(result))
    plot_ablation(result, config.out / "cpm_vs_fraction.png")
    _log_wandb(config, result)
    print(f"ablation: {config.out / 'report.md'}")
    return result


def _log_wandb(config: AblationConfig, result: dict[str, Any]) -> None:
    """One W&B run (offline unless WANDB_MODE says otherwise) with the table and the plot."""
    import os

    import wandb

    run = wandb.init(
        project="nodule-ablation",
        name=config.out.name,
        dir=str(config.out),
        mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
        config={"fractions": list(config.fractions), "methods": {k: list(v) for k, v in config.methods.items()}},
    )
    rows: list[Any] = [[a["method"], a["fraction"], a["crossval"]["cpm"], a["crossval"]["gain"]] for a in result["arms"].values()]
    run.log(
        {
            "ablation/table": wandb.Table(columns=["method", "fraction", "cv_cpm", "cv_gain"], data=rows),
            "ablation/plot": wandb.Image(str(config.out / "cpm_vs_fraction.png")),
        }
    )
    run.finish()
