"""``nodule crossval``: K-fold cross-validation of the candidate classifier, LUNA16 style.

For each listed fold ``k`` a fresh model (its own initialisation, optimiser and seed
``seed + k``) is trained through LightningCLI (:func:`nodule.training.cli.lightning_main`,
as ``nodule fit``) on the other listed folds but one: the next listed fold (cyclically)
validates and selects the checkpoint (ModelCheckpoint on ``val/cpm``). The best
checkpoint then predicts fold ``k`` (as ``nodule predict``). The test fold is never
loaded while a fold's model is trained: the fit's data module has no test or predict
folds, and the fold's predictions are made only from the checkpoint the fit selected.
Every fold's predictions are pooled and evaluated once, as LUNA16 does (LUNA16-exact
FROC, official cap of 100 marks a scan, bootstrap CI), besides each fold's own CPM.

External sets (``external``) are predicted by the ensemble of the fold models (mean
probability over folds) and, with ``final_model``, by one more model trained on every
listed fold with no validation fold (its last epoch is kept: the fold models' epochs
are the recipe's, and nothing is left to select on; seed ``seed + max(folds) + 1``, no
fold's).

Guards, each a :class:`CrossvalError` before anything trains (or a failed fold):

* no scan or patient in two of train / validation / test of a fold
  (:func:`check_fold_separation`; patients from the split description when the data
  folder is one of its data sets, or when its scans are in one; else each scan is its
  own patient), and no patient of an external set in the cross-validated data;
* a data folder that is a split data set must have role ``crossval`` for every listed
  fold (:func:`check_crossval_roles`);
* the candidate ranker must not have been trained on any scan of the data or of an
  external set (:func:`check_ranker`; a warning when it records no training scans);
* two models with the same initial weights (:func:`check_distinct_inits`).

Layout of the run folder ``out``: ``fold_K/`` (``checkpoints/``, ``predictions.csv``,
``fold.json``, ``config.yaml`` (the fit's; ``predictions/config.yaml`` the
prediction's), ``wandb/`` (the fold's W&B run, named ``fold_K``),
``external/<name>-<hash>.csv``), ``final/`` (with ``final_model``), ``predictions.csv``
(every fold pooled), ``external/<name>/predictions.csv`` (the ensemble's),
``summary.json``, ``report.html``, ``report.md`` and ``froc.png``
(:mod:`nodule.evaluation.html_report`), ``wandb/`` (the ``summary`` run). The W&B runs
(offline unless ``WANDB_MODE`` says otherwise) share one group, the run folder's name.

A rerun resumes: a fold whose ``predictions.csv`` and finished ``fold.json`` exist with
the same fingerprint (configuration, overrides, data tables, fold assignment, seed) is
skipped; an unfinished one resumes its fit from ``last.ckpt``; a fold of another
fingerprint is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from nodule.data.luna16 import (
    read_annotations,
    read_excluded,
    read_submission,
    write_submission,
)
from nodule.evaluation.froc import BootstrapUnit, FrocResult, evaluate_froc
from nodule.evaluation.report import bootstrap_unit_for, froc_json
from nodule.fingerprint import file_fingerprint, fingerprint
from nodule.paths import cache_dir, write_text_atomic
from nodule.training.checkpoints import read_best
from nodule.training.cli import folder_data_args, lightning_main
from nodule.training.datamodule import folder_folds

FOLD_JSON = "fold.json"
PREDICTIONS = "predictions.csv"
SUMMARY = "summary.json"


class CrossvalError(RuntimeError):
    """A cross-validation that would leak or mix runs; the message says what and where."""


# --------------------------------------------------------------------------- folds


def parse_folds(spec: str | int | Sequence[int]) -> list[int]:
    """Folds from ``0-9``, ``0,2,5``, ``[0, 2, 5]`` or a list; unique, in the given order.

    Raises:
        ValueError: not folds 0-9, or a fold twice.
    """
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        items = []
        for part in spec.strip().strip("[]").split(","):
            part = part.strip()
            if not part:
                continue
            match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if match:
                a, b = int(match[1]), int(match[2])
                items.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
            elif part.isdigit():
                items.append(int(part))
            else:
                raise ValueError(f"folds: cannot read {part!r} (use 0-9, 0,2,5 or a list)")
    else:
        items = [int(k) for k in spec]
    if len(set(items)) != len(items):
        raise ValueError(f"folds: a fold is listed twice in {spec!r}")
    if not all(0 <= k <= 99 for k in items):
        raise ValueError(f"folds: subsets are numbered from 0, got {items}")
    return items


@dataclass(frozen=True)
class FoldPlan:
    """What one fold's model trains, validates and tests on (subset numbers).

    Attributes:
        test: the fold predicted (never seen in training or selection).
        val: the fold that selects the checkpoint.
        train: the folds trained on.
    """

    test: int
    val: int
    train: tuple[int, ...]

    @property
    def name(self) -> str:
        """``fold_K``."""
        return f"fold_{self.test}"


def plan_folds(folds: Sequence[int]) -> list[FoldPlan]:
    """One plan a fold: validation on the next listed fold (cyclically), training on the rest.

    Raises:
        CrossvalError: fewer than three folds (a fold would have nothing to train on).
    """
    folds = list(folds)
    if len(folds) < 3:
        raise CrossvalError(f"cross-validation needs at least 3 folds (test, validation, train), got {folds}")
    plans = []
    for i, k in enumerate(folds):
        val = folds[(i + 1) % len(folds)]
        plans.append(FoldPlan(test=k, val=val, train=tuple(f for f in folds if f not in (k, val))))
    return plans


# --------------------------------------------------------------------------- guards


def identify_dataset(root: Path, split: Any, name: str | None = None) -> str | None:
    """The split's data set that a folder holds: ``name`` when given (checked), else the one
    whose scans and subsets (:meth:`~nodule.data.splits.Split.scans`) equal the folder's
    ``folds/subsetK.csv``; None when it is none of them.

    Raises:
        SplitError: ``name`` given and the folder's scans are not that data set's.
    """
    from nodule.data.sets import check_dataset_folder, folder_seriesuids

    if name is not None:
        check_dataset_folder(split, name, root)
        return name
    if not (root / "folds").is_dir():
        return None
    found = folder_seriesuids(root)
    for candidate in split.datasets:
        table = split.scans(candidate)
        if len(table) != len(found):
            continue
        if dict(zip(table["seriesuid"], table["subset"].astype(int), strict=True)) == found:
            return str(candidate)
    return None


def patients_of(uids: Iterable[str], split: Any) -> dict[str, str]:
    """Each scan's patient: from the split's scan table when the split knows the scan, else
    the scan itself (a scan of unknown origin is taken as its own patient)."""
    table = split.scan_table()
    known = dict(zip(table["seriesuid"], table["patient"], strict=True))
    return {u: str(known.get(u, u)) for u in uids}


def check_crossval_roles(split: Any, dataset: str, folds: Sequence[int]) -> None:
    """A split data set may be cross-validated only over subsets whose role is ``crossval``.

    Raises:
        CrossvalError: a listed fold with another role (or none), naming them.
    """
    data = split.dataset(dataset)
    wrong = {k: data.role_of(k) for k in folds if data.role_of(k) != "crossval"}
    if wrong:
        raise CrossvalError(
            f"data set {dataset} of split {split.tag} ({split.path}): subsets {sorted(wrong)} have roles "
            f"{sorted({str(r) for r in wrong.values()})}, not crossval; cross-validate a data set whose "
            "subsets the split gives to crossval"
        )


def check_fold_separation(
    plans: Sequence[FoldPlan], assignment: Mapping[int, Sequence[str]], patient_of: Mapping[str, str]
) -> None:
    """No scan and no patient in two of a fold's train, validation and test parts, and the
    validation fold never the test fold.

    Raises:
        CrossvalError: naming the fold, the parts and the scans or patients.
    """
    for plan in plans:
        if plan.val == plan.test or plan.test in plan.train or plan.val in plan.train:
            raise CrossvalError(f"{plan.name}: test {plan.test}, validation {plan.val}, train {list(plan.train)} overlap")
        parts = {
            "train": [u for k in plan.train for u in assignment.get(k, [])],
            "validation": list(assignment.get(plan.val, [])),
            "test": list(assignment.get(plan.test, [])),
        }
        names = list(parts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                scans = sorted(set(parts[a]) & set(parts[b]))
                if scans:
                    raise CrossvalError(f"{plan.name}: scans in both {a} and {b}: {_some(scans)}")
                pa = {patient_of.get(u, u) for u in parts[a]}
                pb = {patient_of.get(u, u) for u in parts[b]}
                shared = sorted(pa & pb)
                if shared:
                    raise CrossvalError(
                        f"{plan.name}: patients with scans in both {a} (folds "
                        f"{list(plan.train) if a == 'train' else plan.val}) and {b}: {_some(shared)}; "
                        "a patient's scans must all be in one fold"
                    )


def check_ranker(uids: Iterable[str], trained_on: Sequence[str] | None, what: str, part: str = "the candidate ranker") -> None:
    """A learned part of the candidate stage (``part``: the ranker, or the learned detector)
    must not have been trained on a scan that is cross-validated or externally tested (its
    candidates would be easier there).

    Raises:
        CrossvalError: naming the overlap. Warns instead when the part records no
        training scans (its leakage cannot be checked until it is retrained).
    """
    if trained_on is None:
        warnings.warn(
            f"{part} records no training scans (info.trained_on_uids): whether it saw "
            f"scans of {what} cannot be checked; retrain it (scripts/train_candidate_*.py)",
            stacklevel=2,
        )
        return
    overlap = sorted(set(uids) & set(trained_on))
    if overlap:
        raise CrossvalError(
            f"{part} was trained on {len(overlap)} scans of {what}: {_some(overlap)}; "
            "its candidates there are not a fair test"
        )


def check_distinct_inits(hashes: Mapping[str, str]) -> None:
    """Every model must start from its own initial weights.

    Args:
        hashes: model name (``fold_K``, ``final``) -> hash of its initial state_dict.

    Raises:
        CrossvalError: two models with the same initial weights.
    """
    seen: dict[str, str] = {}
    for name, digest in hashes.items():
        if digest in seen:
            raise CrossvalError(
                f"{seen[digest]} and {name} start from the same initial weights ({digest[:12]}): "
                "every fold must train a fresh model"
            )
        seen[digest] = name


def _some(values: Sequence[str], n: int = 5) -> str:
    more = f" and {len(values) - n} more" if len(values) > n else ""
    return ", ".join(values[:n]) + more


# --------------------------------------------------------------------------- fingerprints


def state_dict_hash(module: Any) -> str:
    """SHA-256 of a module's state_dict (names, shapes, dtypes and values)."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class InitialStateHash(Callback):
    """Records the hash of the model's initial state_dict (at setup, before a checkpoint
    is restored), in ``digest``."""

    def __init__(self) -> None:
        super().__init__()
        self.digest: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Hash the freshly initialised weights."""
        if self.digest is None:
            self.digest = state_dict_hash(pl_module)


def folder_fingerprint(root: Path) -> str:
    """The fingerprint (:mod:`nodule.fingerprint`) of a LUNA16-layout folder's tables
    (candidates, annotations, excluded findings, folds) and of the names of its images."""
    from nodule.training.datamodule import find_scans

    files = [root / n for n in ("candidates.csv", "annotations.csv", "annotations_excluded.csv")]
    files += sorted((root / "folds").glob("subset*.csv"))
    tables = {path.name: file_fingerprint(path) if path.is_file() else None for path in files}
    return fingerprint({"tables": tables, "scans": sorted(find_scans(root))})


def wandb_run_id(run_dir: Path, name: str) -> str:
    """The fixed W&B id of one run of a crossval folder (a fold, final, summary): the
    folder's name and a short fingerprint of its path, so reruns resume the same runs."""
    tag = fingerprint({"run_dir": str(run_dir)})[:6]
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{run_dir.name}-{tag}-{name}")


