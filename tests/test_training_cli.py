"""End-to-end tests of ``nodule fit | validate | test | predict`` on a tiny generated LUNA16-layout set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodule.data.luna16 import (
    read_submission,
    write_annotations,
    write_candidates,
    write_excluded,
    write_folds,
    write_seriesuids,
)
from nodule.io import Volume, write_volume

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_tiny_luna16(root: Path, scans_per_fold: int = 2, folds: int = 3, seed: int = 0) -> Path:
    """A LUNA16-layout set of 40 mm cubes of lung (-800 HU) with one or two bright nodules each.

    Each scan gets nodules (annotations), one excluded finding, and candidates: every
    nodule centre shifted by 1 mm, one point on the excluded finding and six random
    negatives, with a ``probability`` and an extra ``detector`` column.
    """
    rng = np.random.default_rng(seed)
    shape = (40, 40, 40)
    zz, yy, xx = np.indices(shape)
    nodules, excluded, candidates, uids = [], [], [], []
    fold_lists: dict[int, list[str]] = {}
    for k in range(folds):
        fold_lists[k] = []
        for j in range(scans_per_fold):
            uid = f"1.2.826.0.1.{seed}.{k}.{j}"
            origin = (-20.0, -20.0, -100.0 + 10 * k)
            array = rng.normal(-800, 20, shape).astype(np.float32)
            centres = [rng.uniform(12, 28, 3) for _ in range(1 + (j % 2))]
            for c in centres:  # voxel (x, y, z); 1 mm voxels
                inside = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2 < 16
                array[inside] = 40.0
                world = c + np.asarray(origin)
                nodules.append([uid, *world, 8.0])
                candidates.append([uid, *np.add(world, (1.0, 0.0, 0.0)), 1, 0.9, "solid"])
            exc = np.add(origin, (8.0, 32.0, 20.0))
            excluded.append([uid, *exc, -1.0])
            candidates.append([uid, *exc, 0, 0.5, "subsolid"])
            for _ in range(6):
                candidates.append([uid, *np.add(origin, rng.uniform(4, 36, 3)), 0, 0.2, "solid"])
            write_volume(
                Volume(array=array.astype(np.int16), spacing=(1.0, 1.0, 1.0), origin=origin),
                root / f"subset{k}" / f"{uid}.mhd",
            )
            fold_lists[k].append(uid)
            uids.append(uid)
    cols = ["seriesuid", "coordX", "coordY", "coordZ"]
    write_annotations(
        pd.DataFrame(nodules, columns=[*cols, "diameter_mm"]), root / "annotations.csv"
    )
    write_excluded(
        pd.DataFrame(excluded, columns=[*cols, "diameter_mm"]), root / "annotations_excluded.csv"
    )
    write_candidates(
        pd.DataFrame(candidates, columns=[*cols, "class", "probability", "detector"]),
        root / "candidates.csv",
    )
    write_seriesuids(root / "seriesuids.csv", uids)
    write_folds(root / "folds", fold_lists)
    return root


def wandb_records(run_dir: Path) -> list[object]:
    """The protobuf records of an offline W&B run's ``.wandb`` file (LevelDB log format)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind in (1, 4):
            record = pb.Record()  # type: ignore[attr-defined]
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            out.append(record)
            pending = b""
    return out


