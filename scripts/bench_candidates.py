"""Benchmark of the candidate stage: time of each step and peak memory, and sensitivity
(with 95 % Wilson intervals).

Timing: each run happens in a fresh process (so that its peak resident memory is the
study's own) on a ``full`` synthetic scan written as .mhd (generated once, seeded) and
on the real CT; steps: read, lung mask, crop + resample, solid, subsolid, large solid,
learned (solid, subsolid, large solid and learned run side by side in threads: each step's
wall seconds are its own, and they overlap), rank (context features and the learned ranker), merge. Wall and CPU
seconds are reported per step (CPU seconds are robust to a shared machine); the median of
``--runs`` runs.

Sensitivity (``--sensitivity DIR``): candidates for every scan of a LUNA16-layout
folder with ``annotations.csv`` (as ``nodule synth`` writes), scored with the LUNA16
matching (hit: within the nodule's radius): sensitivity overall, per detector, per
nodule type (solid / part-solid / ground-glass / calcified), size (3-5 / 5-10 / 10-20 /
20-30 mm) and attachment (isolated / juxtavascular / juxtapleural / perifissural, from
the folder's ``manifest.csv``), candidates per scan, and the misses. ``--candidates CSV``
scores an existing candidate CSV of the folder instead of detecting. ``--uncapped``
keeps every merged candidate (no ``max_per_scan``): the detectors' own sensitivity,
before the ranker's cut, then the same scored after the cut (the learned detector's
reserved places, then the best by the ranker, ``max_per_scan`` in all) from the same run; ``--limit N`` takes the first N scans (by file name)
of each subset folder given with ``--subsets``.

Targets: under 8 s per scan end to end on the 2-core machine, peak memory under 3 GB;
sensitivity >= 0.97 at <= 150 candidates per scan.

    .venv/bin/python scripts/bench_candidates.py [--runs 3] [--seed 0] [--real-ct DIR]
    .venv/bin/python scripts/bench_candidates.py --sensitivity DIR [--jobs 2] [--no-timing] [--candidates CSV]
        [--uncapped] [--subsets 0,1] [--limit N]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchlib import fresh_runs

from nodule.candidates.detect import DETECTORS

STEPS = ("read", "lung", "resample", "solid", "subsolid", "large_solid", "learned", "rank", "merge", "total")


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
    for step in STEPS[2:-1]:
        wall[step] = result.seconds.get(step, 0.0)
    wall["total"] = time.perf_counter() - t0
    cpu["detect"] = cpu_detect
    cpu["total"] = time.process_time() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"wall": wall, "cpu": cpu, "peak_mb": peak_mb, "n": len(result.candidates), "shape": volume.shape}


def _timed(path: Path, runs: int) -> dict[str, Any]:
    out = fresh_runs(_run_once, str(path), runs)
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


SIZE_BINS = ((3.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 30.0))
TYPES = ("solid", "part-solid", "ground-glass", "calcified")
ATTACHMENTS = ("isolated", "juxtavascular", "juxtapleural", "perifissural")


def _with_manifest(nodules: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Each nodule with the ``nodule_type`` and ``attachment`` of the nearest manifest finding of its scan."""
    if "attachment" not in manifest.columns and "placement" in manifest.columns:
        manifest = manifest.rename(columns={"placement": "attachment"})  # nodule insert's name
    out = nodules.copy()
    out["nodule_type"] = ""
    out["attachment"] = ""
    coords = ["coordX", "coordY", "coordZ"]
    for uid, rows in out.groupby("seriesuid"):
        found = manifest[manifest["seriesuid"].astype(str) == str(uid)]
        if found.empty:
            continue
        d = np.linalg.norm(rows[coords].to_numpy(float)[:, None] - found[coords].to_numpy(float)[None], axis=2)
        best = found.iloc[d.argmin(axis=1)]
        for c in ("nodule_type", "attachment"):
            if c in found.columns:
                out.loc[rows.index, c] = best[c].astype(str).to_numpy()
    return out