# --------------------------------------------------------------------------- evaluation


def evaluate_scans(
    predictions: pd.DataFrame,
    root: Path,
    seriesuids: Sequence[str],
    n_bootstrap: int,
    seed: int,
    unit: BootstrapUnit,
) -> FrocResult:
    """LUNA16 evaluation (official cap of 100 marks a scan) of predictions on some scans of a
    data set, with its own annotations and excluded findings and a bootstrap over ``unit``."""
    excluded = root / "annotations_excluded.csv"
    return evaluate_froc(
        predictions,
        read_annotations(root / "annotations.csv"),
        read_excluded(excluded) if excluded.is_file() else None,
        seriesuids=list(seriesuids),
        n_bootstrap=n_bootstrap,
        seed=seed,
        bootstrap_unit=unit,
    )


def ensemble_predictions(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Mean probability over models of the same candidates (rows in the same order).

    Raises:
        ValueError: no table, or tables of different candidates.
    """
    if not tables:
        raise ValueError("no predictions to average")
    first = tables[0].reset_index(drop=True)
    keys = ["seriesuid", "coordX", "coordY", "coordZ"]
    for other in tables[1:]:
        if len(other) != len(first) or not other[keys].reset_index(drop=True).equals(first[keys]):
            raise ValueError("the models predicted different candidates; cannot average them")
    mean = sum(t["probability"].to_numpy(float) for t in tables) / len(tables)
    return first.assign(probability=mean)


def _main_process() -> bool:
    """Whether this is the process that writes (global rank zero; the others of a DDP run only
    take part in the Lightning calls)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0)) == 0


