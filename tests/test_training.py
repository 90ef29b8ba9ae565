"""Unit tests of nodule.training: labels, folds, balanced sampling, augmentation, losses, submissions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scripts_loader import load_script

from nodule.patches import Augment, PatchConfig
from nodule.training.callbacks import submission_table, views_montage
from nodule.training.classifier import focal_loss
from nodule.training.datamodule import BalancedSampler, CandidatePatches, Luna16DataModule
from nodule.training.labels import LABEL, NODULE_ID, ON_EXCLUDED, label_candidates, training_rows

COLS = ["seriesuid", "coordX", "coordY", "coordZ"]


def test_labels_inside_radius_strict_and_excluded_dropped_from_training() -> None:
    annotations = pd.DataFrame([["a", 0.0, 0.0, 0.0, 10.0]], columns=[*COLS, "diameter_mm"])
    excluded = pd.DataFrame(
        [["a", 50.0, 0.0, 0.0, -1.0], ["a", 0.0, 0.0, 3.0, 4.0]], columns=[*COLS, "diameter_mm"]
    )
    candidates = pd.DataFrame(
        [
            ["a", 4.999, 0.0, 0.0],  # inside the nodule (r = 5)
            ["a", 0.0, 5.0, 0.0],  # on the sphere: not inside (strict)
            ["a", 50.0, 4.9, 0.0],  # on an excluded finding of unknown size (r = 5)
            ["a", 0.0, 0.0, 4.0],  # inside the nodule and an excluded finding: a nodule
            ["b", 0.0, 0.0, 0.0],  # another scan
            ["a", 50.0, 5.1, 0.0],  # beside the excluded finding
        ],
        columns=COLS,
        index=[10, 11, 12, 13, 14, 15],
    )
    out = label_candidates(candidates, annotations, excluded)
    assert list(out.index) == [10, 11, 12, 13, 14, 15]
    assert out[LABEL].tolist() == [1, 0, 0, 1, 0, 0]
    assert out[ON_EXCLUDED].tolist() == [False, False, True, False, False, False]
    assert out[NODULE_ID].tolist() == [0, -1, -1, 0, -1, -1]
    assert list(training_rows(out).index) == [10, 11, 13, 14, 15]
    unlabelled = label_candidates(candidates, None)
    assert unlabelled[LABEL].sum() == 0 and not unlabelled[ON_EXCLUDED].any()


def test_folds_may_serve_one_split_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fold 1"):
        Luna16DataModule(tmp_path, train_folds=[0, 1], val_folds=[1], test_folds=[2])
    with pytest.raises(ValueError, match="fold 0 is in both train and test"):
        Luna16DataModule(tmp_path, train_folds=[0], val_folds=[1], test_folds=[2, 0])
    dm = Luna16DataModule(
        tmp_path, train_folds=[0], val_folds=[1], test_folds=[2], predict_folds=[2, 3]
    )
    assert dm.fold_lists == {"train": [0], "val": [1], "test": [2], "predict": [2, 3]}


def test_balanced_sampler() -> None:
    labels = np.r_[np.ones(5, int), np.zeros(995, int)]
    sampler = BalancedSampler(labels, positive_fraction=0.5, num_samples=4000, seed=3)
    first = list(sampler)
    rows = np.array([r for r, _ in first])
    assert len(first) == len(sampler) == 4000
    assert 0.45 < labels[rows].mean() < 0.55
    assert set(rows[labels[rows] == 1]) == set(range(5))
    assert [d for _, d in first] == list(range(4000))
    second = list(sampler)  # the epoch advances by itself
    assert [d for _, d in second] == list(range(4000, 8000))
    assert [r for r, _ in second] != [r for r, _ in first]
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(BalancedSampler(labels, 0.5, 4000, seed=3)) == first
    only_negatives = BalancedSampler(np.zeros(10, int), 0.5, 100)
    assert {r for r, _ in only_negatives} <= set(range(10))
    with pytest.raises(ValueError):
        BalancedSampler(labels, positive_fraction=1.5)


def _patches(augment: Augment | None, fixed_view_fraction: float = 0.0) -> CandidatePatches:
    rng = np.random.default_rng(0)
    patch = PatchConfig(n_views=9, size_px=8, fov_mm=8.0)
    size = 21
    cube = rng.normal(-500, 300, (1, size, size, size)).astype(np.int16)
    return CandidatePatches(
        patches_hu=rng.normal(-500, 300, (2, 9, 8, 8)).astype(np.int16),
        labels=np.array([1, 0]),
        candidate_ids=np.array([7, 9]),
        cubes=cube,
        cube_rows=np.array([0, -1]),
        cube_spacing_mm=1.0,
        patch=patch,
        augment=augment,
        seed=5,
        fixed_view_fraction=fixed_view_fraction,
    )


def test_candidate_patches_augment_with_seeded_draws() -> None:
    data = _patches(Augment(noise_hu=5.0))
    fixed = data[0]
    assert fixed["image"].shape == (9, 8, 8) and fixed["image"].dtype == torch.float32
    assert int(fixed["label"]) == 1 and int(fixed["candidate_id"]) == 7
    assert torch.equal(data[0]["image"], fixed["image"])  # a plain index: the fixed views
    a, b, c = data[(0, 1)]["image"], data[(0, 1)]["image"], data[(0, 2)]["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)  # same draw, same planes
    assert not torch.equal(a, fixed["image"])
    negative = data[(1, 3)]["image"]  # no cube: flips and noise of the fixed views
    assert (
        negative.shape == (9, 8, 8) and 0.0 <= float(negative.min()) <= float(negative.max()) <= 1.0
    )
    assert torch.equal(_patches(None)[(0, 1)]["image"], fixed["image"])
    plain = Augment(flip=False, noise_hu=0.0)
    assert torch.equal(_patches(plain, 1.0)[(0, 1)]["image"], fixed["image"])  # fixed views
    mixed = _patches(plain, 0.5)
    same = [torch.equal(mixed[(0, d)]["image"], fixed["image"]) for d in range(40)]
    assert 5 < sum(same) < 35  # about half of the draws of the positive use its fixed views
    with pytest.raises(ValueError):
        _patches(plain, 1.5)


def test_focal_loss() -> None:
    logits = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    target = torch.arange(16) % 2
    ce = F.cross_entropy(logits, target)
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), ce)
    assert focal_loss(logits, target, gamma=2.0) < ce
    assert torch.allclose(focal_loss(logits, target, 0.0, alpha=0.5), ce / 2)


def test_submission_table_keeps_extra_columns() -> None:
    candidates = pd.DataFrame(
        {
            "seriesuid": ["a", "a", "b"],
            "coordX": [1.0, 2.0, 3.0],
            "coordY": [0.0, 0.0, 0.0],
            "coordZ": [0.0, 0.0, 0.0],
            "class": [1, 0, 0],
            "probability": [0.9, 0.1, 0.2],
            "detector": ["solid", "solid", "subsolid"],
            LABEL: [1, 0, 0],
            ON_EXCLUDED: [False, False, False],
            NODULE_ID: [0, -1, -1],
        },
        index=pd.Index([4, 5, 6], name="candidate_id"),
    )
    table = submission_table(candidates, pd.Series([0.3, 0.7], index=[6, 4]))
    assert list(table.columns) == [
        *COLS,
        "probability",
        "class",
        "candidate_probability",
        "detector",
    ]
    assert table["coordX"].tolist() == [1.0, 3.0]
    assert table["probability"].tolist() == [0.7, 0.3]
    assert table["candidate_probability"].tolist() == [0.9, 0.2]


def test_views_montage() -> None:
    image = views_montage(np.ones((9, 4, 5), np.float32))
    assert image.shape == (3 * 6 - 2, 3 * 7 - 2) and image.dtype == np.uint8
    assert image.max() == 255 and image[4, 0] == 0  # the gap between rows


def test_wandb_mode_overrides_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from jsonargparse import Namespace

    from nodule.training.cli import _respect_wandb_mode

    def config() -> Namespace:
        logger = Namespace(
            class_path="pytorch_lightning.loggers.WandbLogger", init_args=Namespace(offline=True)
        )
        return Namespace(trainer=Namespace(logger=logger))

    monkeypatch.setenv("WANDB_MODE", "online")
    online = config()
    _respect_wandb_mode(online)
    assert online.trainer.logger.init_args.offline is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    offline = config()
    _respect_wandb_mode(offline)
    assert offline.trainer.logger.init_args.offline is True
    monkeypatch.delenv("WANDB_MODE")
    unset = config()
    _respect_wandb_mode(unset)
    assert unset.trainer.logger.init_args.offline is True


def test_read_candidate_table_accepts_both_formats(tmp_path: Path) -> None:
    from nodule.training.datamodule import read_candidate_table

    rows = "a,1.0,2.0,3.0,{},solid\n"
    (tmp_path / "luna.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,class,detector\n" + rows.format(1)
    )
    (tmp_path / "sub.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,probability,detector\n" + rows.format(0.5)
    )
    luna = read_candidate_table(tmp_path / "luna.csv")
    sub = read_candidate_table(tmp_path / "sub.csv")
    assert luna["class"].tolist() == [1] and sub["probability"].tolist() == [0.5]
    assert luna["detector"].tolist() == sub["detector"].tolist() == ["solid"]
    with pytest.raises(FileNotFoundError):
        read_candidate_table(tmp_path / "none.csv")


def test_config_paths_expand_env_and_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from jsonargparse import Namespace

    from nodule.paths import cache_dir
    from nodule.training.cli import expand_config_paths, expand_path

    monkeypatch.setenv("NODULE_CACHE", str(tmp_path / "cache"))
    assert expand_path("${NODULE_CACHE}/runs/x") == str(tmp_path / "cache/runs/x")
    assert expand_path("$NODULE_CACHE/runs") == str(tmp_path / "cache/runs")
    assert expand_path("~/a") == str(Path.home() / "a")
    assert expand_path("runs/x") == "runs/x"  # explicit relative paths are kept
    assert expand_path("${NO_SUCH_VARIABLE_XYZ}/a") == "${NO_SUCH_VARIABLE_XYZ}/a"
    monkeypatch.delenv("NODULE_CACHE")
    assert expand_path("${NODULE_CACHE}/runs") == str(cache_dir() / "runs")
    monkeypatch.setenv("NODULE_CACHE", str(tmp_path / "cache"))

    logger = Namespace(
        class_path="pytorch_lightning.loggers.WandbLogger",
        init_args=Namespace(save_dir="${NODULE_CACHE}/runs/q", offline=True),
    )
    config = Namespace(
        trainer=Namespace(default_root_dir="${NODULE_CACHE}/runs/q", logger=[logger]),
        checkpoint=Namespace(dirpath="~/ckpt", filename="epoch{epoch:03d}"),
        submission=Namespace(output=None),
        data=Namespace(init_args=Namespace(root=Path("${NODULE_CACHE}/set"), cache_dir=None)),
    )
    expand_config_paths(config)
    assert config.trainer.default_root_dir == str(tmp_path / "cache/runs/q")
    assert config.trainer.logger[0].init_args.save_dir == str(tmp_path / "cache/runs/q")
    assert config.checkpoint.dirpath == str(Path.home() / "ckpt")
    assert config.checkpoint.filename == "epoch{epoch:03d}"
    assert config.submission.output is None and config.data.init_args.cache_dir is None
    assert config.data.init_args.root == tmp_path / "cache/set"


def test_scheduler_gets_run_length_when_not_configured() -> None:
    import functools

    from nodule.training.classifier import needs_total_steps

    def make(cls: type, **kwargs: object) -> functools.partial[object]:
        return functools.partial(lambda c, *a, **k: c(*a, **k), cls, **kwargs)

    one_cycle = torch.optim.lr_scheduler.OneCycleLR
    assert needs_total_steps(make(one_cycle, max_lr=0.01))
    assert not needs_total_steps(make(one_cycle, max_lr=0.01, total_steps=10))
    assert not needs_total_steps(make(one_cycle, max_lr=0.01, epochs=2, steps_per_epoch=3))
    assert not needs_total_steps(make(torch.optim.lr_scheduler.StepLR, step_size=1))
    assert not needs_total_steps(torch.optim.lr_scheduler.StepLR)


# --------------------------------------------------------------------------- stale state


def write_small_set(root: Path, annotate: bool = True, uids: Sequence[str] = ("1.2.3.0", "1.2.3.1")) -> Path:
    """Two 24 mm scans (folds 0 and 1), each with one bright nodule and three candidates."""
    from nodule.data.luna16 import write_annotations, write_candidates, write_folds
    from nodule.io import Volume, write_volume

    rng = np.random.default_rng(0)
    nodules, candidates = [], []
    for k, uid in enumerate(uids):
        array = rng.normal(-800, 20, (24, 24, 24)).astype(np.int16)
        array[10:14, 10:14, 10:14] = 40
        write_volume(Volume(array=array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)), root / f"subset{k}" / f"{uid}.mhd")
        nodules.append([uid, 11.5, 11.5, 11.5, 6.0])
        candidates += [[uid, 11.5, 11.5, 11.5, 1], [uid, 5.0, 5.0, 5.0, 0], [uid, 18.0, 6.0, 12.0, 0]]
        write_folds(root / "folds", {k: [uid]})
    if annotate:
        write_annotations(pd.DataFrame(nodules, columns=[*COLS, "diameter_mm"]), root / "annotations.csv")
    write_candidates(pd.DataFrame(candidates, columns=[*COLS, "class"]), root / "candidates.csv")
    return root


def small_module(root: Path, cache: Path, **kwargs: object) -> Luna16DataModule:
    folds = {"train_folds": [0], "val_folds": [1]} | kwargs
    return Luna16DataModule(
        root,
        cache_dir=cache,
        patch=PatchConfig(n_views=3, size_px=8, fov_mm=12.0),
        augmentation=None,
        progress=False,
        **folds,  # type: ignore[arg-type]
    )


def test_default_cache_dir_depends_on_views_via_cube(tmp_path: Path) -> None:
    from dataclasses import replace

    dm = Luna16DataModule(tmp_path, train_folds=[0])
    cube = dm._default_cache_dir()
    dm.cache_config = replace(dm.cache_config, views_via_cube=False)
    assert dm._default_cache_dir() != cube
    dm.cache_config = replace(dm.cache_config, views_via_cube=True, compress=True)
    assert dm._default_cache_dir() == cube  # compression does not shape the arrays


def test_explicit_annotations_path_must_exist(tmp_path: Path) -> None:
    root = write_small_set(tmp_path / "set")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        small_module(root, tmp_path / "cache", annotations=tmp_path / "nowhere.csv")


def test_fit_without_positives_names_the_annotations(tmp_path: Path) -> None:
    root = write_small_set(tmp_path / "set", annotate=False)
    # no annotations.csv at all: fine to predict, not to fit
    dm = small_module(root, tmp_path / "cache")
    dm.prepare_data()
    dm.setup("predict")
    with pytest.raises(ValueError, match="no positives") as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(root / "annotations.csv") in message and "0 rows" in message and "does not exist" in message
    assert "training folds [0]" in message and "3 training candidates" in message
    # annotations of other scans only: no positive in training either
    other = tmp_path / "other.csv"
    pd.DataFrame([["9.9.9", 1.0, 1.0, 1.0, 6.0]], columns=[*COLS, "diameter_mm"]).to_csv(other, index=False)
    dm = small_module(root, tmp_path / "cache", annotations=other)
    with pytest.raises(ValueError, match=r"other.csv \(1 rows; 0 on the training scans\)"):
        dm.setup("fit")
    # with the annotations, fitting is set up
    write_small_set(root)
    dm = small_module(root, tmp_path / "cache2")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.datasets["train"].labels.sum() == 2  # the candidate and the annotated centre


class _PredictTrainer:
    """What SubmissionWriter reads of a trainer."""

    is_global_zero = True

    def __init__(self, root: Path, candidates: pd.DataFrame) -> None:
        self.default_root_dir = str(root)
        tables = type("Tables", (), {"candidates": candidates})()
        self.datamodule = type("DM", (), {"evaluation_tables": lambda self, split: tables})()


def test_submission_writer_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nodule.data.luna16 import read_submission
    from nodule.training import callbacks

    candidates = pd.DataFrame(
        {"seriesuid": ["a"] * 4, "coordX": [1.0, 2.0, 3.0, 4.0], "coordY": 0.0, "coordZ": 0.0},
        index=pd.Index([0, 1, 2, 3], name="candidate_id"),
    )
    trainer = _PredictTrainer(tmp_path, candidates)
    output = tmp_path / "submission.csv"

    def predict(writer: callbacks.SubmissionWriter) -> None:
        writer.on_predict_epoch_start(trainer, None)  # type: ignore[arg-type]
        prediction = {"candidate_id": torch.arange(4), "probability": torch.tensor([0.1, 0.9, 0.5, 0.2])}
        writer.write_on_batch_end(trainer, None, prediction, None, None, 0, 0)  # type: ignore[arg-type]
        writer.on_predict_epoch_end(trainer, None)  # type: ignore[arg-type]

    real_write = callbacks.write_submission

    def half_then_fail(table: pd.DataFrame, path: Path) -> Path:
        real_write(table.iloc[:2], path)  # what an interrupted write leaves
        raise OSError("disk full")

    monkeypatch.setattr(callbacks, "write_submission", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        predict(callbacks.SubmissionWriter(output))
    assert not output.exists() and not list(tmp_path.glob("*submission*"))
    monkeypatch.setattr(callbacks, "write_submission", real_write)
    writer = callbacks.SubmissionWriter(output)
    predict(writer)
    assert writer.written == output and len(read_submission(output)) == 4


def test_train_synth_redoes_partial_submissions_and_refuses_other_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from nodule.data.luna16 import write_folds

    script = load_script("train_synth")
    root = tmp_path / "set"
    write_folds(root / "folds", {8: ["a"], 9: ["b"]})
    config = tmp_path / "config.yaml"
    config.write_text("seed_everything: 0\n")
    calls: list[str] = []

    def nodule(args: list[str]) -> None:
        calls.append(args[0])
        for arg in args:
            if arg.startswith("--submission.output="):
                Path(arg.split("=", 1)[1]).write_text("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\n")

    monkeypatch.setattr(script, "_nodule", nodule)
    monkeypatch.setattr(script, "best_checkpoint", lambda folder: folder / "best.ckpt")
    monkeypatch.setattr(script, "_evaluate", lambda *a: {"cpm": 0.5})

    def args(**overrides: object) -> argparse.Namespace:
        values: dict[str, object] = dict(
            root=root, dataset=None, config=config, out=tmp_path / "out", override=[], external=[], test_folds=[8, 9], bootstrap=0
        )
        return argparse.Namespace(**{**values, **overrides})

    script.run_variant(args(), "late")
    assert calls == ["fit", "predict"]
    run = tmp_path / "out" / "late"
    sub = run / "test_submission.csv"
    calls.clear()
    script.run_variant(args(), "late")  # everything done: nothing runs again
    assert calls == []
    # a half-written submission (as the old in-place writer left) is not taken for done
    sub.write_text("seriesuid,coordX,coordY,coordZ,probability\na,1,2")
    script.run_variant(args(), "late")
    assert calls == ["predict"] and script.is_done(sub)
    (run / "test_submission.csv.done").unlink()
    assert not script.is_done(sub)
    # the run folder records its fingerprint; other overrides, data or config are refused
    with pytest.raises(ValueError, match=r"overrides: \[\] -> \[\"--trainer.max_epochs=3\"\]"):
        script.run_variant(args(override=["--trainer.max_epochs=3"]), "late")
    with pytest.raises(ValueError, match="root: "):
        script.run_variant(args(root=tmp_path / "other"), "late")
    config.write_text("seed_everything: 1\n")
    with pytest.raises(ValueError, match=re.escape(str(run))):
        script.run_variant(args(), "late")
    # a run folder of unknown origin (no run.json) is refused too
    (tmp_path / "out" / "mixed").mkdir()
    (tmp_path / "out" / "mixed" / "fit.done").write_text("")
    with pytest.raises(ValueError, match=r"no run\.json"):
        script.run_variant(args(), "mixed")


def test_ranker_training_scans_never_validate_or_test(tmp_path: Path) -> None:
    """The candidate ranker shipped before the split description was trained on the scans
    that then validated and tested the CNN: a ranker that records a validation scan of the
    data set is refused before any patch is made; one trained elsewhere is fine."""
    import json

    from nodule.candidates.ranker import DEFAULT_RANKER

    root = write_small_set(tmp_path / "set")
    doc = json.loads(DEFAULT_RANKER.read_text())
    for name, uids in (("leaky", ["1.2.3.1"]), ("clean", ["9.9.9"])):
        doc["info"]["trained_on_uids"] = uids
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    leaky = small_module(root, tmp_path / "cache", ranker=tmp_path / "leaky.json")
    with pytest.raises(ValueError, match=r"trained on 1 val scan\(s\).*1\.2\.3\.1"):
        leaky.prepare_data()
    # the same scan in the training folds is no leak (both learned parts may train on it)
    small_module(root, tmp_path / "cache", ranker=tmp_path / "leaky.json", train_folds=[1], val_folds=[0]).tables()
    small_module(root, tmp_path / "cache", ranker=tmp_path / "clean.json").tables()


def test_split_data_set_gives_the_folds_and_must_be_its_scans(tmp_path: Path) -> None:
    """``dataset: NAME`` takes the folds from the split's roles and refuses a folder that is
    not that data set (a wrong path) or fold lists that disagree."""
    import yaml

    from nodule.data.phantom import default_series_uid
    from nodule.data.splits import SplitError

    split = tmp_path / "split.yaml"
    split.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "version": 1,
                "datasets": {"tiny": {"synth": {"seed": 1, "scans": 3, "preset": "small"}, "roles": {"train": [0], "val": [1], "test": [2]}}},
            }
        )
    )
    dm = Luna16DataModule(tmp_path / "x", dataset="tiny", split_file=split, predict_folds=[2])
    assert dm.fold_lists == {"train": [0], "val": [1], "test": [2], "predict": [2]}
    with pytest.raises(ValueError, match=r"val_folds \[2\] differ from the val subsets \[1\]"):
        Luna16DataModule(tmp_path / "x", dataset="tiny", split_file=split, val_folds=[2])
    root = write_small_set(tmp_path / "set")  # scans 1.2.3.0 and 1.2.3.1, not the data set's
    with pytest.raises(SplitError, match="is not data set tiny"):
        small_module(root, tmp_path / "cache", train_folds=None, val_folds=None, dataset="tiny", split_file=split).tables()
    assert default_series_uid(1, 0, "small") not in {"1.2.3.0", "1.2.3.1"}


def test_extra_training_sets_join_training_only(tmp_path: Path) -> None:
    """``extra_train`` adds a split data set's train subsets (their own candidates, labels and
    excluded findings) to training; validation stays the root's; a set that is not the split's
    data set, or one with test subsets, is refused."""
    import yaml

    from nodule.data.insert import derived_uid
    from nodule.data.splits import SplitError

    split = tmp_path / "split.yaml"
    split.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "version": 1,
                "real_scans": {"bg": {"side": "train", "seriesuid": "9.9", "patient": "P"}},
                "datasets": {
                    "extra": {"insert": {"background": "bg", "seed": 0, "scans": 2, "shapes": "synth"}, "roles": {"train": "all"}},
                    "mixed": {"insert": {"background": "bg", "seed": 1, "scans": 2, "shapes": "synth"}, "roles": {"train": [0], "test": [1]}},
                },
            }
        )
    )
    root = write_small_set(tmp_path / "set")
    uids = [derived_uid("nodule-insert", "9.9", 0, i) for i in range(2)]
    extra = write_small_set(tmp_path / "extra", uids=uids)
    dm = small_module(root, tmp_path / "cache", extra_train=["extra"], extra_roots=[extra], split_file=split)
    assert dm.fold_lists["train"] == [0, *range(10, 20)]  # "all": subsets 0-9 -> folds 10-19
    assert set(dm.split_seriesuids("train")) == {"1.2.3.0", *uids}
    assert dm.split_seriesuids("val") == ["1.2.3.1"]
    train = dm.split_candidates("train")
    assert set(train["seriesuid"]) == {"1.2.3.0", *uids}
    assert int((train[LABEL] == 1).sum()) == 3 * 2  # each scan: its candidate on the nodule + the annotated centre
    assert not train.index.duplicated().any()
    # the root's candidate ids are unchanged by the extra sets (caches stay valid)
    plain = small_module(root, tmp_path / "cache0", split_file=split)
    pd.testing.assert_frame_equal(plain.split_candidates("val"), dm.split_candidates("val"))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == len(train)
    wrong = write_small_set(tmp_path / "wrong")
    with pytest.raises(SplitError, match="is not data set extra"):
        small_module(root, tmp_path / "c2", extra_train=["extra"], extra_roots=[wrong], split_file=split).tables()
    with pytest.raises(ValueError, match=r"extra_train data set mixed .* has \['test'\] subsets"):
        small_module(root, tmp_path / "c3", extra_train=["mixed"], extra_roots=[extra], split_file=split)
