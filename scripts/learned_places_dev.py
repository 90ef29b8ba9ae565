"""Choose the learned detector's places among a study's candidates on a development set.

The learned detector's peaks skip the ranker and hold up to ``max_candidates`` of the
``max_per_scan`` places (:func:`nodule.candidates.merge.keep_reserved`). How many places,
and from which probability, is chosen here on a development folder that no learned part
of the pipeline saw (``scripts/ggo_dev_set.py``), never on a set of the split.

``collect`` runs, per scan of ``FOLDER``, the hand-made detectors with the ranker and no
cut (``hand.csv``, independent of the learned weights) and the learned detector's best
100 peaks of any probability (``learned_<tag>.csv``) into ``--out``; ``analyse`` replays
the cut to ``max_per_scan`` for each number of places and minimum probability and prints
the sensitivity (LUNA16 hit: a candidate within the nodule's radius) and the learned
peaks' ranks of the nodules the hand-made detectors miss.

    python scripts/learned_places_dev.py collect $NODULE_CACHE/dev/ggo_seed8800 --out /tmp/dev --weights W.pt
    python scripts/learned_places_dev.py analyse $NODULE_CACHE/dev/ggo_seed8800 --out /tmp/dev --tag W

Resumable: a scan already in a CSV is skipped.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from bench_candidates import _detectors_hitting
from tqdm import tqdm

from nodule.candidates import CandidateConfig, detect_candidates
from nodule.candidates.detect import working_grid
from nodule.candidates.learned import LEARNED_SPACING_MM, LearnedConfig, detect_learned
from nodule.candidates.merge import keep_reserved, merge_candidates
from nodule.io import read_volume
from nodule.lung import segment_lungs

PLACES = (0, 5, 10, 15, 20, 30, 40, 60)
PROBABILITIES = (0.0, 0.02, 0.05, 0.1, 0.2)


def _scan(task: tuple[str, str | None, bool]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hand-made candidates (uncut; empty unless asked) and learned peaks of one scan."""
    path, weights, hand = task
    volume = read_volume(path)
    lung = segment_lungs(volume)
    uid = volume.series_uid
    config = CandidateConfig(max_per_scan=10**6, learned=LearnedConfig(weights=None))
    ranked = detect_candidates(volume, lung, config).candidates if hand else pd.DataFrame()
    peaks = pd.DataFrame()
    if weights is not None:
        grid = replace(config, work_spacing_mm=LEARNED_SPACING_MM)
        work, array, labels = working_grid(volume, np.asarray(lung.labels), grid)
        found = detect_learned(array, labels > 0, work.spacing_zyx, LearnedConfig(weights=weights, max_candidates=100, min_probability=0.0))
        world = work.voxel_to_world(found[["z", "y", "x"]].to_numpy(dtype=np.float64))
        peaks = pd.DataFrame({"seriesuid": uid, "coordX": world[:, 0], "coordY": world[:, 1], "coordZ": world[:, 2], "score": found["score"].to_numpy()})
    return ranked.assign(seriesuid=uid), peaks


def collect(folder: Path, out: Path, weights: str | None, tag: str, jobs: int) -> None:
    """Write ``hand.csv`` (once) and ``learned_<tag>.csv`` for every scan of ``folder``."""
    out.mkdir(parents=True, exist_ok=True)
    hand_csv, learned_csv = out / "hand.csv", out / f"learned_{tag}.csv"
    done_hand = set(pd.read_csv(hand_csv)["seriesuid"]) if hand_csv.exists() else set()
    done_learned = set(pd.read_csv(learned_csv)["seriesuid"]) if learned_csv.exists() else set()
    tasks = []
    for mhd in sorted(folder.glob("subset*/*.mhd")):
        need_hand, need_learned = mhd.stem not in done_hand, weights is not None and mhd.stem not in done_learned
        if need_hand or need_learned:
            tasks.append((str(mhd), weights if need_learned else None, need_hand))
    with ProcessPoolExecutor(jobs) as pool:
        for ranked, peaks in tqdm(pool.map(_scan, tasks), total=len(tasks), desc="scans"):
            if len(ranked):
                ranked.to_csv(hand_csv, mode="a", header=not hand_csv.exists(), index=False)
            if len(peaks):
                peaks.to_csv(learned_csv, mode="a", header=not learned_csv.exists(), index=False)


def _hits(nodules: pd.DataFrame, candidates: pd.DataFrame) -> np.ndarray:
    """Per nodule: whether a candidate of its scan lies within its radius (the benchmark's matching)."""
    return (_detectors_hitting(nodules, candidates) != "").to_numpy()


def analyse(folder: Path, out: Path, tag: str, limit: int = 150) -> None:
    """Print the sensitivity at ``limit`` per scan for each number of places and minimum probability."""
    config = CandidateConfig()
    nodules = pd.read_csv(folder / "annotations.csv")
    hand = pd.read_csv(out / "hand.csv").rename(columns={"probability": "score"})
    peaks = pd.read_csv(out / f"learned_{tag}.csv").assign(detector="learned", diameter_mm=0.0)
    uids = sorted(set(hand["seriesuid"]))
    nodules = nodules[nodules["seriesuid"].isin(uids)].reset_index(drop=True)
    print(f"{len(uids)} scans, {len(nodules)} nodules (< 8 mm: {(nodules['diameter_mm'] < 8).sum()})")
    hand_hit = _hits(nodules, hand.groupby("seriesuid").head(limit))
    print(f"hand-made detectors alone at {limit}: {hand_hit.sum()}/{len(nodules)}; uncut: {_hits(nodules, hand).sum()}")
    for p in PROBABILITIES:
        row = []
        for k in PLACES:
            kept = []
            for uid in uids:
                ranked = hand[hand["seriesuid"] == uid].reset_index(drop=True)
                mine = peaks[(peaks["seriesuid"] == uid) & (peaks["score"] >= p)].head(k)
                reserved = merge_candidates(mine, config.merge_distance_mm, chain=config.merge_chain) if len(mine) else mine
                kept.append(keep_reserved(ranked, reserved, config.merge_distance_mm, limit) if len(mine) else ranked.head(limit))
            row.append(f"K={k}: {_hits(nodules, pd.concat(kept)).sum()}")
        print(f"p >= {p}: " + "  ".join(row))
    missed = nodules[~hand_hit]
    xyz = ["coordX", "coordY", "coordZ"]
    for uid, centre, size in zip(missed["seriesuid"].astype(str), missed[xyz].to_numpy(np.float64), missed["diameter_mm"].to_numpy(np.float64), strict=True):
        mine = peaks[peaks["seriesuid"] == uid].reset_index(drop=True)
        near = np.flatnonzero(np.linalg.norm(mine[xyz].to_numpy(np.float64) - centre, axis=1) <= size / 2.0)
        score = mine["score"].to_numpy(np.float64)
        where = f"rank {near[0] + 1} (p {score[near[0]]:.2f})" if len(near) else "no peak"
        print(f"  missed by hand {size:.1f} mm: learned {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("collect", "analyse", "both"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", default=None, help="detector weights (collect)")
    parser.add_argument("--tag", default=None, help="name of the learned CSV (default the weights' stem)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    tag = args.tag or (Path(args.weights).stem if args.weights else "default")
    if args.action in ("collect", "both"):
        collect(args.folder, args.out, args.weights, tag, args.jobs)
    if args.action in ("analyse", "both"):
        analyse(args.folder, args.out, tag)


if __name__ == "__main__":
    main()