def _write_json_atomic(path: Path, payload: Any) -> Path:
    if not _main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(payload, indent=1, default=str) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- runs


def _logger_settings(config: Path) -> dict[str, Any] | None:
    """The configured WandbLogger's init_args, or None when the config logs elsewhere."""
    import yaml

    raw = yaml.safe_load(config.read_text()) or {}
    logger = (raw.get("trainer") or {}).get("logger")
    for entry in logger if isinstance(logger, list) else [logger]:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("WandbLogger"):
            return dict(entry.get("init_args") or {})
    return None


@dataclass
class _Runner:
    """Builds and runs the LightningCLI calls of one cross-validation."""

    config: Path
    overrides: tuple[str, ...]
    run_dir: Path
    root: Path
    wandb: dict[str, Any] | None

    def fit(self, name: str, train: Sequence[int], val: Sequence[int], seed: int) -> tuple[Path, InitialStateHash, Any]:
        """Train one model in ``run_dir/name`` (resuming from its ``last.ckpt``)."""
        folder = self.run_dir / name
        checkpoints = folder / "checkpoints"
        args = ["fit", "--config", str(self.config), *self.overrides]
        args += folder_data_args(self.root, train, val, [])  # crossval checks the split itself
        args += [
            f"--seed_everything={seed}",
            f"--data.init_args.seed={seed}",
            f"--trainer.default_root_dir={folder}",
            f"--checkpoint.dirpath={checkpoints}",
            "--checkpoint.save_last=true",
            "--trainer.callbacks+=nodule.evaluation.crossval.InitialStateHash",
        ]
        if val:
            args += ["--checkpoint.monitor=val/cpm", "--checkpoint.mode=max"]
        else:  # the final model: no validation, its last epoch is kept
            args += [
                "--checkpoint.monitor=null",
                "--checkpoint.filename=epoch{epoch:03d}",
                "--trainer.limit_val_batches=0",
                "--trainer.num_sanity_val_steps=0",
            ]
        if self.wandb is not None:
            group = self.run_dir.name
            run_id = wandb_run_id(self.run_dir, name)
            args += [
                f"--trainer.logger.init_args.save_dir={folder}",
                f"--trainer.logger.init_args.name={name}",
                f"--trainer.logger.init_args.group={group}",
                f"--trainer.logger.init_args.id={run_id}",
                "--trainer.logger.init_args.resume=allow",
            ]
        last = checkpoints / "last.ckpt"
        if last.is_file():
            args.append(f"--ckpt_path={last}")
        cli = _lightning(args)
        hasher = next(c for c in getattr(cli.trainer, "callbacks", []) if isinstance(c, InitialStateHash))
        return checkpoints, hasher, cli.datamodule

    def predict(self, root: Path, folds: Sequence[int], checkpoint: Path, out: Path) -> pd.DataFrame:
        """Predict every candidate of ``folds`` of ``root`` with a checkpoint; write ``out``
        (atomically, as every LUNA16 table) and return the submission."""
        args = ["predict", "--config", str(self.config), *self.overrides]
        args += folder_data_args(root, predict=folds)
        args += [
            f"--trainer.default_root_dir={out.with_suffix('')}",  # its config.yaml, beside the fit's
            f"--checkpoint.dirpath={checkpoint.parent}",
            "--trainer.logger=false",
            f"--submission.output={out}",
            f"--ckpt_path={checkpoint}",
        ]
        _lightning(args)
        if not _main_process():  # the first process wrote the gathered predictions
            return pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"])
        return read_submission(out)


