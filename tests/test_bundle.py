"""The model file format (nodule.models.bundle): round trip, safe loading, the shipped default
model, and one clear line for every file that cannot be used."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nodule.models.bundle import (
    DEFAULT_MODEL,
    FORMAT,
    FORMAT_VERSION,
    RESEARCH_USE_ONLY,
    ModelBundle,
    ModelLoadError,
    load_model,
    save_model,
)
from nodule.models.multistream import MultiStreamNet
from nodule.patches import PatchConfig

TINY_ARGS: dict[str, Any] = {
    "n_views": 9,
    "fusion": "late",
    "channels": [4, 8],
    "kernel_sizes": [3, 3],
    "fc_units": 8,
    "dropout": 0.0,
    "input_size": 16,
    "batch_norm": True,
}
TINY_PATCH = PatchConfig(n_views=9, size_px=16, fov_mm=24.0)


def tiny_net(seed: int = 0, **changes: Any) -> MultiStreamNet:
    torch.manual_seed(seed)
    return MultiStreamNet(**{**TINY_ARGS, **changes}).eval()


def write_tiny(path: Path, threshold: float = 0.3, **metadata: Any) -> Path:
    return save_model(
        net=tiny_net(),
        init_args=TINY_ARGS,
        patch=TINY_PATCH,
        threshold=threshold,
        version="tiny-1",
        config_hash="abc123",
        metadata={"training": {"dataset": "tiny"}, **metadata},
        path=path,
    )


def patches(n: int, patch: PatchConfig, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, patch.n_views, patch.size_px, patch.size_px), dtype=np.float32)


def test_round_trip(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "m" / "model.pt", figures={"test": {"cpm": 0.5, "cpm_ci95": [0.4, 0.6]}})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left
    model = load_model(path)
    assert isinstance(model, ModelBundle)
    assert model.patch == TINY_PATCH and model.threshold == pytest.approx(0.3)
    assert (model.version, model.config_hash, model.path) == ("tiny-1", "abc123", path)
    assert model.init_args == TINY_ARGS
    assert model.metadata["training"] == {"dataset": "tiny"}
    assert model.metadata["figures"]["test"]["cpm_ci95"] == [0.4, 0.6]
    assert model.metadata["research_use"] == RESEARCH_USE_ONLY and model.metadata["created"]
    assert not model.net.training
    x = patches(300, TINY_PATCH)
    with torch.no_grad():
        want = torch.softmax(tiny_net()(torch.from_numpy(x)), -1)[:, 1].numpy()
    got = model.predict(x, batch_size=128)  # three batches, the last one short
    assert got.dtype == np.float32 and got.shape == (300,)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # save again from the loaded bundle: the same model
    again = load_model(model.save(tmp_path / "again.pt"))
    np.testing.assert_array_equal(again.predict(x[:5]), got[:5])


def test_plain_weights_only_file(tmp_path: Path) -> None:
    raw = torch.load(write_tiny(tmp_path / "model.pt"), map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["network"] == {"class_path": "nodule.models.multistream.MultiStreamNet", "init_args": TINY_ARGS}
    assert raw["patch"]["size_px"] == 16 and raw["patch"]["fov_mm"] == 24.0
    assert set(raw["state_dict"]) == set(tiny_net().state_dict())
    assert raw["threshold"] == pytest.approx(0.3)


def test_predict_refuses_other_geometry(tmp_path: Path) -> None:
    model = load_model(write_tiny(tmp_path / "model.pt"))
    with pytest.raises(ValueError, match="takes patches"):
        model.predict(np.zeros((2, 9, 32, 32), np.float32))
    assert model.predict(np.zeros((0, 9, 16, 16), np.float32)).shape == (0,)


def test_save_refuses_what_would_not_load(tmp_path: Path) -> None:
    target = tmp_path / "bad.pt"
    common: dict[str, Any] = {"init_args": TINY_ARGS, "patch": TINY_PATCH, "version": "v", "config_hash": "h", "path": target}
    with pytest.raises(ValueError, match="threshold"):
        save_model(net=tiny_net(), threshold=1.5, **common)
    with pytest.raises(ValueError, match="do not fit"):
        save_model(net=tiny_net(channels=[8, 8]), threshold=0.5, **common)
    with pytest.raises(ValueError, match="views of"):
        save_model(net=tiny_net(), threshold=0.5, **{**common, "patch": PatchConfig(9, 32, 40.0)})
    with pytest.raises(ValueError, match="JSON"):
        save_model(net=tiny_net(), threshold=0.5, metadata={"x": object()}, **common)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_default_model_loads_and_predicts() -> None:
    assert DEFAULT_MODEL.is_file(), f"the shipped model {DEFAULT_MODEL} is missing"
    assert DEFAULT_MODEL.stat().st_size < 5_000_000
    assert (DEFAULT_MODEL.parent / "MODEL_CARD.md").is_file()
    model = load_model()
    assert model.path == DEFAULT_MODEL
    assert 0.0 < model.threshold < 1.0
    assert model.metadata["research_use"] == RESEARCH_USE_ONLY
    # the shipped model is the recipe's: its data sets are configs/default_model.yaml's, which
    # the split gives the CNN, made by the current generator (so the recipe can be remade)
    import yaml

    from nodule.data.phantom import GENERATOR_VERSION
    from nodule.data.splits import load_split
    from nodule.paths import REPO_ROOT

    recipe = yaml.safe_load((REPO_ROOT / "configs" / "default_model.yaml").read_text())["data"]["init_args"]
    training = model.metadata["training"]
    assert training["dataset"] == recipe["dataset"]
    assert list(training["extra_train"]) == recipe["extra_train"]
    assert set(load_split().learners["cnn"]) == {recipe["dataset"], *recipe["extra_train"]}
    assert training["generator"]["version"] == GENERATOR_VERSION
    assert model.metadata["threshold"]["chosen_on"].endswith("[7]")  # the validation subset
    probs = model.predict(patches(20, model.patch))
    assert probs.shape == (20,) and np.all((probs >= 0) & (probs <= 1))


# --------------------------------------------------------------------------- errors


def lightning_like(net: torch.nn.Module, init_args: dict[str, Any], class_path: str = "nodule.models.multistream.MultiStreamNet") -> dict[str, Any]:
    """What ``nodule fit`` stores: the weights under ``net.`` and the network in the hyperparameters."""
    return {
        "epoch": 1,
        "global_step": 10,
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"net": {"class_path": class_path, "init_args": init_args}, "loss": "cross_entropy"},
    }


def write_run_config(run: Path, patch: PatchConfig = TINY_PATCH) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(
        "data:\n  class_path: nodule.training.datamodule.Luna16DataModule\n  init_args:\n    root: x\n"
        f"    patch:\n      n_views: {patch.n_views}\n      size_px: {patch.size_px}\n      fov_mm: {patch.fov_mm}\n"
    )


def test_lightning_checkpoint_loads_with_its_run_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_run_config(run)
    (run / "checkpoints").mkdir()
    ckpt = run / "checkpoints" / "epoch001.ckpt"
    torch.save(lightning_like(tiny_net(), TINY_ARGS), ckpt)
    model = load_model(ckpt)
    assert model.patch == TINY_PATCH and model.threshold == 0.5
    assert "export" in model.metadata["threshold_source"]
    x = patches(4, TINY_PATCH)
    np.testing.assert_allclose(model.predict(x), load_model(write_tiny(tmp_path / "m.pt")).predict(x), atol=1e-6)


def _refused(path: Path, *phrases: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert len(message) < 400, message
    for phrase in phrases:
        assert phrase in message, message
    return message


class Unsafe:
    """A class a safe (weights_only) load must refuse."""


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "folder",
        "empty",
        "truncated",
        "random",
        "text",
        "pickled_object",
        "other_architecture",
        "other_network",
        "not_a_model",
        "newer_format",
        "checkpoint_without_config",
    ],
)
def test_bad_files_give_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.pt"
    good = write_tiny(tmp_path / "good.pt")
    phrases: tuple[str, ...] = ()
    if case == "missing":
        phrases = ("no such model file",)
    elif case == "folder":
        path.mkdir()
        phrases = ("folder",)
    elif case == "empty":
        path.write_bytes(b"")
        phrases = ("empty",)
    elif case == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        phrases = ("truncated",)
    elif case == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        phrases = ("not a PyTorch model file",)
    elif case == "text":
        path.write_text("seriesuid,coordX\n1,2\n")
        phrases = ("not a PyTorch model file",)
    elif case == "pickled_object":
        torch.save({"state_dict": {}, "hook": Unsafe()}, path)
        phrases = ("Unsafe", "weights_only")
    elif case == "other_architecture":  # a checkpoint whose weights are of another network
        write_run_config(tmp_path)
        torch.save(lightning_like(tiny_net(channels=[8, 16]), TINY_ARGS), path)
        phrases = ("do not fit", "shape")
    elif case == "other_network":
        write_run_config(tmp_path)
        torch.save(lightning_like(torch.nn.Linear(3, 2), {"in_features": 3, "out_features": 2}, "torch.nn.Linear"), path)
        phrases = ("torch.nn.Linear", "not supported")
    elif case == "not_a_model":
        torch.save({"weight": torch.zeros(3)}, path)
        phrases = ("neither",)
    elif case == "newer_format":
        raw = torch.load(good, weights_only=True)
        raw["format_version"] = FORMAT_VERSION + 1
        torch.save(raw, path)
        phrases = ("newer",)
    elif case == "checkpoint_without_config":
        torch.save(lightning_like(tiny_net(), TINY_ARGS), path)
        phrases = ("patch configuration", "export")
    _refused(path, *phrases)


def test_bundle_of_another_network_shape(tmp_path: Path) -> None:
    """A model file whose stored arguments and weights disagree is refused, not half-loaded."""
    raw = torch.load(write_tiny(tmp_path / "good.pt"), weights_only=True)
    raw["network"]["init_args"]["fc_units"] = 16
    torch.save(raw, tmp_path / "mixed.pt")
    _refused(tmp_path / "mixed.pt", "do not fit")
    raw["network"]["init_args"]["no_such_argument"] = 1
    torch.save(raw, tmp_path / "unknown.pt")
    _refused(tmp_path / "unknown.pt", "no_such_argument")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "model.pt")
    path.chmod(0)
    _refused(path, "cannot read")
