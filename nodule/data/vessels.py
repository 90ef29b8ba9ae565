"""Tubular structures of the phantom: branching trees and their sub-voxel rendering.

Trees (pulmonary arteries, veins, bronchi) grow by recursive partition of territory
points sampled inside a lung: a branch of ``n`` territory points has radius
``r_leaf * n ** (1/k)`` (Murray's law: r^k of a parent is the sum of its children's;
k = 3 in the ideal law, about 2.3-3 measured in pulmonary arteries),
runs from its parent's end toward the centroid of its points, and its points are split
in two by the plane through their centroid across their principal axis, which gives
asymmetric bifurcations that fill the lung. Branches are drawn as two slightly bent
capsules (tapered cylinders with round caps).

Capsules are rendered by :func:`paint_capsules` (numba): the occupancy of a voxel centre
is ``clip((r - d) / edge + 0.5, 0, 1)`` with ``d`` its distance to the capsule axis and
``edge`` the in-plane pixel size, so tubes are anti-aliased in-plane; the union of
capsules is their maximum. The phantom renders on a grid finer in z than the output and
averages slices, so thin vessels show partial volume along z as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Tree:
    """A branching tree.

    Attributes:
        start: (B, 3) world start point of each branch.
        end: (B, 3) world end point.
        radius: (B,) radius, mm.
        count: (B,) number of territory points (leaves) it feeds.
        parent: (B,) index of the parent branch, -1 for the root.
    """

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    count: np.ndarray
    parent: np.ndarray


def grow_tree(
    root: np.ndarray,
    points: np.ndarray,
    r_leaf: float,
    rng: np.random.Generator,
    length_ratio: float = 12.0,
    murray_exponent: float = 3.0,
) -> Tree:
    """Grow a space-filling tree from ``root`` to the territory ``points``.

    Args:
        root: (3,) world start of the root branch (the hilum).
        points: (N, 3) territory points inside the lung; each becomes one leaf.
        r_leaf: radius of a terminal branch, mm.
        rng: random generator (branch length fractions).
        length_ratio: a branch is at most this many radii long (trunks are kept
            shorter: ``3 + 10 exp(-r / 1.5 mm)`` radii).
        murray_exponent: k of Murray's law (radius ``r_leaf * n ** (1/k)``); a smaller k
            gives fewer thin branches for the same trunk calibre.

    Returns:
        The tree, root first.
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    radii: list[float] = []
    counts: list[int] = []
    parents: list[int] = []
    stack: list[tuple[np.ndarray, np.ndarray, int]] = [(np.asarray(root, float), np.asarray(points, float), -1)]
    while stack:
        start, pts, parent = stack.pop()
        n = len(pts)
        r = r_leaf * n ** (1.0 / murray_exponent)
        idx = len(starts)
        if n == 1:
            end = pts[0]
        else:
            c = pts.mean(axis=0)
            dist = float(np.linalg.norm(c - start))
            ratio = min(length_ratio, 3.0 + 10.0 * np.exp(-r / 1.5))  # big trunks divide early
            length = min(dist * float(rng.uniform(0.35, 0.65)), ratio * r * float(rng.uniform(0.6, 1.2)))
            end = start + (c - start) / max(dist, 1e-6) * length
            sub = (pts if n <= 128 else pts[rng.choice(n, 128, replace=False)]) - c
            _, vecs = np.linalg.eigh(sub.T @ sub)
            proj = (pts - c) @ vecs[:, -1]
            side = proj > 0
            if side.all() or not side.any():
                side = np.arange(n) < n // 2
            stack.append((end, pts[side], idx))
            stack.append((end, pts[~side], idx))
        starts.append(start)
        ends.append(end)
        radii.append(r)
        counts.append(n)
        parents.append(parent)
    return Tree(
        start=np.asarray(starts, float),
        end=np.asarray(ends, float),
        radius=np.asarray(radii, float),
        count=np.asarray(counts, int),
        parent=np.asarray(parents, int),
    )


def tree_capsules(tree: Tree, rng: np.random.Generator, bend: float = 0.12, scale: float = 1.0) -> np.ndarray:
    """Capsules (M, 8) ``x0 y0 z0 x1 y1 z1 r0 r1`` of a tree, two bent halves per branch.

    Args:
        tree: the tree.
        rng: random generator (bends).
        bend: standard deviation of the mid-point shift, as a fraction of branch length.
        scale: radius multiplier (e.g. the outer wall of a bronchus).

    Returns:
        The capsules.
    """
    a, b = tree.start, tree.end
    d = b - a
    length = np.linalg.norm(d, axis=1, keepdims=True)
    shift = rng.normal(0.0, bend, size=a.shape) * length
    dn = d / np.maximum(length, 1e-9)
    shift -= (shift * dn).sum(axis=1, keepdims=True) * dn  # perpendicular only
    mid = 0.5 * (a + b) + shift
    r = tree.radius * scale
    parent_r = np.where(tree.parent >= 0, tree.radius[np.maximum(tree.parent, 0)] * scale, r)
    r_start = np.minimum(parent_r, r * 1.08)
    first = np.column_stack([a, mid, r_start, r])
    second = np.column_stack([mid, b, r, r * 0.94])
    return np.vstack([first, second])


def polyline_capsules(points: np.ndarray, radius: float | np.ndarray) -> np.ndarray:
    """Capsules (M, 8) along a polyline of (K, 3) points with radius per point or constant."""
    p = np.asarray(points, float)
    r = np.broadcast_to(np.asarray(radius, float), (len(p),))
    return np.column_stack([p[:-1], p[1:], r[:-1], r[1:]])