def _lightning(args: list[str]) -> Any:
    """:func:`~nodule.training.cli.lightning_main` without LightningCLI's warning that the
    process's own command line (``nodule crossval ...``) differs from ``args``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return lightning_main(args)


@dataclass(frozen=True)
class ExternalSet:
    """An external LUNA16-layout set: its folder, name, scans and fingerprint."""

    root: Path
    name: str
    folds: dict[int, list[str]]
    fingerprint: str

    @property
    def seriesuids(self) -> list[str]:
        """Every scan of the set."""
        return [u for uids in self.folds.values() for u in uids]


def _external_sets(folders: Sequence[Path]) -> list[ExternalSet]:
    out: list[ExternalSet] = []
    names: set[str] = set()
    for folder in folders:
        root = Path(folder).expanduser().resolve()
        for needed in ("candidates.csv", "annotations.csv"):
            if not (root / needed).is_file():
                raise FileNotFoundError(f"external set {root}: no {needed}")
        name = root.name
        while name in names:
            name += "_"
        names.add(name)
        out.append(ExternalSet(root, name, folder_folds(root), folder_fingerprint(root)))
    return out


def _provenance(root: Path, split: Any, dataset: str | None, ranker: Any) -> dict[str, Any]:
    generator = root / "generator.json"
    info = ranker.info
    return {
        "data": str(root),
        "generator": json.loads(generator.read_text()) if generator.is_file() else None,
        "split": split.tag,
        "split_path": str(split.path),
        "dataset": dataset,
        "ranker": {
            "trained_on_sets": info.get("roots"),
            "trained_on_scans": None if ranker.trained_on_uids is None else len(ranker.trained_on_uids),
        },
    }


def _fold_line(record: Mapping[str, Any], skipped: bool) -> str:
    test = record.get("test") or {}
    ci = test.get("cpm_ci95")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
    best = record.get("best_val_cpm")
    return (
        f"{record['name']}: train {record['train_folds']} val [{record['val_fold']}] test [{record['test_fold']}]: "
        f"best val CPM {best if best is None else f'{best:.3f}'}, test-fold CPM {test.get('cpm', float('nan')):.3f}"
        f"{ci_text}, {record['minutes']:.1f} min" + (" (finished earlier, skipped)" if skipped else "")
    )


def run_crossval(
    config: Path,
    data: Path,
    folds: str | Sequence[int] = "0-9",
    out: Path | None = None,
    external: Sequence[Path] = (),
    split: Path | None = None,
    dataset: str | None = None,
    final_model: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
    ranker: Path | None = None,
    overrides: Sequence[str] = (),
    report: bool = True,
) -> dict[str, Any]:
    """Cross-validate the classifier of ``config`` over folds of ``data`` (module docstring).

    Args:
        config: the LightningCLI configuration (model, data module settings, trainer).
        data: a LUNA16-layout folder with ``candidates.csv``, ``annotations.csv``,
            ``annotations_excluded.csv`` and ``folds/subsetK.csv``.
        folds: the folds, e.g. ``0-9``, ``0,2,5`` or a list (at least three).
        out: the run folder; default ``$NODULE_CACHE/runs/crossval/<config>-<data>``.
        external: external LUNA16-layout sets for the fold ensemble (and final model).
        split: the split description (default ``configs/splits/default.yaml``).
        dataset: the split data set the folder holds (default: found by its scans).
        final_model: also train one model on every listed fold for the external sets.
        bootstrap: bootstrap resamples of every CI.
        seed: fold ``k`` trains with seed ``seed + k``; the bootstrap uses ``seed``.
        ranker: the candidate ranker model to check (default the shipped one).
        overrides: further LightningCLI arguments of every run (they cannot change the folds).
        report: write ``report.html`` and ``report.md`` at the end.

    Returns:
        The content of ``summary.json``.

    Raises:
        CrossvalError: a guard refused the run (see the module docstring).
    """
    from tqdm.auto import tqdm

    from nodule.candidates.learned import DEFAULT_DETECTOR, detector_trained_on
    from nodule.candidates.ranker import load_ranker
    from nodule.data.splits import load_split

    start = time.perf_counter()
    config = Path(config).expanduser().resolve()
    root = Path(data).expanduser().resolve()
    for path, what in ((config, "configuration"), (root / "candidates.csv", "candidates table")):
        if not path.is_file():
            raise FileNotFoundError(f"no {what} at {path}")
    fold_list = parse_folds(folds)
    plans = plan_folds(fold_list)
    run_dir = (
        Path(out).expanduser().resolve()
        if out is not None
        else cache_dir("runs", "crossval", f"{config.stem}-{root.name}").resolve()
    )

    # ---- guards, before anything trains
    description = load_split(split)
    assignment = folder_folds(root)
    missing = [k for k in fold_list if not assignment.get(k)]
    if missing:
        raise CrossvalError(f"{root}: folds {missing} hold no scan with an image")
    assignment = {k: assignment[k] for k in fold_list}
    name = identify_dataset(root, description, dataset)
    if name is not None:
        check_crossval_roles(description, name, fold_list)
    uids = [u for k in fold_list for u in assignment[k]]
    patient_of = patients_of(uids, description)
    check_fold_separation(plans, assignment, patient_of)
    externals = _external_sets(external)
    model = load_ranker(str(ranker) if ranker is not None else None)
    parts = {"the candidate ranker": model.trained_on_uids}
    if DEFAULT_DETECTOR.is_file():
        parts["the learned candidate detector"] = detector_trained_on()
    for part, seen in parts.items():
        check_ranker(uids, seen, f"the cross-validated data {root}", part)
        for ext in externals:
            check_ranker(ext.seriesuids, seen, f"the external set {ext.root}", part)
    for ext in externals:
        ext_patients = set(patients_of(ext.seriesuids, description).values())
        shared = sorted(ext_patients & set(patient_of.values()))
        if shared:
            raise CrossvalError(f"external set {ext.root} shares patients with {root}: {_some(shared)}")

    run_dir.mkdir(parents=True, exist_ok=True)
    runner = _Runner(config, tuple(overrides), run_dir, root, _logger_settings(config))
    if runner.wandb is not None and runner.wandb.get("offline"):
        # An offline logger asks W&B for offline mode through the environment when it
        # starts; once an earlier wandb.init of this process (e.g. a finished fold's summary
        # in a resumed ablation) has set W&B up, that comes too late and W&B goes online.
        os.environ.setdefault("WANDB_MODE", "offline")
    common = {
        "config": config.read_text(),
        "overrides": list(overrides),
        "data": folder_fingerprint(root),
        "assignment": assignment,
    }
    records: dict[str, dict[str, Any]] = {}
    pooled_parts: list[pd.DataFrame] = []
    main = _main_process()
    progress = tqdm(plans, desc="crossval", unit="fold", disable=not main)
    for plan in progress:
        progress.set_postfix_str(plan.name)
        record, skipped = _run_fold(runner, plan, seed, common, bootstrap, records)
        records[plan.name] = record
        if main:
            pooled_parts.append(read_submission(run_dir / plan.name / PREDICTIONS))
            progress.write(_fold_line(record, skipped))
    progress.close()
    if not main:  # another DDP process: take part in the remaining fits and predictions only
        final_record = _run_final(runner, fold_list, seed, common) if final_model else None
        for ext in externals:
            _run_external(runner, ext, plans, final_record, bootstrap, seed)
        return {}

    pooled = pd.concat(pooled_parts, ignore_index=True)
    write_submission(pooled, run_dir / PREDICTIONS)
    unit = bootstrap_unit_for(root)
    pooled_result = evaluate_scans(pooled, root, uids, bootstrap, seed, unit)

    final: dict[str, Any] | None = None
    if final_model:
        final = _run_final(runner, fold_list, seed, common)
        records["final"] = final
    check_distinct_inits({n: str(r["init_state_sha256"]) for n, r in records.items()})

    external_figures = {
        ext.name: _run_external(runner, ext, plans, final, bootstrap, seed) for ext in externals
    }
    summary = {
        "run_dir": str(run_dir),
        "folds": fold_list,
        "seed": seed,
        "bootstrap": bootstrap,
        "pooled": froc_json(pooled_result),
        "per_fold": [records[p.name] for p in plans],
        "final_model": final,
        "external": external_figures,
        "wall_time_s": time.perf_counter() - start,
        "fold_minutes_total": sum(float(records[p.name]["minutes"]) for p in plans),
        "config": {"path": str(config), "text": common["config"], "overrides": list(overrides)},
        "fold_assignment": {str(k): v for k, v in assignment.items()},
        "provenance": _provenance(root, description, name, model),
        "external_sets": {ext.name: str(ext.root) for ext in externals},
        "versions": software_versions(),
    }
    _write_json_atomic(run_dir / SUMMARY, summary)
    ci = pooled_result.cpm_ci95
    print(
        f"pooled CPM {pooled_result.cpm:.3f}"
        + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {unit} bootstrap)" if ci else "")
        + f" over {pooled_result.n_scans} scans and {pooled_result.n_nodules} nodules -> {run_dir / SUMMARY}"
    )
    if runner.wandb is not None:
        _log_wandb_summary(runner, summary)
    if report:
        from nodule.evaluation.html_report import write_html_report

        paths = write_html_report(run_dir)
        print(f"report: {paths['html']}")
    return summary


def _run_fold(
    runner: _Runner,
    plan: FoldPlan,
    seed: int,
    common: Mapping[str, Any],
    bootstrap: int,
    done: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], bool]:
    """Train, select and predict one fold (or take its finished record)."""
    folder = runner.run_dir / plan.name
    fold_seed = seed + plan.test
    fold_fingerprint = fingerprint({**common, "plan": [plan.test, plan.val, list(plan.train)], "seed": fold_seed})
    previous = _read_json(folder / FOLD_JSON)
    if previous is not None and previous.get("fingerprint") != fold_fingerprint:
        raise CrossvalError(
            f"{folder} holds a fold of another configuration, data or fold assignment "
            f"(fingerprint {previous.get('fingerprint')} != {fold_fingerprint}); use another --out"
        )
    if previous is not None and previous.get("status") == "done" and (folder / PREDICTIONS).is_file():
        return previous, True
    started = time.perf_counter()
    record: dict[str, Any] = {
        "name": plan.name,
        "test_fold": plan.test,
        "val_fold": plan.val,
        "train_folds": list(plan.train),
        "seed": fold_seed,
        "fingerprint": fold_fingerprint,
        "status": "training",
        "minutes": float(previous.get("minutes", 0.0)) if previous else 0.0,
    }
    _write_json_atomic(folder / FOLD_JSON, record)
    checkpoints, hasher, datamodule = runner.fit(plan.name, plan.train, [plan.val], fold_seed)
    lists = getattr(datamodule, "fold_lists", {})
    if lists.get("test") or lists.get("predict") or plan.test in [*lists.get("train", []), *lists.get("val", [])]:
        raise CrossvalError(f"{plan.name}: the fit's data module reached the test fold {plan.test}: {lists}")
    # The model is fixed now: the checkpoint selected on the validation fold.
    best, score = read_best(checkpoints)
    record.update(
        init_state_sha256=hasher.digest,
        best_checkpoint=str(best),
        best_checkpoint_sha256=hashlib.sha256(best.read_bytes()).hexdigest(),
        best_val_cpm=score,
    )
    check_distinct_inits({**{n: str(r["init_state_sha256"]) for n, r in done.items()}, plan.name: str(hasher.digest)})
    predictions = runner.predict(runner.root, [plan.test], best, folder / PREDICTIONS)
    if not _main_process():
        return record, False
    uids = list(common["assignment"][plan.test])
    unit = bootstrap_unit_for(runner.root)
    result = evaluate_scans(predictions, runner.root, uids, bootstrap, seed, unit)
    record.update(
        status="done",
        test=froc_json(result),
        minutes=record["minutes"] + (time.perf_counter() - started) / 60.0,
    )
    _write_json_atomic(folder / FOLD_JSON, record)
    return record, False


def _run_final(runner: _Runner, folds: Sequence[int], seed: int, common: Mapping[str, Any]) -> dict[str, Any]:
    """Train (or take) the final model on every listed fold, no validation."""
    folder = runner.run_dir / "final"
    final_seed = seed + max(folds) + 1  # no fold's seed
    final_fingerprint = fingerprint({**common, "plan": ["final", list(folds)], "seed": final_seed})
    previous = _read_json(folder / FOLD_JSON)
    if previous is not None and previous.get("fingerprint") != final_fingerprint:
        raise CrossvalError(f"{folder} holds a final model of another run; use another --out")
    if previous is not None and previous.get("status") == "done":
        return previous
    started = time.perf_counter()
    record: dict[str, Any] = {
        "name": "final",
        "train_folds": list(folds),
        "val_fold": None,
        "seed": final_seed,
        "fingerprint": final_fingerprint,
        "status": "training",
        "minutes": 0.0,
    }
    _write_json_atomic(folder / FOLD_JSON, record)
    checkpoints, hasher, _ = runner.fit("final", folds, [], final_seed)
    last = checkpoints / "last.ckpt"
    record.update(
        status="done",
        init_state_sha256=hasher.digest,
        best_checkpoint=str(last),
        best_checkpoint_sha256=hashlib.sha256(last.read_bytes()).hexdigest(),
        minutes=(time.perf_counter() - started) / 60.0,
    )
    _write_json_atomic(folder / FOLD_JSON, record)
    return record


def _run_external(
    runner: _Runner,
    ext: ExternalSet,
    plans: Sequence[FoldPlan],
    final: Mapping[str, Any] | None,
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """The fold ensemble's (and the final model's) predictions and figures on an external set."""
    unit = bootstrap_unit_for(ext.root)
    subsets = sorted(ext.folds)
    tables = []
    for plan in plans:
        record = _read_json(runner.run_dir / plan.name / FOLD_JSON) or {}
        path = runner.run_dir / plan.name / "external" / f"{ext.name}-{ext.fingerprint}.csv"
        tables.append(
            read_submission(path)
            if path.is_file()
            else runner.predict(ext.root, subsets, Path(record["best_checkpoint"]), path)
        )
    if not _main_process():
        if final is not None:
            runner.predict(ext.root, subsets, Path(final["best_checkpoint"]), runner.run_dir / "final" / "unused.csv")
        return {}
    folder = runner.run_dir / "external" / ext.name
    folder.mkdir(parents=True, exist_ok=True)
    ensemble = write_submission(ensemble_predictions(tables), folder / PREDICTIONS)
    result = evaluate_scans(read_submission(ensemble), ext.root, ext.seriesuids, bootstrap, seed, unit)
    out: dict[str, Any] = {"root": str(ext.root), "ensemble": froc_json(result), "final_model": None}
    if final is not None:
        path = runner.run_dir / "final" / "external" / f"{ext.name}-{ext.fingerprint}.csv"
        table = read_submission(path) if path.is_file() else runner.predict(
            ext.root, subsets, Path(final["best_checkpoint"]), path
        )
        final_result = evaluate_scans(table, ext.root, ext.seriesuids, bootstrap, seed, unit)
        out["final_model"] = froc_json(final_result)
    return out


def software_versions() -> dict[str, str]:
    """Versions of python, torch, lightning, SimpleITK, numpy and nodule."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for label, dist in (
        ("torch", "torch"),
        ("lightning", "pytorch-lightning"),
        ("SimpleITK", "SimpleITK"),
        ("numpy", "numpy"),
        ("nodule", "nodule"),
    ):
        try:
            out[label] = version(dist)
        except PackageNotFoundError:
            out[label] = "not installed"
    return out


