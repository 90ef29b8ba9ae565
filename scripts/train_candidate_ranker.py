"""Train the candidate stage's learned ranker (``nodule/candidates/ranker.json``).

The training data is the split description's (``--split``, default
``configs/splits/default.yaml``): the ``train`` subsets of the data sets its learner
``ranker`` names, each found in ``--sets-dir/<name>`` (default ``$NODULE_CACHE/sets``) and
checked to be that data set (``nodule split make NAME`` makes it). Subsets with another
role (val, test, crossval) are never read, and the model records the scans it was trained
on (``info.trained_on_uids``), so ``nodule split check`` and every later training or
evaluation can refuse data the ranker saw.

1. Every detection of the three detectors (their pools, before merging and ranking)
   with its context features, for each scan of the training subsets:
   ``nodule.candidates.detect_candidates`` with ``ranker=None`` and no merging. One CSV per
   subset under ``--cache/<set name>``; a subset already done is skipped, so an
   interrupted run resumes.
2. Labels: a detection is positive inside a nodule's sphere (the LUNA16 rule);
   detections on excluded findings are left out.
3. With ``--validate K...`` (default 5 6, train subsets of the first set): a ranker trained
   on every other training subset is scored on them (sensitivity at the stage's
   ``max_per_scan`` after merging, against the detector scores), then the shipped model is
   trained on every training subset.
4. With ``--leave-one-set-out``: for each set, a ranker trained on the other sets is
   scored on it (nodules kept of those in its pool, and with the detector scores).
5. With ``--compare NAME...``: the new ranker and the shipped one (``nodule/candidates/ranker.json``)
   are scored on the val and test subsets of those data sets (nodules kept at the stage's
   ``max_per_scan``). With ``--sets NAME...`` the ranker learns from those data sets' train
   subsets instead of the split's learner (an experiment: ``--out`` must then be given).

    .venv/bin/python scripts/train_candidate_ranker.py --cache ~/.cache/nodule/ranker \\
        --out nodule/candidates/ranker.json --hidden 16 --leave-one-set-out

A ranker of current data compared with the shipped one (session 12, docs/results.md)::

    .venv/bin/python scripts/train_candidate_ranker.py --cache ~/.cache/nodule/ranker \
        --sets train_seed6100 train_cptac_seed0 train_a0001_seed0 --validate \
        --compare train_seed6100 heldout_seed9300 --out /tmp/ranker_s12.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nodule.candidates.batch import run_batch
from nodule.candidates.detect import CandidateConfig, keep_best
from nodule.candidates.ranker import CandidateRanker, fit_ranker, per_nodule_weights
from nodule.data.luna16 import read_annotations, read_excluded
from nodule.data.sets import check_dataset_folder, dataset_root
from nodule.data.splits import DEFAULT_SPLIT, Split, describe_leak, leaked_scans, load_split
from nodule.training.labels import LABEL, NODULE_ID, ON_EXCLUDED, label_candidates


def pool_config(config: CandidateConfig) -> CandidateConfig:
    """The stage's configuration with every detection of the ranked detectors kept: no
    ranker, merging or cap, and no learned detector (its peaks are not ranked)."""
    return replace(
        config, ranker=None, context=True, merge_distance_mm=0.0, merge_radius_fraction=0.0, max_per_scan=10**9,
        learned=replace(config.learned, weights=None),
    )


def build_pool(root: Path, cache: Path, config: CandidateConfig, jobs: int, folds: list[int]) -> pd.DataFrame:
    """All detections of the given subsets with their fold; subsets already in ``cache`` are read back."""
    cache.mkdir(parents=True, exist_ok=True)
    frames = []
    for fold in folds:
        out = cache / f"subset{fold}.csv"
        if not out.exists():
            tmp = out.with_suffix(".partial.csv")
            run_batch([root / f"subset{fold}"], tmp, jobs=jobs, config=pool_config(config), progress=True)
            tmp.replace(out)
            tmp.with_name(f"{tmp.stem}_summary.csv").replace(cache / f"subset{fold}_summary.csv")
        frame = pd.read_csv(out, dtype={"seriesuid": str})
        frames.append(frame.assign(fold=fold))
    return pd.concat(frames, ignore_index=True)


def sensitivity(
    pool: pd.DataFrame, scores: np.ndarray, annotations: pd.DataFrame, config: CandidateConfig
) -> tuple[int, int, float]:
    """Nodules hit by the best ``max_per_scan`` merged candidates per scan, of those in ``pool``'s scans."""
    table = pool.assign(score=scores, detector=pool["detectors"])
    chosen = pd.concat([keep_best(scan, config) for _, scan in table.groupby("seriesuid", sort=False)], ignore_index=True)
    nodules = annotations[annotations["seriesuid"].isin(set(pool["seriesuid"]))].reset_index(drop=True)
    hit = label_candidates(chosen, nodules)[NODULE_ID]
    return int(np.unique(hit[hit >= 0]).size), len(nodules), len(chosen) / max(1, pool["seriesuid"].nunique())


