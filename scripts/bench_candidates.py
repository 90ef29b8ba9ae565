"""Benchmark of the candidate stage: time of each step and peak memory, and sensitivity.

Timing: each run happens in a fresh process (so that its peak resident memory is the
study's own) on a ``full`` synthetic scan written as .mhd (generated once, seeded) and
on the real CT; steps: read, lung mask, crop + resample, solid, subsolid, large solid,
merge. Wall and CPU seconds are reported per step (CPU seconds are robust to a
shared machine); the median of ``--runs`` runs.

Sensitivity (``--sensitivity DIR``): candidates for every scan of a LUNA16-layout
folder with ``annotations.csv`` (as ``nodule synth`` writes), scored with the LUNA16
matching (hit: within the nodule's radius): sensitivity, candidates per scan, and the
misses by nodule type / attachment when the annotations carry those columns.

Targets: under 8 s per scan end to end on the 2-core machine, peak memory under 3 GB;
sensitivity >= 0.97 at <= 150 candidates per scan.

    .venv/bin/python scripts/bench_candidates.py [--runs 3] [--seed 0] [--real-ct DIR]
    .venv/bin/python scripts/bench_candidates.py --sensitivity DIR [--jobs 2] [--no-timing]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

STEPS = ("read", "lung", "resample", "solid", "subsolid", "large_solid", "merge", "total")


def _run_once(path: str) -> dict[str, Any]:
    """One study end to end in this (fresh) process: wall / CPU seconds per step, peak RSS."""
    from nodule.candidates import detect_candidates
    from nodule.io import read_volume
    from nodule.lung import segment_lungs

    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    volume = read_volume(path)
    wall["read"], cpu["read"] = time.perf_counter() - t0, time.process_time() - c0
    t, c = time.perf_counter(), time.process_time()
    lung = segment_lungs(volume)
    wall["lung"], cpu["lung"] = time.perf_counter() - t, time.process_time() - c
    # the detector steps: wall seconds from the result, CPU seconds of the whole call
    c = time.process_time()
    result = detect_candidates(volume, lung)
    cpu_detect = time.process_time() - c
    for step in ("resample", "solid", "subsolid", "large_solid", "merge"):
        wall[step] = result.seconds[step]
    wall["total"] = time.perf_counter() - t0
    cpu["detect"] = cpu_detect
    cpu["total"] = time.process_time() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"wall": wall, "cpu": cpu, "peak_mb": peak_mb, "n": len(result.candidates), "shape": volume.shape}


def _timed(path: Path, runs: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = []
    for _ in range(runs):
        with ctx.Pool(1) as pool:
            out.append(pool.apply(_run_once, (str(path),)))
    med = {s: statistics.median(r["wall"][s] for r in out) for s in STEPS}
    cpu = {s: statistics.median(r["cpu"][s] for r in out) for s in ("read", "lung", "detect", "total")}
    return {
        "wall": med,
        "cpu": cpu,
        "peak_mb": max(r["peak_mb"] for r in out),
        "n": out[0]["n"],
        "shape": out[0]["shape"],
        "totals": [round(r["wall"]["total"], 2) for r in out],
    }


def _print_timing(name: str, res: dict[str, Any]) -> None:
    print(f"\n{name}: shape {res['shape']}, {res['n']} candidates, runs (total s): {res['totals']}")
    print("  median wall s: " + ", ".join(f"{s} {res['wall'][s]:.2f}" for s in STEPS))
    print("  median CPU s:  " + ", ".join(f"{s} {v:.2f}" for s, v in res["cpu"].items()))
    print(f"  peak RSS {res['peak_mb']:.0f} MB")


def sensitivity(folder: Path, jobs: int, out: Path) -> None:
    """Candidates of every scan of a LUNA16-layout folder, scored against its annotations."""
    from nodule.candidates.batch import run_batch
    from nodule.data.luna16 import read_annotations
    from nodule.evaluation.froc import evaluate_froc

    pd.set_option("display.width", 200)
    t = time.perf_counter()
    result = run_batch([folder], out, jobs=jobs)
    seconds = time.perf_counter() - t
    ok = result.summary[result.summary["status"] == "ok"]
    uids = ok["seriesuid"].astype(str).tolist()
    annotations = read_annotations(folder / "annotations.csv")
    annotations = annotations[annotations["seriesuid"].isin(uids)].reset_index(drop=True)
    res = evaluate_froc(result.candidates, annotations, seriesuids=uids, n_bootstrap=0, max_marks_per_scan=None)
    per_scan = ok["n_candidates"].astype(float)
    print(f"\nsensitivity on {folder}: {len(uids)} scans ({len(result.summary) - len(uids)} failed), {seconds:.0f} s")
    print(f"  nodules {res.n_nodules}, hit {res.n_hits}: sensitivity {res.n_hits / max(res.n_nodules, 1):.3f}")
    print(f"  candidates per scan: mean {per_scan.mean():.1f}, max {per_scan.max():.0f}")
    for d in ("solid", "subsolid", "large_solid"):
        print(f"  {d}: mean {ok[f'n_{d}'].astype(float).mean():.1f} per scan before merging")
    nodules = res.nodules
    hit_col = next((c for c in ("hit", "detected", "is_hit") if c in nodules.columns), None)
    if hit_col is not None:
        missed = nodules[~nodules[hit_col].astype(bool)]
        extra = [c for c in ("nodule_type", "attachment", "diameter_mm") if c in annotations.columns]
        if len(missed):
            merged = missed.merge(annotations, on=["seriesuid", "coordX", "coordY", "coordZ"], how="left", suffixes=("", "_a"))
            cols = ["seriesuid", "coordX", "coordY", "coordZ", *[c for c in extra if c in merged.columns]]
            print("  missed:\n" + merged[cols].to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-ct", type=Path, default=None, help="DICOM folder (default $NODULE_DATA/real_ct/...)")
    parser.add_argument("--synthetic", type=Path, default=None, help="a full synthetic .mhd (default: generate one)")
    parser.add_argument("--sensitivity", type=Path, default=None, help="LUNA16-layout folder with annotations.csv")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()

    if not args.no_timing:
        from nodule.paths import data_dir

        with tempfile.TemporaryDirectory() as tmp:
            synthetic = args.synthetic
            if synthetic is None:
                from nodule.data.phantom import generate_phantom
                from nodule.io import write_volume

                scan = generate_phantom(seed=args.seed, index=0, preset="full")
                synthetic = write_volume(scan.volume, Path(tmp) / f"{scan.volume.series_uid}.mhd")
            _print_timing("full synthetic scan", _timed(Path(synthetic), args.runs))
            real = args.real_ct or data_dir() / "real_ct" / "cptac-lscc-c3n-00247"
            if real.exists():
                _print_timing("real CT", _timed(real, args.runs))
    if args.sensitivity is not None:
        with tempfile.TemporaryDirectory() as tmp:
            sensitivity(args.sensitivity, args.jobs, Path(tmp) / "candidates.csv")


if __name__ == "__main__":
    main()
