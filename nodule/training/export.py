"""Export a training run to a model file (:mod:`nodule.models.bundle`) with its model card.

:func:`export_model` takes a run folder (``config.yaml`` of the run and ``checkpoints/``,
as ``nodule fit`` and ``scripts/train_synth.py`` write them), and:

1. takes the best checkpoint by validation CPM (what ``ModelCheckpoint`` recorded,
   :func:`~nodule.training.checkpoints.read_best`);
2. predicts the *validation* subsets of the training data set (the split description's
   ``val`` role, e.g. subset 7 of ``train_seed2000``; never a test subset) through the
   project's LightningCLI (``nodule predict`` in-process), and chooses the operating
   threshold there (:func:`choose_threshold`): the lowest probability at which the
   validation scans carry at most ``max_fp_per_scan`` false positives per scan (LUNA16
   matching, every candidate counted, no cap of marks per scan);
3. writes the model file (:func:`~nodule.models.bundle.save_model`) with the training
   data's provenance (data set, generator version and seed, split name and version), the
   threshold and its validation operating point, and the figures measured elsewhere: the
   test and external CPMs of ``scripts/train_synth.py`` (its ``results.json``) and the
   cross-validation of the same recipe (``nodule crossval``'s ``summary.json``);
4. writes ``MODEL_CARD.md`` beside the model file (:func:`model_card`).

The validation predictions are kept in ``run_dir/export/`` and reused while the checkpoint
and the data are the same.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nodule.fingerprint import file_fingerprint, fingerprint
from nodule.models.bundle import (
    MULTISTREAM,
    RESEARCH_USE_ONLY,
    ModelBundle,
    load_model,
    patch_dict,
    save_model,
)
from nodule.paths import write_text_atomic

RULE = (
    "the lowest probability at which the validation scans carry at most {fps:g} false "
    "positive(s) per scan (LUNA16 matching, every candidate counted)"
)


@dataclass(frozen=True)
class OperatingPoint:
    """An operating threshold and what it gives on the data it was chosen on.

    Attributes:
        threshold: a finding is a candidate with probability >= threshold.
        max_fp_per_scan: the target the threshold was chosen for.
        fp_per_scan: false positives per scan at the threshold.
        sensitivity: fraction of the nodules found at the threshold.
        n_found: nodules found at the threshold.
        n_nodules: nodules of the scans (the sensitivity's denominator).
        n_false_positives: false positives at the threshold.
        n_scans: scans (the FP/scan divisor).
    """

    threshold: float
    max_fp_per_scan: float
    fp_per_scan: float
    sensitivity: float
    n_found: int
    n_nodules: int
    n_false_positives: int
    n_scans: int


def choose_threshold(
    scores: Sequence[float] | np.ndarray,
    positive: Sequence[bool] | np.ndarray,
    n_nodules: int,
    n_scans: int,
    max_fp_per_scan: float = 1.0,
) -> OperatingPoint:
    """The lowest threshold with at most ``max_fp_per_scan`` false positives per scan.

    A candidate is a finding when its probability is ``>=`` the threshold. The threshold is
    one of the scores (every score tied with it counts), the lowest whose false positives
    per scan (false positives scoring at least it, divided by ``n_scans``) stay within the
    target. When even the highest score brings too many false positives, the threshold lies
    just above it (nothing found); when every false positive fits, it is the lowest score.

    Args:
        scores: scored items: each hit nodule's best probability and each false positive's
            (as :class:`~nodule.evaluation.froc.ScoredItems`).
        positive: True for a hit nodule, False for a false positive.
        n_nodules: every nodule of the scans, hit or missed.
        n_scans: the scans.
        max_fp_per_scan: the target.

    Returns:
        The operating point.

    Raises:
        ValueError: no scans, no scored items, a negative target or mismatched inputs.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if s.shape != pos.shape or s.ndim != 1:
        raise ValueError("scores and positive must be 1-D of the same length")
    if n_scans < 1:
        raise ValueError("no scans to choose a threshold on")
    if not s.size:
        raise ValueError("no scored candidates to choose a threshold on")
    if not max_fp_per_scan >= 0:
        raise ValueError(f"max_fp_per_scan must be >= 0, got {max_fp_per_scan}")
    levels = np.unique(s)[::-1]  # distinct scores, descending
    fp_sorted = np.sort(s[~pos])
    fp_at = fp_sorted.size - np.searchsorted(fp_sorted, levels, side="left")  # FPs scoring >= level
    # fp_at grows as the threshold falls, so the admissible levels are a prefix
    ok = np.flatnonzero(fp_at <= max_fp_per_scan * n_scans + 1e-9)
    # none admissible: just above the highest score (nothing is a finding)
    threshold = float(levels[ok[-1]]) if ok.size else float(np.nextafter(levels[0], np.inf))
    threshold = min(threshold, 1.0)
    found = pos & (s >= threshold)
    fps = ~pos & (s >= threshold)
    return OperatingPoint(
        threshold=threshold,
        max_fp_per_scan=float(max_fp_per_scan),
        fp_per_scan=float(fps.sum()) / n_scans,
        sensitivity=float(found.sum()) / n_nodules if n_nodules > 0 else math.nan,
        n_found=int(found.sum()),
        n_nodules=int(n_nodules),
        n_false_positives=int(fps.sum()),
        n_scans=int(n_scans),
    )


# --------------------------------------------------------------------------- the run


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class TrainingData:
    """Where the run's data came from and which folds validate it."""

    root: Path
    dataset: str | None
    val_folds: list[int]
    train_folds: list[int]
    test_folds: list[int]
    split_tag: str | None
    split_fingerprint: str | None
    extra_train: tuple[str, ...] = ()


def _override(params: Mapping[str, Any], key: str) -> Any:
    """The value a ``run.json``'s overrides give ``key`` (the last one wins), parsed as YAML.

    ``nodule fit`` got these; the run's ``config.yaml`` is rewritten by every later
    ``nodule predict`` of the run, so it need not show the training settings."""
    value = None
    for arg in params.get("overrides") or []:
        name, _, text = str(arg).partition("=")
        if name == key:
            value = yaml.safe_load(text)
    return value


def training_data(
    run_dir: Path,
    data_root: Path | None = None,
    dataset: str | None = None,
    val_folds: Sequence[int] | None = None,
    split: Path | None = None,
    recipe: Path | None = None,
) -> TrainingData:
    """The run's training data: given explicitly, else from ``run.json`` (written by
    ``scripts/train_synth.py``), else from the run's ``config.yaml``; with a split data set,
    the folds are its subsets' roles. The extra training sets (``extra_train``) are the fit's:
    from ``run.json``'s overrides, else from ``recipe`` when it is the file the run was
    trained with (its fingerprint is ``run.json``'s ``config``), else from ``config.yaml``
    (which later predictions of the run rewrite).

    Raises:
        ValueError: no data folder or no validation folds can be found.
    """
    from nodule.data.splits import load_split

    params: dict[str, Any] = {}
    record = run_dir / "run.json"
    if record.is_file():
        params = dict(json.loads(record.read_text()).get("params") or {})
    config = _read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    init = ((config.get("data") or {}).get("init_args")) or {}
    if data_root is None:
        if params.get("root"):
            data_root = Path(params["root"])
            dataset = dataset if dataset is not None else params.get("dataset")
        elif init.get("root"):
            data_root = Path(str(init["root"]))
            dataset = dataset if dataset is not None else init.get("dataset")
        else:
            raise ValueError(f"{run_dir}: no run.json or config.yaml naming the training data; give data_root")
    root = Path(data_root).expanduser().resolve()
    train: list[int] = []
    test: list[int] = []
    tag = split_fp = None
    if dataset is not None:
        description = load_split(split)
        entry = description.dataset(dataset)
        tag, split_fp = description.tag, description.fingerprint()
        train, test = entry.folds("train"), entry.folds("test")
        folds = list(val_folds) if val_folds is not None else entry.folds("val")
        if sorted(folds) != entry.folds("val"):
            raise ValueError(f"validation folds {folds} are not the val subsets {entry.folds('val')} of {dataset}")
    else:
        folds = list(val_folds) if val_folds is not None else list(init.get("val_folds") or [])
        train = list(init.get("train_folds") or [])
        test = list(init.get("test_folds") or [])
    if not folds:
        raise ValueError(f"{run_dir}: no validation folds to choose the threshold on")
    fit_init = init
    if recipe is not None and params.get("config") and file_fingerprint(recipe) == params["config"]:
        fit_init = ((_read_yaml(Path(recipe)).get("data") or {}).get("init_args")) or {}
    override = _override(params, "--data.init_args.extra_train")
    extra = tuple(str(n) for n in (override if override is not None else fit_init.get("extra_train") or []))
    return TrainingData(root, dataset, sorted(folds), train, test, tag, split_fp, extra)


def _validation_submission(run_dir: Path, checkpoint: Path, data: TrainingData, work: Path) -> Path:
    """Predict the validation folds with the checkpoint (``nodule predict`` in-process);
    reused while the checkpoint and the data are the same."""
    import warnings

    from nodule.training.cli import lightning_main

    out = work / "validation_submission.csv"
    marker = work / "validation_submission.json"
    key = {
        "checkpoint": str(checkpoint),
        "checkpoint_bytes": file_fingerprint(checkpoint),
        "root": str(data.root),
        "dataset": data.dataset,
        "folds": data.val_folds,
    }
    if out.is_file() and marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("key") == key and old.get("submission") == file_fingerprint(out):
            return out
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: the run's configuration is needed to predict its validation folds")
    candidates = data.root / "candidates.csv"
    args = [
        "predict",
        "--config", str(config),
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={work / 'predict'}",
        f"--checkpoint.dirpath={checkpoint.parent}",
        f"--submission.output={out}",
        f"--ckpt_path={checkpoint}",
        f"--data.init_args.root={data.root}",
        f"--data.init_args.candidates={candidates}",
        "--data.init_args.annotations=null",
        "--data.init_args.excluded=null",
        "--data.init_args.folds=null",
        "--data.init_args.cache_dir=null",
        "--data.init_args.progress=false",
        f"--data.init_args.predict_folds={data.val_folds}",
    ]
    if data.dataset is not None:
        args += [
            f"--data.init_args.dataset={data.dataset}",
            "--data.init_args.train_folds=null",
            "--data.init_args.val_folds=null",
            "--data.init_args.test_folds=null",
        ]
    else:
        args += [
            "--data.init_args.dataset=null",
            f"--data.init_args.train_folds={data.train_folds}",
            f"--data.init_args.val_folds={data.val_folds}",
            f"--data.init_args.test_folds={data.test_folds}",
        ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        lightning_main(args)
    write_text_atomic(marker, json.dumps({"key": key, "submission": file_fingerprint(out)}, indent=1) + "\n")
    return out


def validation_operating_point(submission: Path, data: TrainingData, max_fp_per_scan: float) -> tuple[OperatingPoint, dict[str, Any]]:
    """The threshold chosen on the validation predictions, and their CPM (official cap of
    100 marks per scan, no bootstrap)."""
    from nodule.data.luna16 import read_annotations, read_excluded, read_submission
    from nodule.evaluation.froc import evaluate_froc
    from nodule.evaluation.report import froc_json
    from nodule.training.datamodule import folder_folds

    folds = folder_folds(data.root)
    uids = [u for k in data.val_folds for u in folds.get(k, [])]
    if not uids:
        raise ValueError(f"{data.root}: validation folds {data.val_folds} hold no scan with an image")
    predictions = read_submission(submission)
    annotations = read_annotations(data.root / "annotations.csv")
    excluded_path = data.root / "annotations_excluded.csv"
    excluded = read_excluded(excluded_path) if excluded_path.is_file() else None
    every = evaluate_froc(predictions, annotations, excluded, uids, n_bootstrap=0, max_marks_per_scan=None)
    assert every.items is not None
    point = choose_threshold(every.items.scores, every.items.positive, every.n_nodules, every.n_scans, max_fp_per_scan)
    official = evaluate_froc(predictions, annotations, excluded, uids, n_bootstrap=0)
    return point, froc_json(official)


# --------------------------------------------------------------------------- figures


def _generator(root: Path) -> dict[str, Any] | None:
    path = root / "generator.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    keep = (
        "generator",
        "version",
        "seed",
        "preset",
        "scans",
        "shapes",
        "shape_bank_part",
        "shape_bank_version",
        "ct_series_uid",
        "known_findings",
        "fingerprint",
        "one_patient",
    )
    return {k: raw[k] for k in keep if k in raw}


def _extra_training(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per extra training data set (``extra_train``): its folder, generator record and scans."""
    from nodule.data.sets import dataset_root
    from nodule.training.datamodule import folder_folds

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        root = dataset_root(name)
        generator = _generator(root) or {}
        out[name] = {
            "data_root": str(root),
            "generator": generator,
            "data": generator.get("fingerprint") or str(root),
            "n_scans": sum(len(v) for v in folder_folds(root).values()),
        }
    return out


def _figure(entry: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("set", "cpm", "cpm_ci95", "bootstrap_unit", "sensitivities", "n_scans", "n_nodules", "n_hits")
    out = {k: entry[k] for k in keep if k in entry}
    real = entry.get("real_scans")
    if isinstance(real, Mapping):
        out["real_scans"] = {
            "fp_per_scan_at": real.get("fp_per_scan_at"),
            "nodules": [
                {k: n.get(k) for k in ("diameter_mm", "probability", "fp_per_scan_above")}
                for n in real.get("nodules") or []
            ],
        }
    return out


def run_results(results: Path, variant: str) -> dict[str, Any] | None:
    """The test and external figures of a variant in ``scripts/train_synth.py``'s ``results.json``."""
    for entry in json.loads(results.read_text()):
        if entry.get("variant") == variant:
            return {
                "test": _figure(entry["test"]),
                "external": [_figure(e) for e in entry.get("external") or []],
                "source": str(results),
            }
    return None


def crossval_results(run: Path) -> dict[str, Any]:
    """The pooled and per-fold figures of a ``nodule crossval`` run folder (``summary.json``)."""
    summary = json.loads((run / "summary.json").read_text())
    pooled = summary["pooled"]
    provenance = summary.get("provenance") or {}
    generator = provenance.get("generator") or {}
    return {
        "data": provenance.get("dataset") or Path(str(provenance.get("data", ""))).name,
        "generator": {k: generator.get(k) for k in ("generator", "version", "seed", "preset", "scans") if k in generator},
        "folds": summary.get("folds"),
        "cpm": pooled.get("cpm"),
        "cpm_ci95": pooled.get("cpm_ci95"),
        "sensitivities": pooled.get("sensitivity"),
        "bootstrap_unit": pooled.get("bootstrap_unit"),
        "n_scans": pooled.get("n_scans"),
        "n_nodules": pooled.get("n_nodules"),
        "n_hits": pooled.get("n_hits"),
        "fold_cpms": [((f.get("test") or {}).get("cpm")) for f in summary.get("per_fold") or []],
        "wall_time_s": summary.get("wall_time_s"),
        "source": str(run / "summary.json"),
    }


def _weights_hash(bundle: ModelBundle) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(bundle.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _software() -> dict[str, str]:
    import platform

    import pytorch_lightning
    import torch

    from nodule import __version__ as nodule_version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pytorch_lightning.__version__,
        "nodule": nodule_version,
    }


# --------------------------------------------------------------------------- export


def export_model(
    run_dir: Path,
    out: Path,
    *,
    checkpoint: Path | None = None,
    results: Path | None = None,
    crossval: Path | None = None,
    recipe: Path | None = None,
    data_root: Path | None = None,
    dataset: str | None = None,
    val_folds: Sequence[int] | None = None,
    split: Path | None = None,
    max_fp_per_scan: float = 1.0,
    name: str = "nodule-default",
    version: str | None = None,
    timings: Mapping[str, Any] | None = None,
    commands: Sequence[str] = (),
    card: bool = True,
    work_dir: Path | None = None,
) -> ModelBundle:
    """Export a training run's best checkpoint as a model file with a threshold chosen on
    validation data, and its model card (module docstring).

    Args:
        run_dir: the run folder (``config.yaml``, ``checkpoints/``; ``run.json`` of
            ``scripts/train_synth.py`` when present).
        out: the model file to write; ``MODEL_CARD.md`` goes beside it.
        checkpoint: the checkpoint (default: the best by validation CPM).
        results: ``results.json`` of ``scripts/train_synth.py`` (default
            ``run_dir/../results.json`` when it exists): test and external figures.
        crossval: a ``nodule crossval`` run folder of the same recipe: CV figures.
        recipe: the training configuration file (its fingerprint and name are recorded).
        data_root: the training data folder (default from ``run.json`` or ``config.yaml``).
        dataset: its data set in the split description (default likewise).
        val_folds: the validation folds (default the data set's ``val`` subsets).
        split: the split description (default ``configs/splits/default.yaml``).
        max_fp_per_scan: the validation operating point of the threshold.
        name: the model's name (the version is ``<name>-<first 8 hex of the weights' SHA-256>``).
        version: the version string instead.
        timings: wall times of the stages that made the model (for the card).
        commands: the command lines that reproduce the model (for the card).
        card: write ``MODEL_CARD.md``.
        work_dir: where the validation predictions go (default ``run_dir/export``).

    Returns:
        The exported model, read back from ``out``.

    Raises:
        ValueError: no validation data, or no checkpoint recorded.
        ModelLoadError: the checkpoint is not a model of this project.
    """
    from nodule.training.checkpoints import read_best

    run_dir = Path(run_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    best_score: float | None = None
    if checkpoint is None:
        checkpoint, best_score = read_best(run_dir / "checkpoints")
    checkpoint = Path(checkpoint).expanduser().resolve()
    source = load_model(checkpoint)  # refuses another network before any data is read
    data = training_data(run_dir, data_root, dataset, val_folds, split, recipe)
    work = Path(work_dir) if work_dir is not None else run_dir / "export"
    submission = _validation_submission(run_dir, checkpoint, data, work)
    point, validation = validation_operating_point(submission, data, max_fp_per_scan)

    if results is None and (run_dir.parent / "results.json").is_file():
        results = run_dir.parent / "results.json"
    measured = run_results(results, run_dir.name) if results is not None else None
    cv = crossval_results(Path(crossval)) if crossval is not None else None

    params: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        params = dict(json.loads((run_dir / "run.json").read_text()).get("params") or {})
    recipe_fp = file_fingerprint(recipe) if recipe is not None else params.get("config")
    weights = _weights_hash(source)
    network = {"class_path": MULTISTREAM, "init_args": source.init_args}
    generator = _generator(data.root)
    from nodule.training.datamodule import folder_folds

    fold_scans = {k: len(v) for k, v in folder_folds(data.root).items()}
    n_scans = {
        role: sum(fold_scans.get(k, 0) for k in folds)
        for role, folds in (("train", data.train_folds), ("val", data.val_folds), ("test", data.test_folds))
    }
    extra = _extra_training(data.extra_train)
    shaped = {
        "extra_train": {k: v.get("data") for k, v in extra.items()},
        "recipe": recipe_fp,
        "overrides": params.get("overrides", []),
        "dataset": data.dataset,
        "data": (generator or {}).get("fingerprint") or str(data.root),
        "split": data.split_fingerprint,
        "network": network,
        "patch": patch_dict(source.patch),
    }
    config_hash = fingerprint(shaped)
    version = version or f"{name}-{weights[:8]}"
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    metadata: dict[str, Any] = {
        "name": name,
        "created": created,
        "research_use": RESEARCH_USE_ONLY,
        "weights_sha256": weights,
        "training": {
            "dataset": data.dataset,
            "data_root": str(data.root),
            "generator": generator,
            "split": data.split_tag,
            "split_fingerprint": data.split_fingerprint,
            "train_folds": data.train_folds,
            "val_folds": data.val_folds,
            "test_folds": data.test_folds,
            "n_scans": n_scans,
            "extra_train": extra,
            "recipe": None if recipe is None else Path(recipe).name,
            "recipe_fingerprint": recipe_fp,
            "overrides": params.get("overrides", []),
            "checkpoint": checkpoint.name,
            "epoch": source.metadata.get("epoch"),
            "global_step": source.metadata.get("global_step"),
            "best_val_cpm": best_score,
        },
        "threshold": {
            **asdict(point),
            "rule": RULE.format(fps=max_fp_per_scan),
            "chosen_on": f"{data.dataset or data.root.name} validation subsets {data.val_folds}",
        },
        "validation": validation,
        "figures": {"test_and_external": measured, "crossval": cv},
        "timings": dict(timings or {}),
        "commands": list(commands),
        "software": _software(),
    }
    save_model(
        net=source.net,
        init_args=source.init_args,
        patch=source.patch,
        threshold=point.threshold,
        version=version,
        config_hash=config_hash,
        metadata=metadata,
        path=out,
    )
    bundle = load_model(out)
    probe = np.random.default_rng(0).random((4, source.patch.n_views, source.patch.size_px, source.patch.size_px), np.float32)
    if not np.allclose(bundle.predict(probe), source.predict(probe), atol=1e-6):
        raise RuntimeError(f"{out}: the exported model does not predict as its checkpoint {checkpoint}")
    if card:
        write_text_atomic(out.parent / "MODEL_CARD.md", model_card(bundle, out.name))
    return bundle


# --------------------------------------------------------------------------- the card


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def _ci(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "not measured"
    ci = entry.get("cpm_ci95")
    text = _num(entry.get("cpm"))
    if ci and None not in ci:
        text += f" [{_num(ci[0])}, {_num(ci[1])}]"
    return text


def _sens(entry: Mapping[str, Any]) -> str:
    sens = {float(k): v for k, v in (entry.get("sensitivities") or {}).items()}
    return " | ".join(_num(sens.get(rate)) for rate in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0))


def _minutes(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    return f"{int(s // 60)} min {round(s % 60)} s"


def _extra_line(name: str, entry: Mapping[str, Any]) -> str:
    """The card's line for one extra training data set."""
    g = entry.get("generator") or {}
    if g.get("generator") == "nodule insert":
        what = (
            f"nodules of the shape bank's `{g.get('shape_bank_part', '?')}` part inserted into variants of the real scan"
            f" {g.get('ct_series_uid', '?')} (seed {g.get('seed', '?')}; its {g.get('known_findings', 0)} known real finding(s)"
            " excluded, never a positive or a negative)"
        )
    else:
        what = f"made by `{g.get('generator', '?')}` (seed {g.get('seed', '?')})"
    return f"- Also trains on data set `{name}`: {entry.get('n_scans', '?')} scans, all of them training; {what}."


def model_card(bundle: ModelBundle, filename: str = "model.pt") -> str:
    """The model card (Markdown) of an exported model, from its metadata."""
    meta = bundle.metadata
    training = meta.get("training") or {}
    generator = training.get("generator") or {}
    threshold = meta.get("threshold") or {}
    validation = meta.get("validation") or {}
    figures = meta.get("figures") or {}
    measured = figures.get("test_and_external") or {}
    cv = figures.get("crossval")
    args = bundle.init_args
    p = bundle.patch
    n_scans = training.get("n_scans") or {}
    extra = training.get("extra_train") or {}
    trained_on = (
        "synthetic chest CT and variants of real chest CTs with inserted nodules"
        if extra
        else "synthetic chest CT only"
    )
    lines = [
        f"# Model card: {meta.get('name', 'nodule model')} ({bundle.version})",
        "",
        f"**{RESEARCH_USE_ONLY}** This model was trained on {trained_on}. It has not been",
        "validated on a clinical population and must not be used to diagnose, screen or treat anyone.",
        "",
        "## Summary",
        "",
        f"- File: `{filename}` ({p.n_views}-view multistream CNN, {sum(t.numel() for t in bundle.net.state_dict().values()):,} stored values); "
        f"format `nodule-model` read by `nodule.models.bundle.load_model` (`torch.load(..., weights_only=True)`).",
        f"- Version `{bundle.version}`, config hash `{bundle.config_hash}`, created {meta.get('created', '-')}.",
        "- Task: false-positive reduction of lung nodule candidates: each candidate of the candidate",
        "  detector (`nodule candidates`) gets a nodule probability from multiplanar patches around it.",
        f"- Operating threshold **{bundle.threshold:.4f}** (probability >= threshold is a finding), chosen on",
        "  validation data (below).",
        "",
        "## Training data",
        "",
        f"- Data set `{training.get('dataset')}` of the split description `configs/splits/default.yaml`"
        f" (split `{training.get('split')}`, fingerprint `{training.get('split_fingerprint')}`).",
        f"- Made by `{generator.get('generator', '?')}` version {generator.get('version', '?')}, seed"
        f" {generator.get('seed', '?')}, preset `{generator.get('preset', '?')}`, {generator.get('scans', '?')} scans"
        f" (LIDC shape bank version {generator.get('shape_bank_version', '?')}; data fingerprint `{generator.get('fingerprint', '?')}`).",
        f"- Subsets {training.get('train_folds')} train, {training.get('val_folds')} validate (checkpoint selection by"
        f" validation CPM and the threshold), {training.get('test_folds')} test (never seen in training or selection).",
        *[_extra_line(name, e) for name, e in extra.items()],
        f"- Recipe `configs/{training.get('recipe') or '?'}` (fingerprint `{training.get('recipe_fingerprint')}`); best"
        f" checkpoint `{training.get('checkpoint')}` (epoch {training.get('epoch')}, validation CPM {_num(training.get('best_val_cpm'))}).",
        "",
        "## Architecture and input",
        "",
        f"- `MultiStreamNet` (Setio et al. 2016): {args.get('n_views', 9)} views, fusion `{args.get('fusion', 'mixed')}`,"
        f" {'shared' if args.get('shared_weights', True) else 'separate'} stream weights, convolutions"
        f" {args.get('channels')} with kernels {args.get('kernel_sizes')}, batch norm {args.get('batch_norm', False)},"
        f" {args.get('fc_units')} features a view, dropout {args.get('dropout')}.",
        f"- Patches: {p.n_views} planes of {p.size_px} x {p.size_px} px over {p.fov_mm:g} x {p.fov_mm:g} mm"
        f" ({p.pixel_mm:g} mm a pixel) through the candidate, HU window [{p.hu_min:g}, {p.hu_max:g}] scaled to"
        f" [{p.out_min:g}, {p.out_max:g}] (`nodule.patches`).",
        "",
        "## Operating threshold",
        "",
        f"- Rule: {threshold.get('rule', '-')}, on {threshold.get('chosen_on', '-')}.",
        f"- At {bundle.threshold:.4f} on those {threshold.get('n_scans')} validation scans: {_num(threshold.get('fp_per_scan'), 2)}"
        f" false positives per scan, sensitivity {_num(threshold.get('sensitivity'))} ({threshold.get('n_found')} of"
        f" {threshold.get('n_nodules')} nodules). Validation CPM {_num(validation.get('cpm'))} (100 marks a scan).",
        "- The validation set is small: the threshold is a rough operating point, not a calibrated one.",
        "",
        "## Performance",
        "",
        "LUNA16 FROC/CPM (mean sensitivity at 1/8 ... 8 false positives per scan, official cap of 100",
        "marks per scan), 95% bootstrap confidence intervals. The candidates bound every figure: a nodule",
        "no candidate reaches cannot be found (column *hit*).",
        "",
        "| set | CPM [95% CI] | sens@0.125 | 0.25 | 0.5 | 1 | 2 | 4 | 8 | scans | nodules (hit) | CI resamples |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    test = measured.get("test")
    if test:
        rows.append((f"held-out test subsets {training.get('test_folds')} of {test.get('set')}", test))
    names = {
        "external_lidc0001_seed0": "external: held-out LIDC nodule shapes inserted into LIDC-IDRI-0001",
        "external_lidc0002_seed0": "external: held-out LIDC nodule shapes inserted into LIDC-IDRI-0002",
        "real_lidc": "external: the real LIDC-IDRI-0001 and -0002 scans, real LUNA16 tables",
    }
    for e in measured.get("external") or []:
        rows.append((names.get(str(e.get("set")), f"external: {e.get('set')}"), e))
    for label, e in rows:
        lines.append(
            f"| {label} | {_ci(e)} | {_sens(e)} | {e.get('n_scans')} | {e.get('n_nodules')} ({e.get('n_hits')}) | {e.get('bootstrap_unit')}s |"
        )
    if cv:
        lines.append(
            f"| cross-validation of the same recipe: {len(cv.get('folds') or [])} folds of {cv.get('data')}, pooled | {_ci(cv)} | {_sens(cv)} | "
            f"{cv.get('n_scans')} | {cv.get('n_nodules')} ({cv.get('n_hits')}) | {cv.get('bootstrap_unit')}s |"
        )
    if not rows and not cv:
        lines.append("| (no figures recorded at export) | | | | | | | | | | | |")
    for e in measured.get("external") or []:
        real = e.get("real_scans")
        if real:
            at = real.get("fp_per_scan_at") or {}
            nods = "; ".join(
                "missed" if n.get("probability") is None else f"{_num(n.get('diameter_mm'), 1)} mm nodule at probability {_num(n.get('probability'))}, {_num(n.get('fp_per_scan_above'), 2)} FP/scan above it"
                for n in real.get("nodules") or []
            )
            lines += [
                "",
                f"Real LIDC scans: {_num(at.get('0.5'), 1)} false positives per scan at p >= 0.5, {_num(at.get('0.9'), 1)} at p >= 0.9,"
                f" {_num(at.get('0.99'), 1)} at p >= 0.99; {nods}. One real nodule gives no sensitivity figure worth the name.",
            ]
    if cv:
        folds = ", ".join(_num(c) for c in cv.get("fold_cpms") or [])
        lines += [
            "",
            f"Cross-validation (`nodule crossval`): fold k trains on eight folds, the next fold selects the checkpoint, fold k"
            f" is predicted; every fold's predictions pooled and evaluated once. Data: {cv.get('data')} (generator"
            f" {cv.get('generator', {}).get('version', '?')}, seed {cv.get('generator', {}).get('seed', '?')}, preset"
            f" `{cv.get('generator', {}).get('preset', '?')}`: smaller, lower-resolution scans than the training set, and"
            f" a candidate ceiling of {cv.get('n_hits')} of {cv.get('n_nodules')} nodules within 100 marks a scan). Fold CPMs: {folds}.",
        ]
    timings = meta.get("timings") or {}
    if timings:
        lines += ["", "## Training time", ""]
        for stage, t in timings.items():
            what = {
                "train": "patch cache, training, the test and external predictions and their evaluations",
                "crossval": "the cross-validation of the same recipe, its patch cache included",
            }.get(stage, stage)
            load = t.get("load_average")
            cache = t.get("patch_cache_at_start")
            lines.append(
                f"- {stage}: **{_minutes(t.get('seconds'))}** wall clock ({what}; {t.get('cpus')} CPU cores"
                + (f"; patch cache {cache} at the start" if cache else "")
                + (f"; load average {load[0]:.1f} at the end" if load else "")
                + ")."
            )
    lines += [
        "",
        "## Known limits",
        "",
        *(
            [
                "- Mostly synthetic training data: procedural chest phantoms with nodules shaped like LIDC-IDRI",
                "  radiologists' contours, and variants of only two real chest CTs (two patients) with inserted",
                "  nodules. How well it transfers to real CT is measured only on nodules inserted into two other",
                "  real scans and on those two real scans with one nodule: far too little to claim anything.",
            ]
            if extra
            else [
                "- Synthetic training data only: procedural chest phantoms with nodules shaped like LIDC-IDRI",
                "  radiologists' contours. How well it transfers to real CT is measured only on nodules inserted",
                "  into two real scans and on two real scans with one nodule: far too little to claim anything.",
            ]
        ),
        f"- Small data: {n_scans.get('train', '?')} training scans, {n_scans.get('val', '?')} validation scans (the threshold),"
        f" {n_scans.get('test', '?')} test scans with {(test or {}).get('n_nodules', '?')} nodules: the confidence intervals are wide.",
        f"- A CPU-sized network ({p.size_px} px views, {len(args.get('channels') or [])} small convolutions, trained for minutes on 2 cores), not a tuned",
        "  detector; its output depends on the candidate detector, whose misses it cannot recover.",
        "- Ground-glass nodules and nodules on real lung are its weak spots (docs/results.md).",
        f"- {RESEARCH_USE_ONLY} Not a medical device.",
    ]
    commands = meta.get("commands") or []
    if commands:
        lines += ["", "## Reproduce", "", "```", *commands, "```"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from nodule.models.bundle import load_model",
        "model = load_model()            # this file; or load_model(path) for another model or a nodule fit checkpoint",
        "probabilities = model.predict(patches)   # (N, V, H, W) float32 patches made with model.patch",
        "findings = probabilities >= model.threshold",
        "```",
        "",
        f"Software: {', '.join(f'{k} {v}' for k, v in (meta.get('software') or {}).items())}.",
        "",
    ]
    return "\n".join(lines)
