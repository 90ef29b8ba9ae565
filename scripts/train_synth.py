"""Train, test and externally evaluate the multistream CNN on a synthetic LUNA16-layout set.

For each variant (a fusion scheme of the network, or ``default``: the configuration as
it is) this script runs, each step as its own ``nodule`` process and each skipped when
its output exists (so an interrupted run resumes; ``fit`` resumes from ``last.ckpt``):

1. ``nodule fit`` with the configuration, the data set root and the variant's fusion;
2. ``nodule predict`` with the best checkpoint (by validation CPM) on the test folds;
3. the LUNA16 evaluation of that submission on the test scans with a bootstrap CI
   (``nodule.evaluation.report.evaluate_files``: official cap of 100 marks per scan);
4. with ``--external``: ``nodule predict`` on every scan of the external set (e.g. the
   set ``nodule insert`` builds from the real CT) and its evaluation.

Results go to ``OUT/<variant>/`` (runs, submissions, reports) and a table of all
variants to ``OUT/results.md`` and ``OUT/results.json`` (written atomically). A run
folder records in ``run.json`` the fingerprint (:mod:`nodule.fingerprint`) of what
shapes it: the configuration file's content, the overrides, the data root, the external
set and the variant; a rerun into it with other ones is refused. A submission counts as
done only when its ``.done`` marker, written after ``nodule predict`` succeeded, holds
the fingerprint of its bytes (so a half-written or replaced file is predicted again). The data set needs its
``candidates.csv`` (``nodule candidates ROOT --out ROOT/candidates.csv``); so does the
external set.

    .venv/bin/python scripts/train_synth.py --root ~/.cache/nodule/synth/train_seed2000 \\
        --external ~/.cache/nodule/insert/real_ct_seed0 --config configs/synth_cpu.yaml \\
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

from nodule.data.luna16 import write_seriesuids
from nodule.fingerprint import check_fingerprint, file_fingerprint, fingerprint
from nodule.paths import write_text_atomic
from nodule.training.checkpoints import best_checkpoint

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
        "external": str(args.external.resolve()) if args.external is not None else None,
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
    return {
        "cpm": result.cpm,
        "cpm_ci95": list(result.cpm_ci95) if result.cpm_ci95 is not None else None,
        "sensitivities": {str(k): v for k, v in result.sensitivities.items()},
        "n_scans": result.n_scans,
        "n_nodules": result.n_nodules,
        "n_hits": result.n_hits,
    }


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """Fit, predict and evaluate one variant; returns its figures."""
    from nodule.data.luna16 import read_folds

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
        _nodule(["predict", *common, *data, f"--ckpt_path={best}", f"--submission.output={test_sub}"])
        mark_done(test_sub)
    figures["test"] = _evaluate(test_sub, args.root, test_uids, run / "test_eval", args.bootstrap)

    if args.external is not None:
        ext_sub = run / "external_submission.csv"
        if not is_done(ext_sub):
            ext_folds = read_folds(args.external / "folds")
            ext = [
                f"--data.init_args.root={args.external}",
                f"--data.init_args.predict_folds=[{','.join(str(k) for k in sorted(ext_folds))}]",
            ]
            _nodule(["predict", *common, *ext, f"--ckpt_path={best}", f"--submission.output={ext_sub}"])
            mark_done(ext_sub)
        ext_uids = [u for uids in read_folds(args.external / "folds").values() for u in uids]
        figures["external"] = _evaluate(ext_sub, args.external, ext_uids, run / "external_eval", args.bootstrap)
    return figures


def _table(results: list[dict[str, Any]]) -> str:
    def ci(r: dict[str, Any]) -> str:
        lo_hi = r.get("cpm_ci95")
        return f"{r['cpm']:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else f"{r['cpm']:.3f}"

    rates = list(results[0]["test"]["sensitivities"]) if results else []
    head = "| variant | test CPM [95% CI] | " + " | ".join(f"sens@{r}" for r in rates)
    head += " | test nodules (hit) | external CPM [95% CI] | external nodules (hit) |"
    lines = [head, "|" + "---|" * (5 + len(rates))]
    for r in results:
        t = r["test"]
        e = r.get("external")
        sens = " | ".join(f"{t['sensitivities'][k]:.3f}" for k in rates)
        ext = f"{ci(e)} | {e['n_nodules']} ({e['n_hits']})" if e else "- | -"
        lines.append(f"| {r['variant']} | {ci(t)} | {sens} | {t['n_nodules']} ({t['n_hits']}) | {ext} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="LUNA16-layout synthetic set with candidates.csv")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(FUSIONS), help="fusion schemes, or 'default'")
    parser.add_argument("--external", type=Path, default=None, help="external LUNA16-layout set with candidates.csv")
    parser.add_argument("--test-folds", type=int, nargs="+", default=[8, 9])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="one more LightningCLI argument for every step, e.g. --override=--trainer.max_epochs=8 (repeatable)",
    )
    args = parser.parse_args()
    args.root = args.root.expanduser()
    args.out = args.out.expanduser()
    args.external = args.external.expanduser() if args.external else None
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
