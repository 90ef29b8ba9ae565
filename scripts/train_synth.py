"""Train, test and externally evaluate the multistream CNN on a data set of the split.

The training data set is one of the split description's (``--dataset``, default
``train_seed2000`` of ``configs/splits/default.yaml``): its subsets' roles decide the
training, validation and test folds (the data module refuses a folder that is not that
data set, and any scan the candidate ranker trained on among validation, test or external
scans). For each variant (a fusion scheme of the network, or ``default``: the
configuration as it is) this script runs, each step as its own ``nodule`` process and each
skipped when its output exists (so an interrupted run resumes; ``fit`` resumes from
``last.ckpt``):

1. ``nodule fit`` with the configuration, the data set and the variant's fusion;
2. ``nodule predict`` with the best checkpoint (by validation CPM) on the test folds;
3. the LUNA16 evaluation of that submission on the test scans with a bootstrap CI
   (``nodule.evaluation.report.evaluate_files``: official cap of 100 marks per scan);
4. for each ``--external`` set (a split data set name, e.g. ``external_lidc0001_seed0``,
   or a folder): ``nodule predict`` on every scan and its evaluation, with the bootstrap
   its kind needs (nodules with their scans' false positives for a one-patient set made
   by ``nodule insert``, scans otherwise; the unit is recorded), one row per set (per
   background scan); for real scans (``real_lidc``) also the false positives per scan and
   each real nodule's rank, never pooled with the synthetic figures.

Results go to ``OUT/<variant>/`` (runs, submissions, reports) and a table of all
variants to ``OUT/results.md`` and ``OUT/results.json`` (written atomically). A run
folder records in ``run.json`` the fingerprint (:mod:`nodule.fingerprint`) of what
shapes it: the configuration file's content, the overrides, the data root, the external
set and the variant; a rerun into it with other ones is refused. A submission counts as
done only when its ``.done`` marker, written after ``nodule predict`` succeeded, holds
the fingerprint of its bytes (so a half-written or replaced file is predicted again). The data set needs its
``candidates.csv`` (``nodule candidates ROOT --out ROOT/candidates.csv``); so does the
external set.

    nodule split make train_seed2000 external_lidc0001_seed0 external_lidc0002_seed0 real_lidc --candidates true
    .venv/bin/python scripts/train_synth.py --dataset train_seed2000 --config configs/synth_cpu.yaml \\
        --external external_lidc0001_seed0 external_lidc0002_seed0 real_lidc \\
        --variants committee late mixed --out ~/.cache/nodule/experiments/synth100

``--override=ARG`` (repeatable) passes one more LightningCLI argument to every step,
e.g. ``--override=--trainer.max_epochs=8``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from nodule.data.luna16 import (
    read_annotations,
    read_excluded,
    read_folds,
    read_submission,
    write_seriesuids,
)
from nodule.fingerprint import check_fingerprint, file_fingerprint, fingerprint
from nodule.paths import write_text_atomic
from nodule.training.checkpoints import best_checkpoint
from nodule.training.cli import folder_data_args
from nodule.training.datamodule import folder_folds

FUSIONS = ("committee", "late", "mixed")
RUN_FILE = "run.json"


def _nodule(args: list[str]) -> None:
    """Run ``nodule ARGS`` (the console script beside this interpreter); raise on failure."""
    cmd = [str(Path(sys.executable).parent / "nodule"), *args]
    print("+ nodule " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def run_params(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """What shapes a variant's run folder: config content, overrides, data roots, variant."""
    return {
        "config": file_fingerprint(args.config),
        "overrides": list(args.override),
        "root": str(args.root.resolve()),
        "dataset": args.dataset,
        "external": [str(p.resolve()) for p in args.external],
        "variant": variant,
    }


def claim_run(run: Path, params: dict[str, Any]) -> None:
    """Record ``params`` and their fingerprint in ``run/run.json``, or check them against it.

    Raises:
        FingerprintMismatch: the run folder was made with other parameters.
        ValueError: it holds files but no ``run.json`` (what made them is unknown).
    """
    record = run / RUN_FILE
    if record.is_file():
        old = json.loads(record.read_text())
        check_fingerprint(run, "a training run", old["params"], params, old.get("fingerprint"))
        return
    if run.is_dir() and any(run.iterdir()):
        raise ValueError(
            f"{run} holds files but no {RUN_FILE}: cannot tell which configuration, overrides "
            "and data made them; use another --out, or remove the folder to start over"
        )
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record, json.dumps({"fingerprint": fingerprint(params), "params": params}, indent=1) + "\n")


