"""``nodule crossval`` on tiny LUNA16-layout sets: layout, resume, fresh models, guards, report."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_training_cli import wandb_records, write_tiny_luna16

from nodule.candidates.ranker import DEFAULT_RANKER
from nodule.evaluation import crossval
from nodule.evaluation.crossval import (
    CrossvalError,
    check_distinct_inits,
    check_ranker,
    parse_folds,
    plan_folds,
    run_crossval,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = CONFIGS / "tiny.yaml"
FAST = [  # BatchNorm as in configs/crossval_cpu.yaml (its 0-d counters are hashed too)
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--model.init_args.net.init_args.batch_norm=true",
]


def _ranker(path: Path, trained_on: list[str]) -> Path:
    doc = json.loads(DEFAULT_RANKER.read_text())
    doc["info"]["trained_on_uids"] = trained_on
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NODULE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_folds_and_plans() -> None:
    assert parse_folds("0-9") == list(range(10))
    assert parse_folds("0,2,5") == [0, 2, 5]
    assert parse_folds([3, 1, 2]) == [3, 1, 2]
    with pytest.raises(ValueError):
        parse_folds("0,0,1")
    plans = plan_folds([0, 2, 5])
    assert [(p.test, p.val, p.train) for p in plans] == [(0, 2, (5,)), (2, 5, (0,)), (5, 0, (2,))]
    with pytest.raises(CrossvalError):
        plan_folds([0, 1])


def test_guards_refuse_equal_inits_and_warn_without_ranker_record() -> None:
    check_distinct_inits({"fold_0": "a", "fold_1": "b"})
    with pytest.raises(CrossvalError, match="fold_0 and fold_1 start from the same initial weights"):
        check_distinct_inits({"fold_0": "a", "fold_1": "a"})
    with pytest.warns(UserWarning, match="records no training scans"):
        check_ranker(["u1"], None, "the data")


def _split_file(path: Path, uids: list[str], patients: list[str], roles: str) -> Path:
    scans = "".join(
        f"  s{i}: {{side: train, seriesuid: '{u}', patient: {p}}}\n"
        for i, (u, p) in enumerate(zip(uids, patients, strict=True))
    )
    names = ", ".join(f"s{i}" for i in range(len(uids)))
    path.write_text(
        f"name: tiny\nversion: 1\nreal_scans:\n{scans}datasets:\n"
        f"  tinyset:\n    real: [{names}]\n    roles: {roles}\n"
    )
    return path


def test_patient_in_train_and_test_is_refused(env: Path) -> None:
    root = write_tiny_luna16(env / "one_per_fold", scans_per_fold=1, folds=3, seed=5)
    uids = [f"1.2.826.0.1.5.{k}.0" for k in range(3)]
    # Scans of folds 0 and 2 are one patient's: fold 0 would test on that patient and train on fold 2.
    split = _split_file(env / "split.yaml", uids, ["P-A", "P-B", "P-A"], "{crossval: all}")
    with pytest.raises(CrossvalError, match=r"fold_0: patients with scans in both train .* and test: P-A"):
        run_crossval(TINY, root, folds="0-2", out=env / "run", split=split, bootstrap=0)
    # The folder is the split's data set: its folds must have role crossval.
    split = _split_file(env / "split2.yaml", uids, ["P-A", "P-B", "P-C"], "{test: all}")
    with pytest.raises(CrossvalError, match="not crossval"):
        run_crossval(TINY, root, folds="0-2", out=env / "run", split=split, bootstrap=0)
    assert not (env / "run").exists()


def test_ranker_trained_on_the_data_is_refused(env: Path) -> None:
    from nodule.cli import main

    root = write_tiny_luna16(env / "tiny", scans_per_fold=1, folds=3, seed=6)
    ranker = _ranker(env / "ranker.json", ["1.2.826.0.1.6.1.0", "other"])
    with pytest.raises(CrossvalError, match=r"ranker was trained on 1 scans of .*1\.2\.826\.0\.1\.6\.1\.0"):
        run_crossval(TINY, root, folds="0-2", out=env / "run", ranker=ranker, bootstrap=0)
    # the same through the command line (--config, --folds 0,1,2, a repeated --external)
    args = ["crossval", "--config", str(TINY), "--data", str(root), "--folds", "0,1,2"]
    args += ["--external", str(root), "--external", str(root), "--ranker", str(ranker)]
    with pytest.raises(CrossvalError, match="ranker was trained on 1 scans"):
        main(args)


@pytest.mark.slow
def test_crossval_end_to_end_resume_and_report(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nodule.cli import main

    root = write_tiny_luna16(env / "tiny", scans_per_fold=2, folds=3, seed=0)
    external = write_tiny_luna16(env / "ext", scans_per_fold=1, folds=2, seed=1)
    ranker = _ranker(env / "ranker.json", ["not.a.scan.of.these.sets"])
    out = env / "run"
    calls: list[str] = []
    folds_of_calls: list[dict[str, str]] = []
    real_main = crossval.lightning_main

    def counting(args: list[str]) -> Any:
        calls.append(args[0])
        folds_of_calls.append(
            {a.split("=")[0].rsplit(".", 1)[-1]: a.split("=", 1)[1] for a in args if "_folds=" in a}
        )
        return real_main(args)

    monkeypatch.setattr(crossval, "lightning_main", counting)
    kwargs: dict[str, Any] = dict(
        folds="0-2", out=out, external=[external], bootstrap=20, ranker=ranker, overrides=FAST,
        final_model=True,
    )
    summary = run_crossval(TINY, root, **kwargs)
    # three folds and the final model; each fold's prediction, then the external set's
    assert calls.count("fit") == 3 + 1 and calls.count("predict") == 3 + 3 + 1
    # The test fold never reaches a fit (no test or predict folds there, not in train or
    # validation); each fold is predicted only after its fit has ended.
    assert calls[:6] == ["fit", "predict"] * 3
    for k in range(3):
        fit, predict = folds_of_calls[2 * k], folds_of_calls[2 * k + 1]
        assert fit["test_folds"] == "[]" and fit["predict_folds"] == "[]"
        assert str(k) not in fit["train_folds"] + fit["val_folds"]
        assert fit["val_folds"] == f"[{(k + 1) % 3}]" and predict["predict_folds"] == f"[{k}]"

    # Layout: per fold checkpoints, predictions and fold.json; pooled predictions; summary.
    candidates = pd.read_csv(root / "candidates.csv")
    records = [json.loads((out / f"fold_{k}" / "fold.json").read_text()) for k in range(3)]
    for k, record in enumerate(records):
        assert (out / f"fold_{k}" / "checkpoints" / "last.ckpt").is_file()
        assert Path(record["best_checkpoint"]).parent == out / f"fold_{k}" / "checkpoints"
        assert record["status"] == "done" and record["test_fold"] == k
        assert record["val_fold"] == (k + 1) % 3 and record["train_folds"] == [(k + 2) % 3]
        assert record["seed"] == k
        fold = pd.read_csv(out / f"fold_{k}" / "predictions.csv")
        assert set(fold["seriesuid"]) == {f"1.2.826.0.1.0.{k}.{j}" for j in range(2)}
    final = json.loads((out / "final" / "fold.json").read_text())
    assert final["train_folds"] == [0, 1, 2] and final["val_fold"] is None and final["seed"] == 3
    assert len({r["init_state_sha256"] for r in [*records, final]}) == 4  # a fresh model each
    pooled = pd.read_csv(out / "predictions.csv")
    assert len(pooled) == len(candidates)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["pooled"]["cpm"] == pytest.approx(summary["pooled"]["cpm"])
    assert saved["pooled"]["n_scans"] == 6 and saved["pooled"]["cpm_ci95"] is not None
    assert [r["name"] for r in saved["per_fold"]] == ["fold_0", "fold_1", "fold_2"]
    ext = saved["external"]["ext"]
    assert ext["ensemble"]["n_scans"] == 2 and ext["ensemble"]["bootstrap_unit"] == "scan"
    assert ext["final_model"]["n_scans"] == 2
    assert (out / "external" / "ext" / "predictions.csv").is_file()
    assert saved["fold_assignment"]["1"] == ["1.2.826.0.1.0.1.0", "1.2.826.0.1.0.1.1"]
    assert "MultiStreamNet" in saved["config"]["text"] and saved["wall_time_s"] > 0

    # W&B: one run per fold named fold_K and a summary run, all in the run folder's group.
    runs = {}
    for run_dir in out.rglob("offline-run-*"):
        for record in wandb_records(run_dir):
            if record.WhichOneof("record_type") == "run":  # type: ignore[attr-defined]
                runs[record.run.display_name] = record.run.run_group  # type: ignore[attr-defined]
    assert runs == {n: "run" for n in ("fold_0", "fold_1", "fold_2", "final", "summary")}

    # The report: self-contained, with the tables, thumbnails and the pooled CPM.
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page)
    assert page.count("<table") >= 4 and "fold_2" in page
    assert f"{saved['pooled']['cpm']:.3f}" in page
    assert page.count('<div class="card"><img alt="9 views" src="data:image/png;base64,') >= 1
    assert (out / "report.md").read_text().startswith("# Cross-validation report: run")
    (out / "report.html").unlink()
    main(["report", str(out)])  # nodule report RUN_DIR regenerates it
    assert f"{saved['pooled']['cpm']:.3f}" in (out / "report.html").read_text()

    # A rerun trains nothing and predicts nothing: every fold and external prediction is done.
    stamps = [(out / f"fold_{k}" / "fold.json").stat().st_mtime_ns for k in range(3)]
    calls.clear()
    again = run_crossval(TINY, root, **kwargs)
    assert calls == []
    assert [(out / f"fold_{k}" / "fold.json").stat().st_mtime_ns for k in range(3)] == stamps
    assert again["pooled"]["cpm"] == pytest.approx(summary["pooled"]["cpm"])

    # Another configuration in the same run folder is refused, not mixed in.
    with pytest.raises(CrossvalError, match="another configuration"):
        run_crossval(TINY, root, **{**kwargs, "overrides": [*FAST, "--model.init_args.loss=focal"]})