def held_out(
    pool: pd.DataFrame,
    y: np.ndarray,
    weights: np.ndarray,
    test: np.ndarray,
    annotations: pd.DataFrame,
    config: CandidateConfig,
    fit: dict[str, Any],
) -> tuple[tuple[int, int, float], tuple[int, int, float]]:
    """:func:`sensitivity` on the ``test`` rows with a ranker trained on the others, and with the detector scores."""
    ranker = fit_ranker(pool[~test], y[~test], weights=weights[~test], **fit)
    learned = sensitivity(pool[test], ranker.score(pool[test]), annotations, config)
    detector = sensitivity(pool[test], pool["probability"].to_numpy()[test], annotations, config)
    return learned, detector


def leave_one_set_out(
    pool: pd.DataFrame, y: np.ndarray, weights: np.ndarray, roots: list[Path], config: CandidateConfig, fit: dict[str, Any]
) -> dict[str, dict[str, int]]:
    """Per set (``pool["set"]``): nodules in its pool, kept by a ranker of the other sets and by the detector scores."""
    out = {}
    for k, root in enumerate(roots):
        test = (pool["set"] == k).to_numpy()
        annotations = read_annotations(root / "annotations.csv")
        hit = label_candidates(pool[test], annotations)[NODULE_ID]
        learned, detector = held_out(pool, y, weights, test, annotations, config, fit)
        out[root.name] = {
            "nodules": learned[1],
            "in_pool": int(np.unique(hit[hit >= 0]).size),
            "learned": learned[0],
            "detector_scores": detector[0],
        }
        print(f"leave out {root.name}: {out[root.name]}", flush=True)
    return out


def set_root(sets_dir: Path | None, name: str) -> Path:
    """The folder of data set ``name``: under ``sets_dir`` when given, else its default (:func:`dataset_root`)."""
    return (sets_dir.expanduser() / name) if sets_dir else dataset_root(name)