def _marker(result: Path) -> Path:
    return result.with_name(result.name + ".done")


def is_done(result: Path) -> bool:
    """Whether ``result`` is complete: its ``.done`` marker holds the fingerprint of its bytes."""
    marker = _marker(result)
    return result.is_file() and marker.is_file() and marker.read_text().strip() == file_fingerprint(result)


def mark_done(result: Path) -> None:
    """Mark a complete ``result`` done (after the step that wrote it succeeded)."""
    write_text_atomic(_marker(result), file_fingerprint(result) + "\n")


def _evaluate(submission: Path, root: Path, uids: list[str], out: Path, bootstrap: int) -> dict[str, Any]:
    """Score a submission on some scans of a set: CPM with the set's kind of bootstrap, and for
    real scans their false positives per scan and the real nodules' ranks."""
    from nodule.evaluation.froc import evaluate_froc
    from nodule.evaluation.real_scans import real_scan_figures
    from nodule.evaluation.report import evaluate_files

    out.mkdir(parents=True, exist_ok=True)
    excluded = root / "annotations_excluded.csv"
    result = evaluate_files(
        submission,
        root / "annotations.csv",
        out,
        excluded=excluded if excluded.exists() else None,
        seriesuids=write_seriesuids(out / "seriesuids.csv", uids),
        bootstrap=bootstrap,
    )
    figures: dict[str, Any] = {
        "set": root.name,
        "cpm": result.cpm,
        "cpm_ci95": list(result.cpm_ci95) if result.cpm_ci95 is not None else None,
        "bootstrap_unit": result.bootstrap_unit,
        "sensitivities": {str(k): v for k, v in result.sensitivities.items()},
        "n_scans": result.n_scans,
        "n_nodules": result.n_nodules,
        "n_hits": result.n_hits,
    }
    generator = root / "generator.json"
    if generator.is_file() and json.loads(generator.read_text()).get("generator") == "real":
        every = evaluate_froc(
            read_submission(submission),
            read_annotations(root / "annotations.csv"),
            read_excluded(excluded) if excluded.exists() else None,
            uids,
            n_bootstrap=0,
            max_marks_per_scan=None,
        )
        figures["real_scans"] = real_scan_figures(every)
    return figures


PREDICT_ONLY = ["--data.init_args.extra_train=[]"]
"""Prediction reads only the data set it predicts: a configuration's extra training sets
(``extra_train``, e.g. nodules inserted into the training-side real scans) train only."""


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """Fit, predict and evaluate one variant; returns its figures."""
    run = args.out / variant
    claim_run(run, run_params(args, variant))
    ckpts = run / "checkpoints"
    common = [
        "--config",
        str(args.config),
        f"--trainer.default_root_dir={run}",
        f"--trainer.logger.init_args.save_dir={run}",
        f"--trainer.logger.init_args.name={args.out.name}-{variant}",
        f"--checkpoint.dirpath={ckpts}",
    ]
    if variant != "default":
        common.append(f"--model.init_args.net.init_args.fusion={variant}")
    common += args.override
    data = [f"--data.init_args.root={args.root}"]
    if args.dataset is not None:
        data.append(f"--data.init_args.dataset={args.dataset}")
    if not (run / "fit.done").exists():
        resume = [f"--ckpt_path={ckpts / 'last.ckpt'}"] if (ckpts / "last.ckpt").exists() else []
        _nodule(["fit", *common, *data, *resume])
        write_text_atomic(run / "fit.done", "")
    best = best_checkpoint(ckpts)
    figures: dict[str, Any] = {"variant": variant, "checkpoint": str(best)}

    folds = read_folds(args.root / "folds")
    test_uids = [u for k in args.test_folds for u in folds[k]]
    test_sub = run / "test_submission.csv"
    if not is_done(test_sub):
        _nodule(["predict", *common, *data, *PREDICT_ONLY, f"--ckpt_path={best}", f"--submission.output={test_sub}"])
        mark_done(test_sub)
    figures["test"] = _evaluate(test_sub, args.root, test_uids, run / "test_eval", args.bootstrap)

    figures["external"] = []
    for external in args.external:
        ext_sub = run / f"external_{external.name}_submission.csv"
        ext_folds = folder_folds(external)
        if not is_done(ext_sub):
            ext = folder_data_args(external)
            _nodule(["predict", *common, *ext, *PREDICT_ONLY, f"--ckpt_path={best}", f"--submission.output={ext_sub}"])
            mark_done(ext_sub)
        ext_uids = [u for uids in ext_folds.values() for u in uids]
        figures["external"].append(_evaluate(ext_sub, external, ext_uids, run / f"external_{external.name}_eval", args.bootstrap))
    return figures