def _log_wandb_summary(runner: _Runner, summary: Mapping[str, Any]) -> None:
    """One ``summary`` run in the group: a table of per-fold CPMs and the pooled CPM."""
    import wandb

    settings = runner.wandb or {}
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    mode = env_mode or ("offline" if settings.get("offline") else "online")
    group = runner.run_dir.name
    run = wandb.init(
        project=settings.get("project"),
        group=group,
        name="summary",
        job_type="summary",
        dir=str(runner.run_dir),
        mode=mode,  # type: ignore[arg-type]
        id=wandb_run_id(runner.run_dir, "summary"),
        resume="allow",
        config={"folds": summary["folds"], "seed": summary["seed"], "bootstrap": summary["bootstrap"]},
    )
    columns: list[str | int] = ["fold", "val_fold", "best_val_cpm", "cpm", "cpm_lo", "cpm_hi", "n_scans", "n_nodules"]
    rows: list[Iterable[Any]] = []
    for record in summary["per_fold"]:
        test = record["test"]
        ci = test.get("cpm_ci95") or [None, None]
        rows.append(
            [record["name"], record["val_fold"], record.get("best_val_cpm"), test["cpm"], *ci, test["n_scans"], test["n_nodules"]]
        )
    pooled = summary["pooled"]
    ci = pooled.get("cpm_ci95") or [None, None]
    rows.append(["pooled", None, None, pooled["cpm"], *ci, pooled["n_scans"], pooled["n_nodules"]])
    run.log({"crossval/folds": wandb.Table(columns=columns, data=rows)})
    run.summary["pooled_cpm"] = pooled["cpm"]
    if ci[0] is not None:
        run.summary["pooled_cpm_ci95"] = list(ci)
    for name, ext in summary["external"].items():
        run.summary[f"external/{name}/ensemble_cpm"] = ext["ensemble"]["cpm"]
    run.finish()
