"""Benchmark of ``nodule detect``: seconds per study by stage, peak memory, and throughput.

Per study: each run happens in a fresh process (so that its peak resident memory is the
study's own) that has loaded the model and drawn one picture first, as a batch worker has
after its first study (matplotlib's import and fonts cost about 0.5 s once a process), with
the shipped default model, on a ``full`` synthetic scan (generated
once, seeded, cached under ``$NODULE_CACHE/bench``) and on each real scan of
``$NODULE_DATA/real_ct``; the stages of :mod:`nodule.detection.pipeline` (read, lung,
candidates, patches, model, merge, overlays) and the total, median of ``--runs`` runs.

Throughput: one batch of ``--batch`` ``full`` synthetic scans through
:func:`nodule.detect` with one worker, then with two, each into a fresh folder: studies
per hour and the ratio.

Targets (2-core machine): under 10 s per study end to end; peak memory under 3 GB per
worker; at least 1.8 times the studies per hour with two workers as with one.

    .venv/bin/python scripts/bench_detect.py [--runs 3] [--batch 10] [--no-throughput]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import fresh_runs

STAGES = ("read", "lung", "candidates", "patches", "model", "merge", "overlays", "total")


def _run_once(path: str) -> dict[str, Any]:
    """One study through the detection pipeline in this (fresh) process."""
    import torch

    from nodule.detection.pipeline import DetectSettings, run_study
    from nodule.detection.studies import StudyRef
    from nodule.models.bundle import load_model

    torch.set_num_threads(2)
    model = load_model()
    _warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_study(StudyRef(Path(path)), model, DetectSettings(device="cpu"), Path(tmp))
    row = outcome.row
    if row["status"] != "ok":
        raise RuntimeError(row["reason"])
    seconds = {s: float(row[f"seconds_{s}"]) for s in STAGES}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"seconds": seconds, "peak_mb": peak_mb, "above": row["n_above_threshold"], "n": row["n_findings"]}


def _warm_up() -> None:
    """What a batch worker pays once, not per study: matplotlib's import and fonts (the first
    overlay of a process takes about 0.5 s more than the next ones)."""
    import numpy as np

    from nodule.io import Volume
    from nodule.viz import render_finding

    tiny = Volume(np.full((8, 8, 8), -1000, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with tempfile.TemporaryDirectory() as tmp:
        render_finding(tiny, (4.0, 4.0, 4.0), 4.0, Path(tmp) / "warm.png", title="warm-up")


def _timed(path: Path, runs: int) -> dict[str, Any]:
    out = fresh_runs(_run_once, str(path), runs)
    return {
        "seconds": {s: statistics.median(r["seconds"][s] for r in out) for s in STAGES},
        "peak_mb": max(r["peak_mb"] for r in out),
        "above": out[0]["above"],
        "n": out[0]["n"],
    }


def _synthetic(folder: Path, n: int) -> list[Path]:
    """``n`` seeded ``full`` phantoms as .mhd (made once)."""
    from nodule.data.phantom import generate_phantom
    from nodule.io import write_volume

    paths = []
    for i in range(n):
        path = folder / f"bench_full_{i}.mhd"
        if not path.exists():
            scan = generate_phantom(seed=4242, index=i, preset="full")
            write_volume(scan.volume, path)
        paths.append(path)
    return paths


def _throughput(studies: list[Path], workers: int) -> float:
    from nodule.detection import DetectSettings, detect

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = detect(studies, Path(tmp) / "out", settings=DetectSettings(device="cpu"), workers=workers, progress=False)
        seconds = time.perf_counter() - start
    if result.n_ok != len(studies):
        raise RuntimeError(f"{len(studies) - result.n_ok} studies failed")
    return 3600.0 * len(studies) / seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; exit 1 when a target is missed."""
    from nodule.paths import cache_dir, data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args(argv)

    folder = cache_dir("bench", "detect")
    folder.mkdir(parents=True, exist_ok=True)
    synthetic = _synthetic(folder, max(args.batch, 1))
    real = sorted(p for p in (data_dir() / "real_ct").glob("*") if p.is_dir())
    studies = [("full synthetic", synthetic[0])] + [(p.name, p) for p in real]
    print(f"seconds per study (median of {args.runs} runs, each in a fresh process), default model, CPU")
    print("| study | " + " | ".join(STAGES) + " | peak MB | findings (>= threshold) |")
    print("|---" * (len(STAGES) + 3) + "|")
    missed = []
    for name, path in studies:
        r = _timed(path, args.runs)
        cells = " | ".join(f"{r['seconds'][s]:.2f}" for s in STAGES)
        print(f"| {name} | {cells} | {r['peak_mb']:.0f} | {r['n']} ({r['above']}) |", flush=True)
        if r["seconds"]["total"] >= 10.0 or r["peak_mb"] >= 3072:
            missed.append(name)
    if not args.no_throughput:
        one = _throughput(synthetic, 1)
        two = _throughput(synthetic, 2)
        print(f"throughput on {len(synthetic)} full synthetic scans: 1 worker {one:.0f} studies/h, "
              f"2 workers {two:.0f} studies/h, ratio {two / one:.2f} (target >= 1.8)")
        if two / one < 1.8:
            missed.append("throughput")
    print("targets met" if not missed else f"targets missed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
