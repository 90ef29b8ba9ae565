"""Shared piece of the benchmarks: a measurement repeated in fresh processes."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def fresh_runs(run: Callable[[str], dict[str, Any]], path: str, runs: int) -> list[dict[str, Any]]:
    """``run(path)`` ``runs`` times, each in a new (spawned) process, so that each run's peak
    resident memory and caches are its own."""
    ctx = mp.get_context("spawn")
    out = []
    for _ in range(runs):
        with ctx.Pool(1) as pool:
            out.append(pool.apply(run, (path,)))
    return out