def wandb_contents(run_dir: Path) -> tuple[dict[str, object], dict[str, object], set[str]]:
    """Config, final summary and history keys of an offline run."""
    config: dict[str, object] = {}
    summary: dict[str, object] = {}
    history: set[str] = set()
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")  # type: ignore[attr-defined]
        if kind == "config":
            for item in record.config.update:  # type: ignore[attr-defined]
                if item.key:
                    config[item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:  # type: ignore[attr-defined]
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "history":
            history |= {i.key or "/".join(i.nested_key) for i in record.history.item}  # type: ignore[attr-defined]
    return config, summary, history


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_luna16(tmp_path_factory.mktemp("tiny") / "tiny_luna16")


@pytest.fixture
def in_tmp(tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary folder with W&B offline and its own ``NODULE_CACHE`` (where the
    runs go); ``tiny_luna16`` links to the data set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NODULE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "tiny_luna16").symlink_to(tiny_root)
    return tmp_path


def run(*args: str) -> object:
    from nodule.training.cli import lightning_main

    return lightning_main(list(args))


TINY = str(CONFIGS / "tiny.yaml")


@pytest.mark.parametrize("config", ["tiny.yaml", "quick_cpu.yaml", "default.yaml", "demo.yaml"])
def test_print_config(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--config", str(CONFIGS / config), "--print_config")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: nodule.models.multistream.MultiStreamNet" in printed
    assert "class_path: nodule.training.datamodule.Luna16DataModule" in printed
    assert "monitor: val/cpm" in printed
    assert "offline: true" in printed


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "--model.init_args.loss=focal",
            "--model.init_args.net.init_args.fusion=committee",
            "--model.init_args.net.init_args.shared_weights=false",
            "--model.init_args.scheduler=torch.optim.lr_scheduler.StepLR",
            "--model.init_args.scheduler.init_args.step_size=1",
        ],
        [
            "--model.init_args.scheduler=torch.optim.lr_scheduler.OneCycleLR",
            "--model.init_args.scheduler.init_args.max_lr=0.01",
            "--model.init_args.scheduler_interval=step",
        ],
    ],
    ids=["default", "focal-committee-steplr", "onecycle-total-steps-filled-in"],
)
def test_fast_dev_run(in_tmp: Path, extra: list[str]) -> None:
    from nodule.cli import main

    if not extra:  # through the console entry point
        main(["fit", "--config", TINY, "--trainer.fast_dev_run=1"])
        return
    cli = run("fit", "--config", TINY, "--trainer.fast_dev_run=1", *extra)
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler  # type: ignore[attr-defined]
    if type(scheduler).__name__ == "OneCycleLR":  # total_steps from the trainer
        assert scheduler.total_steps == cli.trainer.estimated_stepping_batches  # type: ignore[attr-defined]
        return
    model = cli.model  # type: ignore[attr-defined]
    assert model.loss_name == "focal" and model.net.fusion == "committee"
    assert not model.net.shared_weights
    assert type(cli.trainer.lr_scheduler_configs[0].scheduler).__name__ == "StepLR"  # type: ignore[attr-defined]