def _detectors_hitting(nodules: pd.DataFrame, candidates: pd.DataFrame) -> pd.Series:
    """Per nodule, the ``+``-joined detectors of every candidate within its radius (LUNA16 hit)."""
    coords = ["coordX", "coordY", "coordZ"]
    by_uid = {str(u): g for u, g in candidates.groupby("seriesuid")}
    hit_by: list[str] = []
    for _, n in nodules.iterrows():
        c = by_uid.get(str(n["seriesuid"]))
        if c is None:
            hit_by.append("")
            continue
        d = np.linalg.norm(c[coords].to_numpy(float) - n[coords].to_numpy(float), axis=1)
        near = c.loc[d < n["diameter_mm"] / 2, "detectors"].astype(str)
        hit_by.append("+".join(sorted({x for s in near for x in s.split("+")})))
    return pd.Series(hit_by, index=nodules.index, dtype=object)


def _with_ci(hits: int, n: int) -> str:
    """``0.922 [0.830, 0.966]``: the proportion with its 95 % Wilson interval."""
    from nodule.evaluation.proportion import wilson

    p = wilson(hits, n)
    return f"{p.value:.3f} [{p.low:.3f}, {p.high:.3f}]"


def breakdown(nodules: pd.DataFrame) -> list[str]:
    """Lines of the sensitivity breakdown: overall, per detector, type, size and attachment.

    Args:
        nodules: one row per nodule with ``hit``, ``diameter_mm``, ``nodule_type``,
            ``attachment`` and ``hit_by`` (the detectors hitting it).

    Returns:
        Printable lines.
    """

    def line(name: str, sel: pd.Series) -> str:
        n = int(sel.sum())
        h = int(nodules.loc[sel, "hit"].astype(bool).sum())
        return f"  {name:<16s} {h:4d} / {n:<4d} " + (_with_ci(h, n) if n else "  -")

    everything = pd.Series(True, index=nodules.index)
    lines = ["overall:", line("all", everything), "per detector (nodules hit by its candidates):"]
    for d in DETECTORS:
        n = len(nodules)
        h = int(nodules["hit_by"].str.split("+").apply(lambda s, d=d: d in s).sum())
        lines.append(f"  {d:<16s} {h:4d} / {n:<4d} " + (_with_ci(h, n) if n else "  -"))
    lines.append("per type:")
    lines += [line(t, nodules["nodule_type"] == t) for t in TYPES]
    lines.append("per size (mm):")
    size = nodules["diameter_mm"].astype(float)
    lines += [line(f"{a:g}-{b:g}", (size >= a) & (size < b)) for a, b in SIZE_BINS]
    lines.append("per attachment:")
    lines += [line(a, nodules["attachment"] == a) for a in ATTACHMENTS]
    return lines


def _cap(table: pd.DataFrame, per_scan: int) -> pd.DataFrame:
    """The ``per_scan`` candidates of each scan that the stage keeps: the learned detector's
    (their places are reserved, :func:`nodule.candidates.merge.keep_reserved`) and then the
    best of the others by ``probability``."""
    reserved = table["detectors"].astype(str).str.split("+").apply(lambda d: "learned" in d)
    order = table.assign(_first=~reserved).sort_values(
        ["seriesuid", "_first", "probability"], ascending=[True, True, False], kind="stable"
    )
    return order.groupby("seriesuid", sort=False).head(per_scan).drop(columns="_first").reset_index(drop=True)


def _inputs(folder: Path, subsets: list[int] | None, limit: int | None) -> list[Path]:
    """The scans (or the whole folder) to detect on."""
    if subsets is None and limit is None:
        return [folder]
    names = [f"subset{k}" for k in subsets] if subsets is not None else sorted(
        p.name for p in folder.glob("subset*") if p.is_dir()
    )
    out: list[Path] = []
    for name in names:
        files = sorted((folder / name).glob("*.mhd"))
        out += files[:limit] if limit is not None else files
    return out


