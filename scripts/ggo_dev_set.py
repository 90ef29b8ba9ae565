"""A development set rich in subsolid nodules, for tuning the subsolid detector.

Ground glass is 9 % of the generator's nodules, so the sets of the split hold a dozen or
two of them: too few to tell a detector change from noise, and every set that measures
the candidate stage must stay untouched by its tuning. This script makes ``full``
phantoms whose nodules are drawn with more ground glass and part-solid (:data:`TYPES`),
everything else as ``nodule synth`` draws it, into ``$NODULE_CACHE/dev/ggo_seed<seed>``.
It is no data set of the split and nothing learns from it. A detector that never saw it
can be measured on it once; variants tuned on it must then be measured on held-out sets
of the split. The type probabilities are ``nodule synth``'s ``types`` (recorded in the
folder's ``generator.json``; a folder made with other ones is refused).

    python scripts/ggo_dev_set.py --scans 48 --seed 8800
    python scripts/bench_candidates.py --no-timing --uncapped \\
        --sensitivity $NODULE_CACHE/dev/ggo_seed8800

Resumable (a scan already written is skipped), deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nodule.data import phantom
from nodule.data.synth import ShapeSource, run_synth
from nodule.paths import cache_dir

TYPES = {"solid": 0.2, "calcified": 0.0, "part-solid": 0.2, "ground-glass": 0.6}


def make_dev_set(
    out: Path,
    scans: int,
    seed: int,
    preset: phantom.Preset = "full",
    types: dict[str, float] = TYPES,
    shapes: ShapeSource = "lidc",
    jobs: int = 1,
) -> Path:
    """Write ``scans`` phantoms of ``preset`` with nodule types drawn from ``types`` into ``out``.

    Raises:
        ValueError: ``out`` holds a set made with other parameters (other types among them).
    """
    run_synth(out, scans, seed=seed, preset=preset, jobs=jobs, shapes=shapes, progress=False, types=types)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=48)
    parser.add_argument("--seed", type=int, default=8800)
    parser.add_argument("--out", type=Path, default=None, help="default $NODULE_CACHE/dev/ggo_seed<seed>")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    out = args.out or cache_dir("dev", f"ggo_seed{args.seed}")
    print(make_dev_set(out, args.scans, args.seed, jobs=args.jobs))


if __name__ == "__main__":
    main()