def compare_rankers(
    split: Split, names: list[str], sets_dir: Path | None, cache: Path, config: CandidateConfig, jobs: int,
    ranker: CandidateRanker, trained_uids: set[str],
) -> dict[str, dict[str, Any]]:
    """Nodules kept at ``max_per_scan`` by ``ranker`` and by the shipped ranker on the val and
    test subsets of the data sets ``names`` (which it must not have trained on)."""
    from nodule.candidates.ranker import load_ranker

    shipped = load_ranker(None)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        root = set_root(sets_dir, name)
        check_dataset_folder(split, name, root)
        entry = split.dataset(name)
        folds = sorted(entry.folds("val") + entry.folds("test"))
        if not folds:
            raise SystemExit(f"--compare {name}: the data set has no val or test subsets in {split.path}")
        pool = build_pool(root, cache / name, config, jobs, folds)
        seen = sorted(set(pool["seriesuid"]) & trained_uids)
        if seen:
            raise SystemExit(f"--compare {name}: {len(seen)} of its scans trained the new ranker (e.g. {seen[0]})")
        annotations = read_annotations(root / "annotations.csv")
        new = sensitivity(pool, ranker.score(pool), annotations, config)
        old = sensitivity(pool, shipped.score(pool), annotations, config)
        out[name] = {"subsets": folds, "nodules": new[1], "new_ranker": new[0], "shipped_ranker": old[0]}
        print(f"compare on {name} subsets {folds}: new ranker {new[0]}/{new[1]}, shipped ranker {old[0]}/{old[1]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT, help="split description")
    parser.add_argument("--sets-dir", type=Path, default=None, help="folder of the data sets (default $NODULE_CACHE/sets)")
    parser.add_argument("--cache", type=Path, required=True, help="folder for the per-set, per-subset detection pools")
    parser.add_argument("--out", type=Path, default=Path("nodule/candidates/ranker.json"))
    parser.add_argument("--validate", type=int, nargs="*", default=[5, 6], help="train subsets of the first set held out to validate")
    parser.add_argument("--hidden", type=int, nargs="*", default=[32, 16])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--leave-one-set-out", action="store_true", help="score each set with a ranker of the others")
    parser.add_argument("--sets", nargs="+", default=None, help="learn from these data sets (default: the split's learner)")
    parser.add_argument("--compare", nargs="+", default=[], help="score new and shipped ranker on these sets' val/test subsets")
    parser.add_argument(
        "--per-nodule", action="store_true",
        help="every nodule weighs one in the loss (its detections share it), not every detection",
    )
    args = parser.parse_args(argv)
    split = load_split(args.split)
    if args.sets and args.out == parser.get_default("out"):
        raise SystemExit("--sets trains an experimental ranker: give --out (the shipped one learns from the split's learner)")
    names = list(args.sets or split.learners.get("ranker", ()))
    if not names:
        raise SystemExit(f"{split.path}: the learner 'ranker' trains on no data set")
    roots = [set_root(args.sets_dir, n) for n in names]
    config = CandidateConfig()
    pools, labelled_sets, trained_on = [], [], {}
    for k, (name, root) in enumerate(zip(names, roots, strict=True)):
        check_dataset_folder(split, name, root)
        folds = split.dataset(name).folds("train")
        trained_on[name] = folds
        pool = build_pool(root, args.cache / name, config, args.jobs, folds).assign(set=k)
        annotations = read_annotations(root / "annotations.csv")
        excluded = read_excluded(root / "annotations_excluded.csv")
        pools.append(pool)
        labelled_sets.append(label_candidates(pool, annotations, excluded))
        hit = labelled_sets[-1][NODULE_ID]
        in_scans = annotations["seriesuid"].isin(set(pool["seriesuid"])).sum()
        print(f"{name} subsets {folds}: {len(pool)} detections in {pool['seriesuid'].nunique()} scans,"
              f" {np.unique(hit[hit >= 0]).size} of {in_scans} nodules hit")
    pool = pd.concat(pools, ignore_index=True)
    uids = sorted(set(pool["seriesuid"]))
    leaks = leaked_scans(uids, split.scan_table())
    if len(leaks):  # by construction impossible unless the split itself is unsound: refuse loudly
        raise SystemExit(describe_leak("the ranker's training data", leaks))
    labelled = pd.concat(labelled_sets, ignore_index=True)
    y = labelled[LABEL].to_numpy()
    weights = np.where(labelled[ON_EXCLUDED].to_numpy(), 0.0, 1.0)
    if args.per_nodule:
        ids = labelled[NODULE_ID].to_numpy()
        weights = per_nodule_weights(np.where(ids >= 0, pool["set"].to_numpy() * 1_000_000 + ids, -1), weights)
    fit: dict[str, Any] = {"hidden": tuple(args.hidden), "epochs": args.epochs, "weight_decay": args.weight_decay, "seed": args.seed}
    info: dict[str, object] = {
        "roots": names,
        "split": split.tag,
        "split_fingerprint": split.fingerprint(),
        "trained_on": trained_on,
        "scans": len(uids),
        "detections_per_scan": round(len(pool) / max(1, len(uids)), 1),
        "per_nodule": bool(args.per_nodule),
    }
    if args.validate:
        bad = [k for k in args.validate if k not in trained_on[names[0]]]
        if bad:
            raise SystemExit(f"--validate {bad}: not train subsets of {names[0]} in {split.path}")
        val = (pool["set"] == 0).to_numpy() & pool["fold"].isin(args.validate).to_numpy()
        annotations = read_annotations(roots[0] / "annotations.csv")
        learned, detector = held_out(pool, y, weights, val, annotations, config, fit)
        print(f"validation subsets {args.validate} of {names[0]}: learned ranker {learned[0]}/{learned[1]} at {learned[2]:.0f}/scan,"
              f" detector scores {detector[0]}/{detector[1]} at {detector[2]:.0f}/scan")
        info["validation"] = {
            "set": names[0],
            "subsets": args.validate,
            "learned": {"hit": learned[0], "nodules": learned[1], "per_scan": round(learned[2], 1)},
            "detector_scores": {"hit": detector[0], "nodules": detector[1], "per_scan": round(detector[2], 1)},
        }
    if args.leave_one_set_out:
        info["leave_one_set_out"] = leave_one_set_out(pool, y, weights, roots, config, fit)
    ranker = fit_ranker(pool, y, weights=weights, **fit)
    if args.compare:
        info["compare"] = compare_rankers(split, args.compare, args.sets_dir, args.cache, config, args.jobs, ranker, set(uids))
    ranker.info.update(info)
    ranker.info["trained_on_uids"] = uids
    ranker.to_json(args.out)
    summary = {k: v for k, v in ranker.info.items() if k != "trained_on_uids"}
    print(f"ranker -> {args.out}: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
