"""The conditional nodule GAN: nets, one manual-optimisation step, the view bank, quality figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodule.evaluation.gan_quality import (
    auroc,
    frechet_distance,
    nearest_training_distance,
    sample_grid,
    two_sample_auroc,
)
from nodule.models.gan import (
    HU_RANGE,
    TEXTURES,
    NoduleDiscriminator,
    NoduleGenerator,
    texture_index,
)
from nodule.patches import PatchConfig
from nodule.training.gan import NoduleGAN, render_cubes
from nodule.training.gan_views import (
    ViewBank,
    blend_views,
    cube_views,
    export_generator,
    generate_view_bank,
    load_generator,
)

S, SPACING = 8, 3.0


def _sphere_cubes(n: int, size: int = S, spacing: float = SPACING) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size) - (size - 1) / 2) * spacing
    r = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    occ = np.stack([np.clip((5.0 + i - r) / spacing, 0, 1) for i in range(n)]).astype(np.float32)
    hu = np.full_like(occ, 20.0)
    return occ, hu


def test_generator_and_discriminator_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    g = NoduleGenerator(cube_size=S, spacing_mm=SPACING, latent_dim=4, channels=8, n_up=1)
    d = NoduleDiscriminator(cube_size=S, spacing_mm=SPACING, channels=4, n_down=1)
    diam = torch.tensor([4.0, 8.0, 12.0])
    tex = torch.tensor([0, 1, 2])
    x = g(torch.randn(3, 4), diam, tex)
    assert x.shape == (3, 2, S, S, S)
    x = x.detach()
    assert float(x[:, 0].min()) >= 0.0 and float(x[:, 0].max()) <= 1.0
    assert HU_RANGE[0] <= float(x[:, 1].min()) and float(x[:, 1].max()) <= HU_RANGE[1]
    assert d(x, diam, tex).shape == (3,)
    assert texture_index("calcified") == 0 and TEXTURES[texture_index("ground-glass")] == "ground-glass"


def _step(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], NoduleGAN]:
    import pytorch_lightning as pl

    pl.seed_everything(seed, verbose=False)
    model = NoduleGAN(cube_size=S, spacing_mm=SPACING, latent_dim=4, g_channels=8, d_channels=4, n_levels=1)
    before_g = {k: v.clone() for k, v in model.generator.state_dict().items()}
    before_d = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    occ, hu = _sphere_cubes(4)
    data = torch.utils.data.TensorDataset(
        torch.from_numpy(np.stack([occ, hu], 1)), torch.tensor([5.0, 6.0, 7.0, 8.0]), torch.tensor([0, 1, 2, 0])
    )
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    return before_g, before_d, model


def test_one_gan_step_changes_both_nets_deterministically() -> None:
    before_g, before_d, model = _step(3)
    changed_g = any(not torch.equal(before_g[k], v) for k, v in model.generator.state_dict().items())
    changed_d = any(
        not torch.equal(before_d[k], v)
        for k, v in model.discriminator.state_dict().items()
        if "weight_orig" in k or k.endswith("bias")
    )
    assert changed_g and changed_d
    _, _, again = _step(3)
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, again.generator.state_dict()[k])


def test_generator_file_round_trip(tmp_path: Path) -> None:
    _, _, model = _step(1)
    ckpt = tmp_path / "gan.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt)
    path = export_generator(ckpt, tmp_path / "generator.pt")
    gen, config = load_generator(path)
    assert config["cube_size"] == S and config["spacing_mm"] == SPACING
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, gen.state_dict()[k])


def test_views_of_one_object_and_view_bank() -> None:
    patch = PatchConfig(n_views=9, size_px=16, fov_mm=24.0)
    occ, hu = _sphere_cubes(2)
    ov, hv = cube_views(occ, hu, SPACING, patch)
    assert ov.shape == hv.shape == (2, 9, 16, 16)
    centre = ov[:, :, 7:9, 7:9].mean(axis=(2, 3))
    assert np.allclose(centre, centre[:, :1], atol=1e-4)  # every view passes through the centre
    assert np.allclose(hv[ov > 0.01], 20.0, atol=1e-2)  # occupancy-weighted HU
    assert float(ov[:, :, 0, 0].max()) == 0.0  # corners outside the nodule

    torch.manual_seed(0)
    g = NoduleGenerator(cube_size=S, spacing_mm=SPACING, latent_dim=4, channels=8, n_up=1)
    bank = generate_view_bank(g, 3, [5.0, 8.0, 10.0], 1, patch, seed=5)
    assert isinstance(bank, ViewBank) and len(bank) == 3
    assert bank.occupancy.shape == bank.hu.shape == (3, 9, 16, 16)
    assert bank.texture.tolist() == [1, 1, 1] and bank.diameter_mm.dtype == np.float32
    again = generate_view_bank(g, 3, [5.0, 8.0, 10.0], 1, patch, seed=5)
    assert np.array_equal(bank.occupancy, again.occupancy)


def test_blend_never_lowers_hu_and_keeps_background_outside() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(-1000, 300, size=(9, 8, 8)).astype(np.int16)
    occ = rng.uniform(0, 1, size=(9, 8, 8)).astype(np.float32)
    occ[:, :2] = 0.0
    hu = rng.uniform(-800, 100, size=(9, 8, 8)).astype(np.float32)
    out = blend_views(base, occ, hu)
    assert out.dtype == np.float32 and out.shape == base.shape
    assert (out >= base - 1e-3).all()
    assert np.array_equal(out[:, :2], base[:, :2].astype(np.float32))
    full = blend_views(base, np.ones_like(occ), hu)
    assert np.allclose(full, np.maximum(base, hu), atol=1e-3)


def test_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 5))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(5.0, rel=1e-6)
    assert frechet_distance(a, 2 * a) > 0.5


def test_nearest_training_distance() -> None:
    rng = np.random.default_rng(0)
    train = rng.uniform(size=(10, 4, 4, 4))
    samples = np.concatenate([train[3:4], train[:1] + 0.5])
    dist = nearest_training_distance(samples, train)
    assert dist[0] == pytest.approx(0.0, abs=1e-6)
    assert dist[1] > 0.1


def test_two_sample_auroc() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((200, 6, 4, 4)), rng.standard_normal((200, 6, 4, 4))
    assert abs(two_sample_auroc(a, b, seed=0, pool=1) - 0.5) < 0.12
    assert two_sample_auroc(a, b + 1.5, seed=0, pool=1) > 0.95
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0


def test_sample_grid_and_render_cubes(tmp_path: Path) -> None:
    from nodule.data.shapes import NoduleShape

    axis = np.arange(15) - 7
    ball = (axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2) <= 36
    ratings = dict(calcification=6, internal_structure=1, sphericity=5, margin=5, lobulation=1,
                   spiculation=1, subtlety=5, malignancy=1)
    shapes = [
        NoduleShape(mask=ball, spacing_mm=1.0, patient_id="P", annotation_id=i, texture=tex,
                    diameter_mm=float((6 * ball.sum() / np.pi) ** (1 / 3)), **ratings)
        for i, tex in enumerate((5, 3, 1))
    ]
    cubes = render_cubes(shapes, 6, S, SPACING, np.random.default_rng(0), max_diameter_mm=14.0)
    assert cubes["occupancy"].shape == (6, S, S, S) and set(cubes["texture"].tolist()) <= {0, 1, 2}
    assert (cubes["occupancy"].sum(axis=(1, 2, 3)) > 0).all()
    pair = np.stack([cubes["occupancy"], cubes["hu"]], 1)
    png = sample_grid(pair, pair, cubes["texture"], cubes["diameter_mm"], tmp_path / "s.png", per_texture=2)
    assert png.exists() and png.stat().st_size > 1000
