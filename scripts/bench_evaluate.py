"""Benchmark of the LUNA16 evaluator at candidates-V2 scale (888 scans, ~750,000 detections).

Builds a seeded synthetic submission from the real LUNA16 tables, then times
``evaluate_froc`` without bootstrap and with 1000 bootstraps, with the official
100-marks-a-scan cap and without it (the harder case: every detection matched and
ranked), and the whole ``nodule evaluate`` path (read CSV, evaluate, write the report).

Targets: under 30 s without bootstrap, under 2 minutes with 1000 bootstraps.

    .venv/bin/python scripts/bench_evaluate.py [--detections 750000] [--seed 0] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from nodule.data.luna16 import (
    read_annotations,
    read_excluded,
    read_seriesuids,
    read_submission,
    write_submission,
)
from nodule.evaluation.froc import evaluate_froc
from nodule.evaluation.report import evaluate_files, write_report
from nodule.evaluation.sample import make_sample_submission
from nodule.paths import luna16_dir


class _Timer:
    """Wall-clock and process CPU seconds of a block (the CPU figure is robust to a shared machine)."""

    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU"


def main() -> None:
    """Run the benchmark and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=750_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    folder = luna16_dir()
    uids = read_seriesuids(folder / "seriesuids.csv")
    annotations = read_annotations(folder / "annotations.csv")
    excluded = read_excluded(folder / "annotations_excluded.csv")
    with _Timer() as t:
        base = make_sample_submission(annotations, excluded, uids, args.seed, fp_per_scan=0.0)
        fp_per_scan = max(args.detections - len(base), 0) / len(uids)
        sub = make_sample_submission(
            annotations, excluded, uids, args.seed, fp_per_scan=fp_per_scan
        )
    print(f"synthetic submission: {len(sub)} detections over {len(uids)} scans ({t})")

    for cap in (100, None):
        with _Timer() as t0:
            r = evaluate_froc(
                sub, annotations, excluded, uids, 0, args.seed, max_marks_per_scan=cap
            )
        with _Timer() as tb:
            rb = evaluate_froc(
                sub, annotations, excluded, uids, args.bootstrap, args.seed, max_marks_per_scan=cap
            )
        print(
            f"max_marks_per_scan={cap}: {r.n_detections} detections evaluated, CPM {r.cpm:.4f}, "
            f"CI {rb.cpm_ci95}\n  evaluate_froc, no bootstrap: {t0}\n"
            f"  evaluate_froc, {args.bootstrap} bootstraps: {tb}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submission.csv"
        with _Timer() as t:
            write_submission(sub, path)
        print(f"write_submission: {t}")
        with _Timer() as t:
            submission = read_submission(path)
        print(f"read_submission: {t}")
        with _Timer() as t:
            result = evaluate_froc(submission, annotations, excluded, uids, 0, args.seed)
            write_report(result, Path(tmp) / "report")
        print(f"evaluate_froc + write_report (no bootstrap): {t}")
        with _Timer() as t, contextlib.redirect_stdout(io.StringIO()):
            evaluate_files(
                path,
                folder / "annotations.csv",
                Path(tmp) / "out",
                folder / "annotations_excluded.csv",
                folder / "seriesuids.csv",
                bootstrap=0,
                seed=args.seed,
            )
        print(f"nodule evaluate (read files, evaluate, write report; no bootstrap): {t}")


if __name__ == "__main__":
    main()
