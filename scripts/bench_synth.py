"""Benchmark of ``nodule synth``: time per scan (one core), what dominates, disk size per scan.

Target: one ``full`` scan in under 30 s on one core; ``small`` in about a second.

    nice python scripts/bench_synth.py --scans 3 --preset full [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

from nodule.data.layout import read_sidecars
from nodule.data.phantom import generate_phantom
from nodule.data.synth import run_synth


def main() -> None:
    """Run the benchmark and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--preset", default="full", choices=["small", "full"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="dataset folder (default: a temporary one)")
    parser.add_argument("--profile", action="store_true", help="profile one scan and print the top functions")
    args = parser.parse_args()

    generate_phantom(0, 0, "small", shape_bank=None)  # numba compile / import warm-up
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "set"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        run_synth(out, args.scans, args.seed, args.preset, jobs=1, shapes="ellipsoid", progress=False)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        sizes = []
        for rec in read_sidecars(out):
            uid, k = rec["scan"]["seriesuid"], rec["scan"]["index"] % 10
            files = list((out / f"subset{k}").glob(f"{uid}.*"))
            sizes.append(sum(f.stat().st_size for f in files if f.suffix != ".json"))
            s = rec["scan"]
            print(
                f"scan {s['index']}: {s['size_z']} x {s['size_y']} x {s['size_x']}, "
                f"{s['spacing_x']:.3f} mm x {s['spacing_z']:.3f} mm, {s['scanner_kernel']}, "
                f"noise {s['scanner_noise_hu']:.0f} HU, {sizes[-1] / 1e6:.1f} MB"
            )
    n = max(args.scans, 1)
    print(f"{args.preset}: {cpu / n:.2f} s CPU per scan ({wall / n:.2f} s wall), "
          f"{sum(sizes) / n / 1e6:.1f} MB per scan (.mhd + .zraw)")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        generate_phantom(args.seed, 0, args.preset)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        print(buf.getvalue())


if __name__ == "__main__":
    main()
