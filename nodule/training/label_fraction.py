"""Labels as a scarce resource: which training scans keep their labels.

A labelled fraction is chosen by scan, per fold, seeded, and stratified so that every
fold keeps at least one scan with a nodule when it has any (:func:`labelled_scans`).
The other training scans are *unlabelled*: their candidates enter training only through
pseudo-labels, and their hidden labels serve only to measure pseudo-label quality
(:class:`~nodule.training.datamodule.Luna16DataModule`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np


def check_label_fraction(fraction: float) -> None:
    """Refuse a labelled fraction outside (0, 1] (NaN included).

    Raises:
        ValueError: naming the value.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")


def labelled_scans(
    fold_scans: Mapping[int, Sequence[str]],
    with_nodules: Collection[str],
    fraction: float,
    seed: int = 0,
) -> set[str]:
    """The scans whose labels are used, ``fraction`` of each fold's scans.

    Each fold keeps ``max(1, round(fraction * n))`` of its ``n`` scans (all of them when
    ``fraction`` is 1), drawn with a generator seeded by ``(seed, fold)`` so that a fold's
    choice does not depend on the other folds; the first is drawn among the fold's scans
    with a nodule (when it has any), the rest among the remaining scans.

    Args:
        fold_scans: ``{fold: scans}``.
        with_nodules: scans with at least one included nodule.
        fraction: labelled fraction in (0, 1].
        seed: seed of the draw.

    Returns:
        The labelled scans of every fold.

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    check_label_fraction(fraction)
    nodular = set(with_nodules)
    out: set[str] = set()
    for fold, scans in sorted(fold_scans.items()):
        scans = sorted(set(scans))
        if fraction >= 1.0:
            out.update(scans)
            continue
        if not scans:
            continue
        rng = np.random.default_rng([seed, fold])
        want = max(1, round(fraction * len(scans)))
        first_pool = [s for s in scans if s in nodular] or scans
        first = first_pool[int(rng.integers(len(first_pool)))]
        rest = [s for s in scans if s != first]
        chosen = [first, *(rest[i] for i in rng.permutation(len(rest))[: want - 1])]
        out.update(chosen)
    return out