def _ci(r: dict[str, Any]) -> str:
    lo_hi = r.get("cpm_ci95")
    return f"{r['cpm']:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else f"{r['cpm']:.3f}"


def _table(results: list[dict[str, Any]]) -> str:
    """Markdown: the test figures of every variant, then one row per variant and external set."""
    rates = list(results[0]["test"]["sensitivities"]) if results else []
    lines = [
        "| variant | test CPM [95% CI] | " + " | ".join(f"sens@{r}" for r in rates) + " | test nodules (hit) | CI resamples |",
        "|" + "---|" * (4 + len(rates)),
    ]
    for r in results:
        t = r["test"]
        sens = " | ".join(f"{t['sensitivities'][k]:.3f}" for k in rates)
        lines.append(f"| {r['variant']} | {_ci(t)} | {sens} | {t['n_nodules']} ({t['n_hits']}) | {t['bootstrap_unit']}s |")
    lines += ["", "| variant | external set | CPM [95% CI] | CI resamples | scans | nodules (hit) | real scans: FP/scan (p >= 0.5, 0.9) | real nodules: probability, found at FP/scan |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for e in r.get("external", []):
            real = e.get("real_scans")
            fp = nods = "-"
            if real:
                at = real["fp_per_scan_at"]
                fp = f"{real['fp_per_scan']:.1f} ({at.get(0.5, at.get('0.5', 0.0)):.1f}, {at.get(0.9, at.get('0.9', 0.0)):.1f})"
                nods = "; ".join(
                    "missed" if n["probability"] is None else f"{n['probability']:.3f} at {n['fp_per_scan_above']:.2f}"
                    for n in real["nodules"]
                )
            lines.append(
                f"| {r['variant']} | {e['set']} | {_ci(e)} | {e['bootstrap_unit']}s | {e['n_scans']} | "
                f"{e['n_nodules']} ({e['n_hits']}) | {fp} | {nods} |"
            )
    return "\n".join(lines) + "\n"


def _resolve(name_or_path: str, split_path: Path) -> Path:
    """A split data set name -> its folder (``$NODULE_CACHE/sets/<name>``); else the path itself."""
    from nodule.data.sets import check_dataset_folder, dataset_root
    from nodule.data.splits import load_split

    split = load_split(split_path)
    if name_or_path in split.datasets:
        root = dataset_root(name_or_path)
        check_dataset_folder(split, name_or_path, root)
        return root
    return Path(name_or_path).expanduser()


def main() -> None:
    from nodule.data.sets import dataset_root
    from nodule.data.splits import DEFAULT_SPLIT, load_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="train_seed2000", help="training data set of the split")
    parser.add_argument("--root", type=Path, default=None, help="its folder (default $NODULE_CACHE/sets/<dataset>)")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT, help="split description")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(FUSIONS), help="fusion schemes, or 'default'")
    parser.add_argument("--external", nargs="*", default=[], help="external sets: split data set names or folders, with candidates.csv")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="one more LightningCLI argument for every step, e.g. --override=--trainer.max_epochs=8 (repeatable)",
    )
    args = parser.parse_args()
    split = load_split(args.split)
    args.root = (args.root or dataset_root(args.dataset)).expanduser()
    args.test_folds = split.dataset(args.dataset).folds("test")
    if not args.test_folds:
        parser.error(f"data set {args.dataset} has no test subsets in {split.path}")
    args.out = args.out.expanduser()
    args.external = [_resolve(e, args.split) for e in args.external]
    for v in args.variants:
        if v != "default" and v not in FUSIONS:
            parser.error(f"unknown variant {v!r}: use {', '.join(FUSIONS)} or default")
    results = []
    for variant in args.variants:
        results.append(run_variant(args, variant))
        write_text_atomic(args.out / "results.json", json.dumps(results, indent=1))
        write_text_atomic(args.out / "results.md", _table(results))
    print(_table(results))


if __name__ == "__main__":
    main()
