"""Merging of candidates from several detectors that lie close together."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def _greedy_groups(pairs: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """Group of each of ``n`` candidates by greedy suppression: in ``order`` (best first),
    an unassigned candidate starts a group and takes its unassigned partners in ``pairs``."""
    partners: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs.tolist():
        partners[a].append(b)
        partners[b].append(a)
    group = np.full(n, -1, dtype=np.int64)
    for i in order.tolist():
        if group[i] >= 0:
            continue
        group[i] = i
        for j in partners[i]:
            if group[j] < 0:
                group[j] = i
    return group


def merge_candidates(
    candidates: pd.DataFrame,
    distance_mm: float,
    position_columns: tuple[str, str, str] = ("coordX", "coordY", "coordZ"),
    radius_fraction: float = 0.0,
    chain: bool = True,
) -> pd.DataFrame:
    """Merge candidates closer than ``distance_mm`` (single linkage: chains merge too;
    ``chain=False``: greedy, best score first, each group holds only candidates close
    to its best one).

    With ``radius_fraction > 0`` two candidates also merge when they are closer than
    that fraction of the larger one's radius (``diameter_mm / 2``): the several peaks a
    large nodule gives become one candidate.

    Each group becomes one candidate: the row of its highest ``score`` (position and
    features), with ``detectors`` the sorted, ``+``-joined set of the group's
    ``detector`` values and ``n_merged`` the group size.

    Args:
        candidates: rows with ``score``, ``detector`` and the position columns (mm).
        distance_mm: merge distance in mm.
        position_columns: the coordinate columns, in mm.
        radius_fraction: size-aware merging (needs a ``diameter_mm`` column); 0: off.
        chain: single linkage (a chain of close pairs is one group), or (False) greedy
            non-maximum suppression: a nodule candidate next to a vessel candidate that
            is itself next to a stronger one is not swallowed by the chain.

    Returns:
        The merged table, best score first, with a fresh index; ``detector`` is replaced
        by ``detectors`` and ``n_merged``.
    """
    table = candidates.reset_index(drop=True)
    n = len(table)
    if n == 0:
        out = table.drop(columns=["detector"]).copy()
        out["detectors"] = pd.Series(dtype=object)
        out["n_merged"] = pd.Series(dtype=np.int64)
        return out
    points = table[list(position_columns)].to_numpy(dtype=np.float64)
    if radius_fraction > 0:
        radius = 0.5 * table["diameter_mm"].to_numpy(dtype=np.float64) * radius_fraction
        reach = max(distance_mm, float(radius.max()))
        pairs = cKDTree(points).query_pairs(reach, output_type="ndarray")
        if len(pairs):
            d = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
            limit = np.maximum(distance_mm, np.maximum(radius[pairs[:, 0]], radius[pairs[:, 1]]))
            pairs = pairs[d < limit]
    else:
        pairs = cKDTree(points).query_pairs(distance_mm, output_type="ndarray")
    order = np.lexsort((np.arange(n), -table["score"].to_numpy()))
    if chain:
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, group = connected_components(graph, directed=False)
    else:
        group = _greedy_groups(pairs, order, n)
    first = pd.Series(order).groupby(group[order]).first().to_numpy()
    detectors = table["detector"].astype(str).groupby(group).agg(lambda s: "+".join(sorted(set(s))))
    sizes = np.bincount(group)
    out = table.iloc[first].drop(columns=["detector"]).copy()
    out["detectors"] = detectors.loc[group[first]].to_numpy()
    out["n_merged"] = sizes[group[first]]
    out = out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    return out


def keep_reserved(
    ranked: pd.DataFrame,
    reserved: pd.DataFrame,
    distance_mm: float,
    limit: int,
    position_columns: tuple[str, str, str] = ("coordX", "coordY", "coordZ"),
) -> pd.DataFrame:
    """``limit`` candidates: every ``reserved`` one (merged tables, :func:`merge_candidates`),
    then the best of ``ranked`` farther than ``distance_mm`` from all of them.

    A ranked candidate within ``distance_mm`` of a reserved one is dropped and its
    ``detectors`` join that one's. The result is sorted by ``score`` (best first), with a
    fresh index; reserved candidates beyond ``limit`` are cut, the worst first.
    """
    reserved = reserved.sort_values("score", ascending=False, kind="stable").iloc[:limit].reset_index(drop=True)
    if len(reserved) == 0:
        return ranked.iloc[:limit].reset_index(drop=True)
    ranked = ranked.reset_index(drop=True)
    if len(ranked):
        dist, nearest = cKDTree(reserved[list(position_columns)].to_numpy(np.float64)).query(
            ranked[list(position_columns)].to_numpy(np.float64)
        )
        close = dist < distance_mm
        names = [set(str(d).split("+")) for d in reserved["detectors"]]
        for i, j in zip(np.flatnonzero(close).tolist(), nearest[close].tolist(), strict=True):
            names[j] |= set(str(ranked.at[i, "detectors"]).split("+"))
        reserved["detectors"] = ["+".join(sorted(n)) for n in names]
        ranked = ranked[~close].iloc[: limit - len(reserved)]
    out = pd.concat([reserved, ranked], ignore_index=True) if len(ranked) else reserved
    return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