def sensitivity(
    folder: Path,
    jobs: int,
    out: Path,
    candidates: Path | None = None,
    uncapped: bool = False,
    subsets: list[int] | None = None,
    limit: int | None = None,
) -> None:
    """Candidates of every scan of a LUNA16-layout folder, scored against its annotations.

    Prints the sensitivity overall, per detector, per nodule type, size and attachment
    (from ``manifest.csv`` when the folder has one), candidates per scan and the misses.

    Args:
        folder: LUNA16-layout folder with ``annotations.csv`` (``nodule synth`` output).
        jobs: parallel processes.
        out: where the candidate CSV is written.
        candidates: an existing candidate CSV of these scans to score instead of detecting.
        uncapped: keep every merged candidate and score before and after the cap.
        subsets: only these subset folders (None: all).
        limit: only the first this many scans of each subset folder (None: all).
    """
    from nodule.data.luna16 import read_annotations, read_seriesuids
    from nodule.evaluation.froc import evaluate_froc

    pd.set_option("display.width", 200)
    t = time.perf_counter()
    from nodule.candidates.detect import CandidateConfig

    cap = CandidateConfig().max_per_scan
    if candidates is None:
        from nodule.candidates.batch import run_batch

        config = CandidateConfig(max_per_scan=10**9) if uncapped else None
        result = run_batch(_inputs(folder, subsets, limit), out, jobs=jobs, config=config)
        ok = result.summary[result.summary["status"] == "ok"]
        uids = ok["seriesuid"].astype(str).tolist()
        n_failed = len(result.summary) - len(uids)
        table = result.candidates
    else:
        table = pd.read_csv(candidates, dtype={"seriesuid": str})
        uids = read_seriesuids(folder / "seriesuids.csv")
        n_failed = 0
        ok = None
    seconds = time.perf_counter() - t
    annotations = read_annotations(folder / "annotations.csv")
    annotations = annotations[annotations["seriesuid"].isin(uids)].reset_index(drop=True)
    excluded_path = folder / "annotations_excluded.csv"
    excluded = read_annotations(excluded_path) if excluded_path.exists() else None
    if uncapped:
        before = evaluate_froc(
            table, annotations, excluded=excluded, seriesuids=uids, n_bootstrap=0, max_marks_per_scan=None
        )
        n_before = table.groupby("seriesuid").size().reindex(uids, fill_value=0).astype(float)
        print(
            f"\nbefore the cap: {before.n_hits} / {before.n_nodules} nodules hit "
            f"({before.n_hits / max(before.n_nodules, 1):.3f}), merged candidates per scan: "
            f"mean {n_before.mean():.1f}, max {n_before.max():.0f}; after the cap of {cap}:"
        )
        table = _cap(table, cap)
    res = evaluate_froc(
        table, annotations, excluded=excluded, seriesuids=uids, n_bootstrap=0, max_marks_per_scan=None
    )
    per_scan = table.groupby("seriesuid").size().reindex(uids, fill_value=0).astype(float)
    print(f"\nsensitivity on {folder}: {len(uids)} scans ({n_failed} failed), {seconds:.0f} s")
    print(f"  candidates per scan: mean {per_scan.mean():.1f}, max {per_scan.max():.0f}")
    if ok is not None:
        for d in ("solid", "subsolid", "large_solid"):
            print(f"  {d}: mean {ok[f'n_{d}'].astype(float).mean():.1f} per scan before merging")
        print(f"  seconds per scan (total): mean {ok['seconds_total'].astype(float).mean():.1f}")
    manifest_path = folder / "manifest.csv"
    manifest = pd.read_csv(manifest_path, dtype={"seriesuid": str}) if manifest_path.exists() else pd.DataFrame(
        columns=["seriesuid", "coordX", "coordY", "coordZ"]
    )
    if "kind" in manifest.columns:
        manifest = manifest[manifest["kind"] == "nodule"]
    nodules = _with_manifest(res.nodules, manifest)
    nodules["hit_by"] = _detectors_hitting(nodules, table)
    print("\n".join(breakdown(nodules)))
    missed = nodules[~nodules["hit"].astype(bool)]
    if len(missed):
        cols = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "nodule_type", "attachment"]
        print("  missed:\n" + missed[cols].to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-ct", type=Path, default=None, help="DICOM folder (default $NODULE_DATA/real_ct/...)")
    parser.add_argument("--synthetic", type=Path, default=None, help="a full synthetic .mhd (default: generate one)")
    parser.add_argument("--sensitivity", type=Path, default=None, help="LUNA16-layout folder with annotations.csv")
    parser.add_argument("--candidates", type=Path, default=None, help="score this candidate CSV instead of detecting")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--uncapped", action="store_true", help="score every candidate, then the capped ones")
    parser.add_argument("--subsets", default=None, help="comma-separated subset numbers (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="first N scans of each subset folder")
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
            subsets = [int(k) for k in args.subsets.split(",")] if args.subsets else None
            sensitivity(
                args.sensitivity, args.jobs, Path(tmp) / "candidates.csv", args.candidates,
                uncapped=args.uncapped, subsets=subsets, limit=args.limit,
            )


if __name__ == "__main__":
    main()
