"""``make demo``: the main job of the system, ``nodule detect``, on built-in default data.

Stages (each prints a short summary and writes under ``out``):

1. Data: the split's ``demo_synth`` set (30 ``small`` synthetic chest CTs with LIDC-shaped
   nodules, ``nodule split make demo_synth``) and, from the split's test-only real scans,
   ``demo_external`` (held-out LIDC shapes inserted into LIDC-IDRI-0001, its real LUNA16
   findings excluded) and ``real_lidc`` (the two real LIDC scans with the real LUNA16 tables).
2. ``nodule detect`` with the model shipped in the package (no training: see its
   ``MODEL_CARD.md``) over the synthetic set, the inserted set and every real scan of
   ``$NODULE_DATA/real_ct``: per-study JSON, overlays, ``summary.csv``,
   ``detections.csv``, ``index.html``.
3. Evaluation of the detections with the LUNA16 evaluator: the synthetic set's CPM (none
   of its scans trained the model or the candidate ranker) with a bootstrap CI over
   scans, the inserted set's with a CI over nodules (one patient's anatomy), the real LIDC
   scans' false positives per scan and the real nodule's rank (never pooled with the
   synthetic figures), and the CPTAC scan's known lesion. The figures, the studies and
   the overlays go to an offline W&B run (``wandb sync`` it later).

``make train-demo`` (``nodule demo --train true``) runs the training path instead: the
same data, the candidate stage on each set, and a small multistream CNN trained through
``nodule fit --config configs/demo.yaml``, tested, and predicting the external sets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nodule.paths import REPO_ROOT

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


DEMO_OVERLAYS = 5
"""Overlay pictures per study in the demo (the most probable findings at or above the threshold)."""


def detect_stage(out: Path, inputs: dict[str, Path]) -> dict[str, Path]:
    """``nodule detect`` with the shipped model over each input (one batch folder each)."""
    from nodule.detection import DetectSettings, detect
    from nodule.models.bundle import load_model

    model = load_model()
    print(
        f"model {model.version} (config {model.config_hash}), threshold {model.threshold:.3f} "
        f"chosen on validation data; card: {model.path.parent / 'MODEL_CARD.md'}"
    )
    folders = {}
    for name, path in inputs.items():
        folder = out / name
        result = detect([path], folder, settings=DetectSettings(max_overlays=DEMO_OVERLAYS), workers=2, progress=True)
        above = int(result.detections["above_threshold"].astype(bool).sum()) if len(result.detections) else 0
        seconds = result.summary["seconds_total"].astype(float).median()
        print(
            f"{name}: {result.n_ok} of {len(result.summary)} studies ok, {above} findings at or above "
            f"the threshold, {seconds:.1f} s per study (median): {folder / 'index.html'}",
            flush=True,
        )
        folders[name] = folder
    return folders


def _scored(detections: Path, dataset: Path, bootstrap: int, seed: int) -> tuple[FrocResult, FrocResult]:
    """The LUNA16 evaluation of a detect batch's detections on a set's scans (with the
    set's kind of bootstrap), and the same with every detection kept (the candidates' ceiling)."""
    from nodule.data.luna16 import read_annotations, read_excluded, read_seriesuids, read_submission
    from nodule.evaluation.froc import evaluate_froc
    from nodule.evaluation.report import bootstrap_unit_for

    uids = read_seriesuids(dataset / "seriesuids.csv")
    predictions = read_submission(detections)
    predictions = predictions[predictions["seriesuid"].isin(uids)].reset_index(drop=True)
    tables = (
        read_annotations(dataset / "annotations.csv"),
        read_excluded(dataset / "annotations_excluded.csv"),
        uids,
    )
    unit = bootstrap_unit_for(dataset)
    scored = evaluate_froc(predictions, *tables, n_bootstrap=bootstrap, seed=seed, bootstrap_unit=unit)
    every = evaluate_froc(predictions, *tables, max_marks_per_scan=None)
    return scored, every


def _known_lesion_line(real_ct: Path) -> str:
    """Where each training-side real scan's recorded lesion (data_manifests/real_ct_known_findings.csv:
    CPTAC's nodule, A0001's tumour box) ranks among its findings."""
    import json

    import numpy as np
    import pandas as pd

    from nodule.data.splits import load_split
    from nodule.paths import REPO_ROOT

    known = pd.read_csv(REPO_ROOT / "data_manifests" / "real_ct_known_findings.csv", dtype={"seriesuid": str})
    names = {scan.seriesuid: scan.name for scan in load_split().real_scans.values()}
    lines = []
    for lesion in known.to_dict("records"):
        name = names.get(lesion["seriesuid"], "real scan")
        doc_path = real_ct / "studies" / f"{lesion['seriesuid']}.json"
        if not doc_path.exists():
            continue
        doc = json.loads(doc_path.read_text())
        centre = np.array([lesion["coordX"], lesion["coordY"], lesion["coordZ"]], float)
        near = [
            (rank, f)
            for rank, f in enumerate(doc["findings"], start=1)
            if np.linalg.norm(np.array(f["world_xyz_mm"]) - centre) <= float(lesion["diameter_mm"]) / 2
        ]
        if near:
            rank, f = near[0]
            lines.append(
                f"{name} known lesion ({lesion['diameter_mm']:.0f} mm): finding {f['id']}, rank {rank}, "
                f"probability {f['probability']:.3f} ({'at or above' if f['above_threshold'] else 'below'} the threshold)"
            )
        else:
            lines.append(f"{name} known lesion ({lesion['diameter_mm']:.0f} mm): no finding within its radius")
    return "\n".join(lines)


def evaluation_stage(out: Path, folders: dict[str, Path], sets: dict[str, Path], seed: int) -> dict[str, object]:
    """Score the detect batches with the LUNA16 evaluator; print and return the figures."""
    from nodule.evaluation.real_scans import format_real_scan_figures, real_scan_figures
    from nodule.evaluation.report import write_report

    figures: dict[str, object] = {}
    for name, what in (
        ("synthetic", "synthetic set (30 small scans, none seen in training)"),
        ("external", "inserted set (LIDC-IDRI-0001, one real patient's anatomy; CI resamples nodules)"),
    ):
        scored, every = _scored(folders[name] / "detections.csv", sets[name], 1000, seed)
        write_report(scored, out / name)
        print(_froc_line(scored, what, every.n_hits))
        figures[f"{name}/cpm"] = scored.cpm
        if scored.cpm_ci95 is not None:
            figures[f"{name}/cpm_ci_low"], figures[f"{name}/cpm_ci_high"] = scored.cpm_ci95
    _, every = _scored(folders["real_ct"] / "detections.csv", sets["real"], 0, seed)
    real = real_scan_figures(every)
    print(format_real_scan_figures(real, "real LIDC scans (real LUNA16 tables)"))
    figures["real_lidc/fp_per_scan_at"] = real["fp_per_scan_at"]
    figures["real_lidc/nodules"] = real["nodules"]
    lesion = _known_lesion_line(folders["real_ct"])
    if lesion:
        print(lesion)
    print(f"reports: {out}")
    return figures


def wandb_stage(out: Path, folders: dict[str, Path], figures: dict[str, object]) -> Path | None:
    """Log the figures, the studies and the overlays to an offline W&B run; return its folder."""
    import os

    import pandas as pd
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project="nodule-demo", name="demo-detect", dir=str(out), mode="offline", reinit="finish_previous")
    try:
        run.summary.update({k: v for k, v in figures.items() if isinstance(v, float)})
        for name, folder in folders.items():
            summary = pd.read_csv(folder / "summary.csv", keep_default_na=False)
            columns = ["study_id", "status", "warnings", "n_findings", "n_above_threshold", "max_probability", "seconds_total"]
            run.log({f"{name}/studies": wandb.Table(dataframe=summary[columns])})
            overlays = sorted(folder.glob("overlays/*/*.png"))[:12]
            if overlays:
                run.log({f"{name}/overlays": [wandb.Image(str(p), caption=f"{p.parent.name[-12:]} {p.stem}") for p in overlays]})
        path = Path(run.dir).parent
    finally:
        run.finish()
    print(f"W&B run (offline): {path}; upload with: wandb sync {path}")
    return path


def run_demo(out: Path, seed: int = 0, train: bool = False) -> None:
    """Run the demo's stages in order, writing under ``out``.

    Args:
        out: output folder.
        seed: seed of every random step.
        train: the training path (``make train-demo``) instead of detection with the shipped model.
    """
    from nodule.paths import data_dir

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"nodule demo: outputs in {out}")
    _stage(
        "1. Data: synthetic chest CT (demo_synth), nodules inserted into LIDC-IDRI-0001, real LIDC scans",
        lambda: (synth_stage(out / "synth"), external_stage(out)),
    )
    sets = {"synthetic": out / "synth", "external": out / "external", "real": out / "real"}
    if train:
        for name, dataset in sets.items():
            _stage(
                f"2. Candidate stage on the {name} set",
                lambda d=dataset, n=name: candidate_stage(d, out / "candidates", n),  # type: ignore[misc]
            )
        _stage(
            "3. Training (nodule fit, configs/demo.yaml), test and external prediction",
            lambda: training_stage(sets["synthetic"], sets["external"], out / "candidates", out / "training", seed, real=sets["real"]),
        )
    else:
        inputs = {"synthetic": sets["synthetic"], "external": sets["external"], "real_ct": data_dir() / "real_ct"}
        folders: dict[str, Path] = {}
        figures: dict[str, object] = {}
        _stage(
            "2. nodule detect with the shipped default model (synthetic set, inserted set, the four real CTs)",
            lambda: folders.update(detect_stage(out / "detect", inputs)),
        )
        _stage(
            "3. Evaluation (LUNA16 FROC/CPM with bootstrap CIs) and the W&B run",
            lambda: (figures.update(evaluation_stage(out / "evaluation", folders, sets, seed)), wandb_stage(out, folders, figures)),
        )
        print(f"\nreview the findings: {', '.join(str(f / 'index.html') for f in folders.values())}")
    print(f"nodule demo done in {time.perf_counter() - start:.0f} s: outputs in {out}")