def offset_tree(tree: Tree, gap: float, radius_scale: float, min_count: int, rng: np.random.Generator) -> Tree:
    """A companion tree running beside ``tree`` (bronchi beside arteries).

    Each node is shifted perpendicular to its branch by ``artery radius + companion
    radius + gap``; the side is inherited from the parent, so the companion stays
    connected. Branches feeding fewer than ``min_count`` leaves are dropped.

    Args:
        tree: the tree to follow.
        gap: extra distance between the two walls, mm.
        radius_scale: companion radius as a fraction of the tree's.
        min_count: smallest branch kept (by leaf count).
        rng: random generator (side of the root).

    Returns:
        The companion tree (parents re-indexed).
    """
    nb = len(tree.radius)
    ref = np.zeros((nb, 3))
    first = rng.normal(size=3)
    for i in range(nb):
        d = tree.end[i] - tree.start[i]
        d /= max(float(np.linalg.norm(d)), 1e-9)
        v = first if tree.parent[i] < 0 else ref[tree.parent[i]]
        v = v - (v @ d) * d
        nv = float(np.linalg.norm(v))
        if nv < 1e-6:
            v = np.cross(d, [0.0, 0.0, 1.0]) + 1e-3
            nv = float(np.linalg.norm(v))
        ref[i] = v / nv
    keep = tree.count >= min_count
    r = tree.radius * radius_scale
    shift = (tree.radius + r * 1.25 + gap)[:, None]
    end = tree.end + ref * shift
    start = np.where(
        (tree.parent >= 0)[:, None], end[np.maximum(tree.parent, 0)], tree.start + ref * shift
    )
    new_index = np.cumsum(keep) - 1
    parent = np.where(tree.parent >= 0, new_index[np.maximum(tree.parent, 0)], -1)
    parent = np.where((tree.parent >= 0) & keep[np.maximum(tree.parent, 0)], parent, -1)
    return Tree(start[keep], end[keep], r[keep], tree.count[keep], parent[keep])


@numba.njit(cache=True, nogil=True)
def _paint(
    out: np.ndarray,
    origin: np.ndarray,
    step: np.ndarray,
    segs: np.ndarray,
    edge: float,
) -> None:  # pragma: no cover - compiled
    nz, ny, nx = out.shape
    shape = (nx, ny, nz)
    for s in range(segs.shape[0]):
        ax, ay, az = segs[s, 0], segs[s, 1], segs[s, 2]
        bx, by, bz = segs[s, 3], segs[s, 4], segs[s, 5]
        r0, r1 = segs[s, 6], segs[s, 7]
        rmax = max(r0, r1) + edge
        lo = np.empty(3, np.int64)
        hi = np.empty(3, np.int64)
        pa = (ax, ay, az)
        pb = (bx, by, bz)
        empty = False
        for k in range(3):
            a_k = (min(pa[k], pb[k]) - rmax - origin[k]) / step[k]
            b_k = (max(pa[k], pb[k]) + rmax - origin[k]) / step[k]
            lo[k] = max(int(np.floor(a_k)), 0)
            hi[k] = min(int(np.ceil(b_k)), shape[k] - 1)
            if lo[k] > hi[k]:
                empty = True
        if empty:
            continue
        abx, aby, abz = bx - ax, by - ay, bz - az
        l2 = abx * abx + aby * aby + abz * abz
        inv = 1.0 / l2 if l2 > 1e-12 else 0.0
        for k in range(lo[2], hi[2] + 1):
            pz = origin[2] + k * step[2] - az
            for j in range(lo[1], hi[1] + 1):
                py = origin[1] + j * step[1] - ay
                for i in range(lo[0], hi[0] + 1):
                    px = origin[0] + i * step[0] - ax
                    t = (px * abx + py * aby + pz * abz) * inv
                    t = min(max(t, 0.0), 1.0)
                    dx = px - t * abx
                    dy = py - t * aby
                    dz = pz - t * abz
                    d = np.sqrt(dx * dx + dy * dy + dz * dz)
                    o = (r0 + t * (r1 - r0) - d) / edge + 0.5
                    if o > 0.0:
                        if o > 1.0:
                            o = 1.0
                        if o > out[k, j, i]:
                            out[k, j, i] = o


def paint_capsules(
    out: np.ndarray,
    origin_xyz: np.ndarray,
    step_xyz: np.ndarray,
    capsules: np.ndarray,
    edge: float,
) -> None:
    """Paint the union of capsules into ``out`` (max of occupancies), in place.

    Args:
        out: float32 (z, y, x) occupancy buffer of an axis-aligned grid.
        origin_xyz: world (x, y, z) of voxel (0, 0, 0).
        step_xyz: voxel size (x, y, z), positive.
        capsules: (M, 8) ``x0 y0 z0 x1 y1 z1 r0 r1`` world mm.
        edge: width of the soft edge, mm (the in-plane pixel size).
    """
    if len(capsules) == 0:
        return
    _paint(
        out,
        np.asarray(origin_xyz, np.float64),
        np.asarray(step_xyz, np.float64),
        np.ascontiguousarray(capsules, np.float64),
        float(edge),
    )


def capsule_distance(points: np.ndarray, capsules: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from points (N, 3) to the surface of the nearest capsule, and its index.

    Negative inside a capsule.
    """
    p = np.asarray(points, float)[:, None, :]
    a = capsules[None, :, 0:3]
    ab = capsules[None, :, 3:6] - a
    l2 = np.maximum((ab * ab).sum(-1), 1e-12)
    t = np.clip(((p - a) * ab).sum(-1) / l2, 0.0, 1.0)
    d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
    r = capsules[None, :, 6] + t * (capsules[None, :, 7] - capsules[None, :, 6])
    sd = d - r
    idx = sd.argmin(axis=1)
    return sd[np.arange(len(idx)), idx], idx
