"""Semi-supervision: the labelled fraction, hidden labels, pseudo-label rounds (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from test_training import write_small_set

from nodule.data.luna16 import write_folds
from nodule.models.multistream import MultiStreamNet
from nodule.patches import PatchConfig
from nodule.training.classifier import NoduleClassifier
from nodule.training.datamodule import FROM_ANNOTATIONS, Luna16DataModule
from nodule.training.label_fraction import labelled_scans
from nodule.training.labels import LABEL
from nodule.training.pseudo_labels import (
    PseudoLabelling,
    pseudo_label_quality,
    ramp_weight,
    select_pseudo_labels,
)

UIDS = [f"1.2.3.{i}" for i in range(6)]
FOLDS = {0: UIDS[:4], 1: UIDS[4:]}  # fold 0 trains (4 scans), fold 1 validates (2)


def _set(root: Path) -> Path:
    write_small_set(root, uids=UIDS)
    for f in (root / "folds").glob("*.csv"):
        f.unlink()
    write_folds(root / "folds", FOLDS)
    return root


def _module(root: Path, cache: Path, **kwargs: object) -> Luna16DataModule:
    return Luna16DataModule(
        root,
        cache_dir=cache,
        train_folds=[0],
        val_folds=[1],
        patch=PatchConfig(n_views=3, size_px=8, fov_mm=12.0),
        progress=False,
        batch_size=8,
        samples_per_epoch=16,
        **kwargs,  # type: ignore[arg-type]
    )


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], max_epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "run",
        num_sanity_val_steps=0,
    )


def _tiny_net() -> MultiStreamNet:
    return MultiStreamNet(n_views=3, channels=(4,), kernel_sizes=(3,), fc_units=4, dropout=0.0, input_size=8)


def test_labelled_scans_per_fold_seeded_and_stratified() -> None:
    folds = {0: [f"a{i}" for i in range(10)], 1: [f"b{i}" for i in range(10)], 2: ["c0", "c1"]}
    nodular = {"a7", "b3", "c1"}
    chosen = labelled_scans(folds, nodular, 0.1, seed=3)
    assert chosen == labelled_scans(folds, nodular, 0.1, seed=3)  # seeded
    for _fold, scans in folds.items():
        mine = chosen & set(scans)
        assert len(mine) == 1 and mine <= nodular  # one scan each, one with a nodule
    assert len(labelled_scans(folds, nodular, 0.25, seed=3) & set(folds[0])) == 2  # round(2.5) = 2
    assert labelled_scans(folds, nodular, 1.0) == {u for s in folds.values() for u in s}
    # a fold's choice does not depend on the other folds
    assert labelled_scans({0: folds[0]}, nodular, 0.3, 5) == labelled_scans(folds, nodular, 0.3, 5) & set(folds[0])
    with pytest.raises(ValueError, match="label_fraction"):
        labelled_scans(folds, nodular, 0.0)


def test_hidden_labels_never_reach_training(tmp_path: Path) -> None:
    root = _set(tmp_path / "set")
    dm = _module(root, tmp_path / "cache", label_fraction=0.5, label_seed=1)
    train, unlabelled = set(dm.split_seriesuids("train")), set(dm.split_seriesuids("unlabelled"))
    assert len(train) == 2 and len(unlabelled) == 2 and train | unlabelled == set(FOLDS[0])
    assert dm.split_seriesuids("val") == FOLDS[1]  # validation keeps its labels
    rows = dm.split_candidates("train")
    assert set(rows["seriesuid"]) == train  # no row of a hidden scan, annotated centres included
    hidden_rows = dm.split_candidates("unlabelled")
    assert set(hidden_rows["seriesuid"]) == unlabelled and len(hidden_rows) == 3 * 2
    assert (hidden_rows[LABEL] == -1).all() and FROM_ANNOTATIONS not in hidden_rows.columns
    assert not {"on_excluded", "nodule_id"} & set(hidden_rows.columns)
    dm.prepare_data()
    dm.setup("fit")
    u = dm.datasets["unlabelled"]
    assert (u.labels == -1).all() and (u.cube_rows == -1).all() and len(u.cubes) == 0
    assert not set(dm.datasets["train"].candidate_ids) & set(u.candidate_ids)
    # the hidden labels exist (for pseudo-label quality only)
    assert dm.hidden_labels(u.candidate_ids).sum() == 2
    # pseudo-labels enter training with their own labels, never the hidden ones
    ids = u.candidate_ids
    wrong = 1 - dm.hidden_labels(ids).to_numpy()
    before = len(dm.datasets["train"])
    dm.train_dataloader()
    dm.set_pseudo_labels(pd.DataFrame({"candidate_id": ids, "pseudo_label": wrong, "weight": 0.5}))
    t = dm.datasets["train"]
    assert len(t) == before + len(ids) and t.pseudo[before:].all() and not t.pseudo[:before].any()
    np.testing.assert_array_equal(t.labels[before:], wrong)
    assert (t.cube_rows[before:] == -1).all() and np.allclose(t.weights[before:], 0.5)
    assert dm.sampler is not None and len(dm.sampler.labels) == len(t)
    item = t[(before, 7)]
    assert item["pseudo"] and float(item["weight"]) == 0.5
    # new pseudo-labels replace the old ones
    dm.set_pseudo_labels(pd.DataFrame({"candidate_id": ids[:1], "pseudo_label": [1], "weight": 1.0}))
    assert len(dm.datasets["train"]) == before + 1
    # the same cache serves every labelled fraction: no scan file is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")}
    _module(root, tmp_path / "cache", label_fraction=1.0).prepare_data()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")} == stamps


def test_select_pseudo_labels_threshold_rank_and_balance() -> None:
    scores = pd.DataFrame(
        {
            "candidate_id": range(8),
            "seriesuid": ["a"] * 4 + ["b"] * 4,
            "probability": [0.95, 0.5, 0.05, 0.01, 0.92, 0.3, 0.08, 0.2],
        }
    )
    t = select_pseudo_labels(scores, "threshold", 0.9, 0.1)
    assert dict(t["pseudo_label"]) == {0: 1, 2: 0, 3: 0, 4: 1, 6: 0}
    assert (t["weight"] == 1.0).all()
    r = select_pseudo_labels(scores, "rank", 0.9, 0.25, top_k=1, bottom_k=1)
    assert dict(r["pseudo_label"]) == {0: 1, 3: 0, 4: 1, 6: 0}
    capped = select_pseudo_labels(scores, "threshold", 0.9, 0.1, max_negatives_per_positive=0.5)
    assert dict(capped["pseudo_label"]) == {0: 1, 4: 1, 3: 0}  # the most confident negative
    w = select_pseudo_labels(scores, "threshold", 0.9, 0.1, confidence_weighting=True)
    assert w.loc[0, "weight"] == pytest.approx(0.95) and w.loc[3, "weight"] == pytest.approx(0.99)
    # class-balanced by the labelled prior: 0.25 * 8 = 2 expected positives, half of them taken
    pr = select_pseudo_labels(scores, "prior", 0.9, 0.1, positive_prior=0.25, prior_share=0.5)
    assert dict(pr["pseudo_label"]) == {0: 1, 2: 0, 3: 0, 6: 0}
    pr = select_pseudo_labels(scores, "prior", 0.9, 0.1, positive_prior=0.5, prior_share=1.0)
    assert dict(pr["pseudo_label"]) == {0: 1, 4: 1, 1: 1, 5: 1, 2: 0, 3: 0, 6: 0}  # p 0.3 too
    with pytest.raises(ValueError, match="positive_prior"):
        select_pseudo_labels(scores, "prior")
    hidden = pd.Series([1, 0, 0, 0, 0, 1, 0, 0], index=range(8))
    q = pseudo_label_quality(t, hidden)
    assert q["n_positive"] == 2 and q["precision_positive"] == 0.5 and q["recall_positive"] == 0.5
    assert q["precision_negative"] == 1.0 and q["recall_negative"] == pytest.approx(3 / 6)
    assert [ramp_weight(e, 2, 2, 0.8) for e in range(5)] == [0.0, 0.0, 0.4, 0.8, 0.8]


def test_pseudo_label_rounds_in_a_fit_and_resume(tmp_path: Path) -> None:
    root = _set(tmp_path / "set")
    dm = _module(root, tmp_path / "cache", label_fraction=0.5, label_seed=1)
    torch.manual_seed(0)
    model = NoduleClassifier(net=_tiny_net(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    callback = PseudoLabelling(
        rounds=2, first_epoch=1, epochs_per_round=1, positive_threshold=0.5, negative_threshold=0.49, ramp_epochs=2
    )
    trainer = _trainer(tmp_path, [callback], max_epochs=3)
    trainer.fit(model, datamodule=dm)
    rounds = json.loads((tmp_path / "run" / "pseudo_labels" / "rounds.json").read_text())
    assert [r["round"] for r in rounds["rounds"]] == [0, 1] and [r["epoch"] for r in rounds["rounds"]] == [1, 2]
    first = rounds["rounds"][0]
    assert first["n_unlabelled"] == 6 and first["n_positive"] + first["n_negative"] == 6  # thresholds 0.5/0.49
    assert first["n_hidden_positive"] == 2 and rounds["teacher_val_cpm"] is not None
    assert all(r["val_cpm"] is not None for r in rounds["rounds"])
    table = pd.read_csv(tmp_path / "run" / "pseudo_labels" / "round_1.csv")
    assert {"candidate_id", "probability", "pseudo_label", "weight"} <= set(table.columns)
    assert model.pseudo_label_weight == 1.0  # epoch 2: ramp 2/2
    assert dm.datasets["train"].pseudo.sum() == 6
    # the state goes into a checkpoint and back
    state = callback.state_dict()
    again = PseudoLabelling(rounds=2, first_epoch=1, epochs_per_round=1)
    again.load_state_dict(state)
    assert len(again.records) == 2 and again.current is not None
    pd.testing.assert_frame_equal(again.current, callback.current, check_dtype=False)
    assert again.round_starting_at(1) == 0 and again.round_starting_at(3) is None


def test_pseudo_labelling_needs_unlabelled_candidates(tmp_path: Path) -> None:
    root = _set(tmp_path / "set")
    dm = _module(root, tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    assert "unlabelled" not in dm.datasets
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.datamodule = dm  # type: ignore[misc]
    with pytest.raises(ValueError, match="no unlabelled candidates"):
        PseudoLabelling().score(trainer, NoduleClassifier(net=_tiny_net()))


def test_gan_positives_replace_a_fraction_of_positive_draws() -> None:
    from nodule.patches import Augment
    from nodule.training.datamodule import CandidatePatches, GanPositives
    from nodule.training.gan_views import ViewBank

    patch = PatchConfig(n_views=3, size_px=8, fov_mm=12.0)
    patches = np.full((4, 3, 8, 8), -800, np.int16)  # rows 0-1 positives, 2-3 negatives
    occupancy = np.zeros((1, 3, 8, 8), np.float32)
    occupancy[:, :, 3:5, 3:5] = 1.0
    bank = ViewBank(occupancy, np.full_like(occupancy, 40.0), np.array([5.0], np.float32), np.array([0]))
    data = CandidatePatches(
        patches, np.array([1, 1, 0, 0]), np.arange(4), np.zeros((0, 4, 4, 4), np.int16), np.full(4, -1),
        1.0, patch, augment=Augment(noise_hu=0.0), gan=GanPositives(bank, np.array([2, 3]), fraction=0.5),
    )
    centre = [float(data[(r, d)]["image"][:, 3:5, 3:5].mean()) for r in (0, 2) for d in range(40)]
    positives, negatives = np.array(centre[:40]), np.array(centre[40:])
    bright = float(np.asarray(data.views(0, None))[:, 3:5, 3:5].mean()) + 0.2
    assert 8 <= int((positives > bright).sum()) <= 32  # about half the positive draws are GAN nodules
    assert not (negatives > bright).any()  # negatives never are
    data.pseudo[:] = True
    assert not any(float(data[(0, d)]["image"][:, 3:5, 3:5].mean()) > bright for d in range(40))  # nor pseudo-labels


def test_ablation_design_and_report(tmp_path: Path) -> None:
    from nodule.evaluation.ablation import (
        arm_name,
        arm_overrides,
        inserted_sets,
        load_ablation_config,
        report_markdown,
    )

    for name, generator in (("ins", "nodule insert"), ("real", "real"), ("none", None)):
        (tmp_path / name).mkdir()
        if generator:
            (tmp_path / name / "generator.json").write_text(json.dumps({"generator": generator}))
    assert inserted_sets([tmp_path / n for n in ("ins", "real", "none")]) == [tmp_path / "ins"]

    design = Path(__file__).resolve().parents[1] / "configs" / "ablation.yaml"
    config = load_ablation_config(design)
    assert set(config.methods) == {"supervised", "pseudo_label", "mean_teacher", "focalmix", "mixup", "gan", "both"}
    assert config.fractions == (0.1, 0.25, 1.0)
    assert arm_name("both", 0.1) == "both-f010"
    sup = arm_overrides(config, "supervised", 0.25)
    assert "--data.init_args.label_fraction=0.25" in sup and not any("callbacks" in a or "gan_" in a for a in sup)
    both = arm_overrides(config, "both", 0.1)
    assert any(a.startswith("--trainer.callbacks+=") and "PseudoLabelling" in a for a in both)
    assert any(a.startswith("--data.init_args.unlabelled_train=") and "train_cptac_seed0" in a for a in both)
    assert any(a.startswith("--data.init_args.gan_generator=") for a in both)
    mt = arm_overrides(config, "mean_teacher", 1.0)
    assert any(a.startswith("--trainer.callbacks+=") and "MeanTeacher" in a for a in mt)
    assert "--data.init_args.teacher_views=true" in mt and "--data.init_args.unlabelled_fraction=0.5" in mt
    assert sum(a.startswith("--data.init_args.unlabelled_train=") for a in mt) == 1
    assert not any("unlabelled_fraction" in a for a in both)
    fm = arm_overrides(config, "focalmix", 0.1)
    assert any("MeanTeacher" in a and '"mixup_alpha": 0.75' in a for a in fm)
    assert not any("mixup_alpha" in a for a in mt)
    mix = arm_overrides(config, "mixup", 0.1)
    assert any("mixup_alpha" in a for a in mix) and "--data.init_args.unlabelled_fraction=0.0" in mix
    bad = tmp_path / "bad.yaml"
    bad.write_text("lightning_config: a\ndata: b\nout: c\nmethods: {gan: [gan]}\n")
    with pytest.raises(ValueError, match="must include 'supervised'"):
        load_ablation_config(bad)
    row = {"cpm": 0.5, "cpm_ci95": [0.4, 0.6], "baseline_cpm": 0.3, "gain": 0.2, "gain_ci95": [0.05, 0.3]}
    flat = {**row, "gain": 0.0, "gain_ci95": [-0.1, 0.1]}
    result = {
        "arms": {
            "supervised-f010": {"method": "supervised", "fraction": 0.1, "crossval": {**row, "gain": 0.0, "gain_ci95": [0.0, 0.0]}},
            "pseudo_label-f010": {"method": "pseudo_label", "fraction": 0.1, "crossval": row},
            "gan-f010": {"method": "gan", "fraction": 0.1, "crossval": flat},
        },
        "goals": {},
    }
    text = report_markdown(result)
    assert "pseudo_label at 10 % labels: crossval: helps (+0.200)" in text
    assert "gan at 10 % labels: crossval: cannot tell (CI spans 0)" in text
    # a set too small for its interval: cannot tell, whatever the interval says
    result["arms"]["pseudo_label-f010"]["crossval"] = {**row, "n_scans": 2, "n_nodules": 7}
    assert "crossval: cannot tell (too small: 2 scans, 7 nodules) (+0.200)" in report_markdown(result)


def test_sampler_draws_unlabelled_rows_at_their_fraction() -> None:
    from nodule.training.datamodule import BalancedSampler

    labels = np.array([1] * 10 + [0] * 50 + [-1] * 40)
    plain = BalancedSampler(labels[:60], positive_fraction=0.3, num_samples=4000, seed=2)
    mixed = BalancedSampler(labels, positive_fraction=0.3, num_samples=4000, seed=2, unlabelled_fraction=0.5)
    drawn = labels[mixed.indices(0)]
    assert abs((drawn == -1).mean() - 0.5) < 0.04
    labelled = drawn[drawn >= 0]
    assert abs((labelled == 1).mean() - 0.3) < 0.04  # the labelled draws stay class-balanced
    # without unlabelled rows (or at fraction 0) the sample is the one of before
    none = BalancedSampler(labels, positive_fraction=0.3, num_samples=4000, seed=2)
    np.testing.assert_array_equal(none.indices(0), plain.indices(0))
    assert not (labels[none.indices(0)] == -1).any()
    with pytest.raises(ValueError, match="unlabelled_fraction"):
        BalancedSampler(labels, unlabelled_fraction=1.5)


def test_ema_update_and_sigmoid_ramp() -> None:
    from nodule.training.mean_teacher import ema_update, sigmoid_ramp

    student, teacher = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
        student.running_mean.fill_(3.0)
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, torch.full((2,), 0.1))
    assert torch.allclose(teacher.running_mean, torch.full((2,), 3.0))  # buffers copied
    assert sigmoid_ramp(0, 10) == pytest.approx(np.exp(-5)) and sigmoid_ramp(10, 10) == 1.0
    assert sigmoid_ramp(50, 10) == 1.0 and sigmoid_ramp(3, 0) == 1.0
    assert sigmoid_ramp(2, 10) < sigmoid_ramp(5, 10) < sigmoid_ramp(8, 10)


def test_mean_teacher_fit_with_unlabelled_draws_and_resume(tmp_path: Path) -> None:
    from nodule.training.mean_teacher import MeanTeacher

    root = _set(tmp_path / "set")
    dm = _module(root, tmp_path / "cache", label_fraction=0.5, label_seed=1, unlabelled_fraction=0.5, teacher_views=True)
    dm.prepare_data()
    dm.setup("fit")
    train, unlabelled = dm.datasets["train"], dm.datasets["unlabelled"]
    hidden = train.labels < 0
    assert hidden.sum() == len(unlabelled) and not train.pseudo.any()
    assert set(train.candidate_ids[hidden]) == set(unlabelled.candidate_ids)  # no hidden label enters
    dm.setup("fit")  # a second setup adds nothing
    assert (dm.datasets["train"].labels < 0).sum() == len(unlabelled)
    item = train[(int(np.flatnonzero(hidden)[0]), 3)]
    assert int(item["label"]) == -1 and item["image_teacher"].shape == item["image"].shape
    assert not torch.equal(item["image"], item["image_teacher"])  # an independent augmentation
    assert "image_teacher" not in dm.datasets["val"][0]

    torch.manual_seed(0)
    model = NoduleClassifier(net=_tiny_net(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    initial = {k: v.clone() for k, v in model.net.state_dict().items()}
    callback = MeanTeacher(max_weight=5.0, ramp_epochs=1)
    trainer = _trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert model.consistency_weight == pytest.approx(5.0)  # ramped up after one epoch
    assert "train/consistency" in trainer.callback_metrics
    teacher = callback.teacher
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    name = "head.0.weight" if "head.0.weight" in initial else next(k for k in initial if k.endswith("weight"))
    t, s = teacher.state_dict()[name], model.net.state_dict()[name]
    assert not torch.equal(t, initial[name]) and not torch.equal(t, s)  # it moved, behind the student
    again = MeanTeacher()
    again.load_state_dict(callback.state_dict())
    again.on_fit_start(trainer, model)
    assert again.teacher is not None and torch.equal(again.teacher.state_dict()[name], t)


def test_mean_teacher_needs_the_second_augmentation(tmp_path: Path) -> None:
    from nodule.training.mean_teacher import MeanTeacher

    root = _set(tmp_path / "set")
    dm = _module(root, tmp_path / "cache", label_fraction=0.5, label_seed=1, unlabelled_fraction=0.5)
    model = NoduleClassifier(net=_tiny_net())
    trainer = _trainer(tmp_path, [MeanTeacher()], max_epochs=1)
    with pytest.raises(ValueError, match="teacher_views"):
        trainer.fit(model, datamodule=dm)
    with pytest.raises(ValueError, match="unlabelled candidates"):
        _module(root, tmp_path / "cache", unlabelled_fraction=0.5).setup("fit")


def test_soft_focal_loss_and_focalmix_batch() -> None:
    from nodule.training.classifier import focal_loss, soft_focal_loss
    from nodule.training.mean_teacher import mix_batch, sharpen

    torch.manual_seed(0)
    logits, target = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0])
    p_t = torch.softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
    alpha_t = torch.where(target == 1, 0.25, 0.75)
    by_hand = (-alpha_t * (1 - p_t) ** 2 * p_t.log()).mean()  # Lin et al.'s formula
    assert torch.allclose(focal_loss(logits, target, 2.0, 0.25), by_hand)
    assert torch.allclose(soft_focal_loss(logits, target.float(), 2.0, 0.25), by_hand)
    half = soft_focal_loss(logits, torch.full((6,), 0.5), 0.0, reduction="none")
    assert torch.allclose(half, -torch.log_softmax(logits, -1).mean(-1))  # q = (0.5, 0.5)
    assert torch.allclose(soft_focal_loss(logits, target.float(), 0.0), torch.nn.functional.cross_entropy(logits, target))
    p = torch.tensor([0.2, 0.5, 0.9])
    s = sharpen(p, 0.5)
    assert s[0] < 0.2 and s[1] == pytest.approx(0.5) and s[2] > 0.9
    batch = {"image": torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 2, 2).clone(), "label": torch.tensor([1, 0, -1, -1])}
    image = batch["image"].clone()
    teacher = torch.tensor([0.5, 0.5, 0.9, 0.1])
    mix_batch(batch, teacher, 0.75, 0.5, np.random.default_rng(0))
    rng = np.random.default_rng(0)  # the same draws: lambda, then the permutation
    lam = float(rng.beta(0.75, 0.75))
    lam = max(lam, 1 - lam)
    perm = torch.from_numpy(rng.permutation(4))
    soft = torch.tensor([1.0, 0.0, float(sharpen(teacher[2:3], 0.5)), float(sharpen(teacher[3:4], 0.5))])
    assert torch.allclose(batch["image"], lam * image + (1 - lam) * image[perm])
    assert torch.allclose(batch["mix_target"], lam * soft + (1 - lam) * soft[perm])
    assert batch["mix_labelled"].tolist() == [True, True, False, False]
    model = NoduleClassifier(net=_tiny_net())
    supervised, consistency = model.mixed_loss(torch.randn(4, 2), batch)
    assert supervised > 0 and consistency > 0


def test_focalmix_fit(tmp_path: Path) -> None:
    from nodule.training.mean_teacher import MeanTeacher

    root = _set(tmp_path / "set")
    dm = _module(root, tmp_path / "cache", label_fraction=0.5, label_seed=1, unlabelled_fraction=0.5, teacher_views=True)
    torch.manual_seed(0)
    model = NoduleClassifier(net=_tiny_net(), loss="focal", optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    trainer = _trainer(tmp_path, [MeanTeacher(mixup_alpha=0.75, ramp_epochs=1)], max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["train/consistency"]) > 0
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))