def test_fit_validate_predict_with_wandb(in_tmp: Path) -> None:
    import torch

    from nodule.training.classifier import NoduleClassifier

    cli = run("fit", "--config", TINY)
    best = Path(cli.trainer.checkpoint_callback.best_model_path)  # type: ignore[attr-defined]
    runs = in_tmp / "cache" / "runs" / "tiny"  # ${NODULE_CACHE}/runs/tiny, not the working dir
    assert best.is_file() and best.parent == runs / "checkpoints"
    assert not (in_tmp / "runs").exists()
    checkpoint = torch.load(best, weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["net"]["class_path"].endswith("MultiStreamNet")
    assert "val/cpm" in checkpoint["callbacks"][next(iter(checkpoint["callbacks"]))]["monitor"]

    # The offline W&B run: config, per-epoch metrics, FROC table/plot/PNG, galleries, best checkpoint.
    (run_dir,) = (runs / "wandb").glob("offline-run-*")
    config, summary, history = wandb_contents(run_dir)
    assert config["model"]["init_args"]["net"]["init_args"]["fusion"] == "mixed"  # type: ignore[index]
    assert config["data"]["init_args"]["val_folds"] == [1]  # type: ignore[index]
    for key in ("train/loss_epoch", "train/auroc", "val/loss", "val/auroc", "val/cpm", "epoch"):
        assert key in history, key
    assert (
        summary["best_checkpoint"] == str(best.resolve())
        or Path(str(summary["best_checkpoint"])).resolve() == best.resolve()
    )
    assert 0.0 <= float(summary["best_val_cpm"]) <= 1.0  # type: ignore[arg-type]
    for key in ("val/froc_table/_type", "val/froc_png/_type", "val/false_positives/captions"):
        assert key in summary, key
    assert summary["val/froc_table/ncols"] == 3
    captions = summary["val/false_positives/captions"]
    assert isinstance(captions, list) and captions
    assert all(str(c).startswith("1.2.826.0.1.") and " p=" in str(c) for c in captions)
    media = {p.name.split("_")[0] for p in (run_dir / "files/media/images/val").glob("*.png")}
    assert {"froc", "false", "missed"} <= media
    assert list((run_dir / "files/media/table/val").glob("froc_table_*.table.json"))
    panels = [r for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "config"]  # type: ignore[attr-defined]
    assert any("val/froc_curve" in str(r) for r in panels)  # the wandb.plot.line panel

    # validate and predict from the best checkpoint.
    validated = run(
        "validate", "--config", TINY, "--ckpt_path", str(best), "--trainer.logger=false"
    )
    metrics = validated.trainer.callback_metrics  # type: ignore[attr-defined]
    assert float(metrics["val/cpm"]) == pytest.approx(
        float(checkpoint["callbacks"][next(iter(checkpoint["callbacks"]))]["best_model_score"])
    )
    out = in_tmp / "predictions" / "submission.csv"
    predicted = run(
        "predict",
        "--config",
        TINY,
        "--ckpt_path",
        str(best),
        "--trainer.logger=false",
        f"--submission.output={out}",
    )
    assert isinstance(predicted.model, NoduleClassifier)  # type: ignore[attr-defined]
    submission = read_submission(out)
    candidates = pd.read_csv(in_tmp / "tiny_luna16" / "candidates.csv")
    expected = candidates[candidates["seriesuid"].str.startswith("1.2.826.0.1.0.2.")]
    assert len(submission) == len(expected)
    assert list(submission.columns[:5]) == [
        "seriesuid",
        "coordX",
        "coordY",
        "coordZ",
        "probability",
    ]
    assert {"class", "candidate_probability", "detector"} <= set(submission.columns)
    assert submission["probability"].between(0, 1).all()
    assert set(submission["detector"]) == {"solid", "subsolid"}


def test_datamodule_splits_labels_and_cache(tiny_root: Path, tmp_path: Path) -> None:
    from nodule.patch_cache import CacheIndex
    from nodule.patches import PatchConfig
    from nodule.training.datamodule import Luna16DataModule

    dm = Luna16DataModule(
        tiny_root,
        train_folds=[0],
        val_folds=[1],
        test_folds=[2],
        cache_dir=tmp_path / "cache",
        patch=PatchConfig(size_px=16, fov_mm=24.0),
        batch_size=4,
        progress=False,
    )
    splits = {s: set(dm.split_seriesuids(s)) for s in ("train", "val", "test")}
    assert all(len(v) == 2 for v in splits.values())
    assert not (
        splits["train"] & splits["val"]
        or splits["train"] & splits["test"]
        or splits["val"] & splits["test"]
    )
    dm.prepare_data()
    index = CacheIndex.load(tmp_path / "cache")
    assert set(index.series_uids) == splits["train"] | splits["val"] | splits["test"]
    dm.setup("fit")
    train = dm.split_candidates("train")
    val = dm.split_candidates("val")
    assert not train["on_excluded"].any() and val["on_excluded"].sum() == 2  # one per scan
    # every nodule is a positive twice in training: a candidate and its annotated centre
    assert train["_from_annotations"].sum() == train["label"].sum() / 2
    assert "_from_annotations" not in val.columns
    assert len(dm.datasets["train"]) == len(train) and len(dm.datasets["val"]) == len(val)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 9, 16, 16)
    drawn = dm.datasets["train"].labels[dm.sampler.indices(0)]  # type: ignore[union-attr]
    assert 0.2 < drawn.mean() < 0.8  # balanced although only ~1/5 of the rows are positive
    tables = dm.evaluation_tables("val")
    assert set(tables.seriesuids) == splits["val"] and len(tables.annotations) == 3
