"""Analytic chest anatomy of the phantom: body wall, thoracic cavity, lungs, mediastinum.

A :class:`BodyPlan` holds one patient's random proportions. Its fields are signed
distances (mm, negative inside) or heights evaluated on broadcastable world coordinate
arrays ``x, y, z`` (mm, LPS: +x patient left, +y posterior, +z superior), so the same
code samples a whole grid chunk (``z`` shaped (n, 1, 1), ``y`` (1, n, 1), ``x`` (1, 1, n))
or a list of points. Distances are "radial" approximations (exact for circles), good
near surfaces, which is where they are used (soft partial-volume edges, placement).

Compartments: body outline (superellipse-like, flatter at the back, with random
low-order harmonics) with skin, subcutaneous fat and muscle (pectorals in front); the thoracic cavity inside the wall; two lungs = cavity
minus mediastinum (a central band, wider at the heart), minus the spine block and the
heart, above the diaphragm domes (right dome higher) and below rounded apices;
liver under the right dome and stomach/spleen under the left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

F32 = np.float32
P_ARMS_DOWN = 0.35  # arms down beside the chest; else raised above the head, out of the scan


@dataclass(frozen=True)
class BodyPlan:
    """One patient's proportions (mm, world LPS) and tissue HU.

    Attributes:
        cx: body centre, world x.
        cy: body centre, world y.
        half_width: lateral semi-axis of the body outline at mid chest.
        half_depth_front: anterior semi-axis (from the centre to the sternum skin).
        half_depth_back: posterior semi-axis.
        fat: subcutaneous fat thickness (mean).
        muscle: muscle and rib layer thickness.
        z_base: world z of the lowest lung point (posterior costophrenic recess).
        lung_height: lung base to apex.
        dome_right: height of the right diaphragm dome above ``z_base``.
        dome_left: height of the left dome.
        med_half_width: half width of the mediastinal band between the lungs.
        heart_center: (x, y, z) world centre of the heart ellipsoid.
        heart_axes: its semi-axes (x, y, z).
        spine_y: world y of the vertebral body centre.
        spine_radius: vertebral body radius.
        lung_hu: parenchyma HU at the anterior lung (inspiration level).
        lung_gradient_hu: extra HU at the posterior lung (gravity-dependent density).
        blood_hu: blood HU (about 40 plain, 150-350 with IV contrast).
        contrast: whether IV contrast was given.
        liver_hu: liver HU.
        outline: body outline harmonics ``(k, amplitude, phase)`` flattened (relative
            radius change ``sum a cos(k angle + phase)``): asymmetric, not a perfect ellipse.
        pectoral: extra anterior muscle (pectoralis) thickness, mm.
        arms: empty when the arms are raised above the head (out of the scan), else the
            arms down beside the chest: ``(radius, gap, fat, y offset)`` mm (arm radius, gap to
            the body's side, arm fat thickness, antero-posterior offset from the body centre).
        rv_contrast: blood HU of the right heart relative to the left (contrast timing).
    """

    cx: float
    cy: float
    half_width: float
    half_depth_front: float
    half_depth_back: float
    fat: float
    muscle: float
    z_base: float
    lung_height: float
    dome_right: float
    dome_left: float
    med_half_width: float
    heart_center: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    spine_y: float
    spine_radius: float
    lung_hu: float
    lung_gradient_hu: float
    blood_hu: float
    contrast: bool
    liver_hu: float
    outline: tuple[float, ...] = ()
    pectoral: float = 0.0
    arms: tuple[float, ...] = ()
    rv_contrast: float = 1.0

    @property
    def z_top(self) -> float:
        """World z of the lung apices."""
        return self.z_base + self.lung_height

    @property
    def z_carina(self) -> float:
        """World z of the tracheal carina."""
        return self.z_base + 0.62 * self.lung_height

    @property
    def wall(self) -> float:
        """Skin + fat + muscle thickness (mean), mm."""
        return 2.0 + self.fat + self.muscle


def sample_body_plan(rng: np.random.Generator, z_base: float = 0.0) -> BodyPlan:
    """Draw an adult's proportions over a plausible range.

    Body width 270-370 mm, depth 190-320 mm, lung height 205-355 mm (total lung
    volume about 3-7 l), fat 4-35 mm, pectoral muscle 4-16 mm; arms down beside the
    chest with probability 0.35 (else raised, out of the scan).

    Args:
        rng: random generator.
        z_base: world z of the lung base.

    Returns:
        The body plan.
    """
    size = float(rng.uniform(0.0, 1.0))  # overall habitus
    half_width = 135.0 + 50.0 * size + float(rng.normal(0, 6))
    depth = 2 * half_width * float(rng.uniform(0.72, 0.86))
    fat = float(np.clip(rng.gamma(2.5, 3.5) * (0.6 + size), 4.0, 35.0))
    lung_height = float(rng.uniform(205.0, 355.0))
    contrast = bool(rng.uniform() < 0.5)
    heart_scale = float(rng.uniform(0.85, 1.15))
    heart_axes = (60.0 * heart_scale, 48.0 * heart_scale, 54.0 * heart_scale)
    dome_right = float(rng.uniform(0.2, 0.3)) * lung_height
    dome_left = dome_right - float(rng.uniform(5.0, 20.0))
    half_back = depth * 0.53
    spine_y = half_back - fat * 0.6 - 62.0
    plan = BodyPlan(
        cx=float(rng.normal(0.0, 8.0)),
        cy=float(rng.normal(0.0, 8.0)),
        half_width=half_width,
        half_depth_front=depth * 0.48,
        half_depth_back=half_back,
        fat=fat,
        muscle=float(rng.uniform(6.0, 10.0)),
        z_base=z_base,
        lung_height=lung_height,
        dome_right=dome_right,
        dome_left=dome_left,
        med_half_width=float(rng.uniform(14.0, 22.0)),
        heart_center=(18.0, -0.14 * depth, z_base + dome_left + 0.65 * heart_axes[2]),
        heart_axes=heart_axes,
        spine_y=spine_y,
        spine_radius=float(rng.uniform(15.0, 20.0)),
        lung_hu=float(rng.uniform(-905.0, -845.0)),
        lung_gradient_hu=float(rng.uniform(20.0, 70.0)),
        blood_hu=float(rng.uniform(160.0, 320.0)) if contrast else float(rng.uniform(30.0, 50.0)),
        contrast=contrast,
        liver_hu=float(rng.uniform(90.0, 120.0)) if contrast else float(rng.uniform(50.0, 65.0)),
        outline=tuple(
            float(v)
            for k in (2, 3, 4, 5)
            for v in (k, np.clip(rng.normal(0.0, 0.03 / (k - 1)), -0.05, 0.05), rng.uniform(0.0, 2 * np.pi))
        ),
        pectoral=float(rng.uniform(4.0, 16.0)),
    )
    # drawn after the rest, so that the other proportions do not depend on them
    arms: tuple[float, ...] = ()
    if rng.uniform() < P_ARMS_DOWN:
        radius = float(rng.uniform(38.0, 50.0)) * (0.85 + 0.3 * size)
        arms = (radius, float(rng.uniform(2.0, 25.0)), float(np.clip(fat * rng.uniform(0.4, 0.8), 3.0, 20.0)), float(rng.normal(0.0, 10.0)))
    rv = float(rng.uniform(0.8, 1.5)) if contrast else float(rng.uniform(0.95, 1.05))
    return replace(plan, arms=arms, rv_contrast=rv)


def scale_in_plane(plan: BodyPlan, factor: float) -> BodyPlan:
    """The same patient scaled in-plane by ``factor`` about the body centre (a smaller or larger build).

    Every in-plane length (outline, wall layers, mediastinum, heart, spine) is scaled, so the
    lungs' lateral and antero-posterior extents scale exactly; heights are kept.
    """
    f = float(factor)
    hx, hy, hz = plan.heart_center
    ax, ay, az = plan.heart_axes
    return replace(
        plan,
        half_width=plan.half_width * f,
        half_depth_front=plan.half_depth_front * f,
        half_depth_back=plan.half_depth_back * f,
        fat=plan.fat * f,
        muscle=plan.muscle * f,
        med_half_width=plan.med_half_width * f,
        heart_center=(plan.cx + (hx - plan.cx) * f, plan.cy + (hy - plan.cy) * f, hz),
        heart_axes=(ax * f, ay * f, az),
        spine_y=plan.spine_y * f,
        spine_radius=plan.spine_radius * f,
        pectoral=plan.pectoral * f,
        arms=tuple(v * f for v in plan.arms),
    )


def lung_extent(plan: BodyPlan, step: float = 2.0) -> tuple[float, float, float, float]:
    """World (x_min, x_max, y_min, y_max) of the lungs, from their signed distance on a coarse grid."""
    x = np.arange(plan.cx - plan.half_width, plan.cx + plan.half_width + step, step, dtype=F32)
    y = np.arange(plan.cy - plan.half_depth_front, plan.cy + plan.half_depth_back + step, step, dtype=F32)
    z = np.linspace(plan.z_base, plan.z_top, 12, dtype=F32)
    inside = lung_sd(plan, x[None, None, :], y[None, :, None], z[:, None, None]) < 0
    if not inside.any():
        return plan.cx, plan.cx, plan.cy, plan.cy
    ix = np.nonzero(inside.any(axis=(0, 1)))[0]
    iy = np.nonzero(inside.any(axis=(0, 2)))[0]
    return float(x[ix[0]] - step), float(x[ix[-1]] + step), float(y[iy[0]] - step), float(y[iy[-1]] + step)


def fit_to_field(plan: BodyPlan, center_xy: tuple[float, float], half_fov: float, margin: float) -> BodyPlan:
    """The plan scaled down in-plane (if needed) so that both lungs lie ``margin`` mm inside
    the square field of view of half width ``half_fov`` centred at ``center_xy``.

    A scanner operator chooses the reconstruction field of view to hold both lungs; when
    the requested pixel size makes the field small, the patient drawn is a smaller one.
    """
    x0, x1, y0, y1 = lung_extent(plan)
    room = half_fov - margin
    dx, dy = center_xy[0] - plan.cx, center_xy[1] - plan.cy
    limits = [1.0]
    for reach, extent in ((room + dx, x1 - plan.cx), (room - dx, plan.cx - x0), (room + dy, y1 - plan.cy), (room - dy, plan.cy - y0)):
        if extent > 0:
            limits.append(max(reach, 1.0) / extent)
    f = min(limits)
    return plan if f >= 1.0 else scale_in_plane(plan, f * 0.995)


def arm_sd(plan: BodyPlan, x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
    """Signed distance (mm) to the skin of the arm on ``side`` (-1 right, +1 left); large without arms."""
    if not plan.arms:
        return np.full(np.broadcast(np.asarray(x), np.asarray(y)).shape, 1e3, F32)
    radius, gap, _fat, dy = plan.arms[:4]
    ax = F32(plan.cx + side * (plan.half_width + gap + radius))
    ay = F32(plan.cy + dy)
    u = (np.asarray(x, F32) - ax) / F32(0.9)
    v = np.asarray(y, F32) - ay
    return np.asarray(np.sqrt(u * u + v * v) - F32(radius), F32)


def _rel(plan: BodyPlan, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(x, F32) - F32(plan.cx)), (np.asarray(y, F32) - F32(plan.cy))


def body_scale(plan: BodyPlan, z: np.ndarray) -> np.ndarray:
    """Relative body width at height z: narrower at the neck and lower at the waist."""
    t = (np.asarray(z, F32) - F32(plan.z_base)) / F32(plan.lung_height)
    s = 1.0 - 0.72 * np.clip(t - 0.8, 0.0, None) ** 2 - 0.12 * np.clip(t - 0.3, 0.0, None) - 0.05 * np.clip(-t, 0.0, None)
    return np.asarray(np.clip(s, 0.55, 1.0), F32)


def body_sd(plan: BodyPlan, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to the skin surface, negative inside the body."""
    u, v = _rel(plan, x, y)
    s = body_scale(plan, z)
    a = F32(plan.half_width) * s
    b = np.where(v < 0, F32(plan.half_depth_front), F32(plan.half_depth_back)).astype(F32)
    # flatter back: posterior rows use a larger exponent through a stretched radius
    q = (u / a) ** 2 + (v / b) ** 2 + np.where(v > 0, (v / b) ** 6 * 0.35, 0).astype(F32)
    rho = np.sqrt(q) / outline_factor(plan, x, y)
    r = np.sqrt(u * u + v * v)
    return np.asarray(r * (1.0 - 1.0 / np.maximum(rho, 1e-3)), F32)


def outline_factor(plan: BodyPlan, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative radius of the body outline by angle (low-order harmonics around 1)."""
    if not plan.outline:
        return np.ones((1,), F32)
    u, v = _rel(plan, x, y)
    ang = np.arctan2(v, u)
    f = np.ones(ang.shape, F32)
    c = plan.outline
    for i in range(0, len(c), 3):
        f += F32(c[i + 1]) * np.cos(F32(c[i]) * ang + F32(c[i + 2]))
    return np.asarray(f, F32)


def muscle_thickness(plan: BodyPlan, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Muscle and rib layer thickness (mm) by angle: pectoral muscles in front."""
    u, v = _rel(plan, x, y)
    r = np.sqrt(u * u + v * v) + F32(1e-3)
    front = np.clip(-v / r, 0.0, 1.0)  # 1 straight in front
    side = np.clip(np.abs(u) / r, 0.0, 1.0)
    pect = F32(plan.pectoral) * (front * side * F32(2.0)) ** 2  # peaks at +-45 degrees in front
    return np.asarray(F32(plan.muscle) + pect, F32)


def fat_thickness(plan: BodyPlan, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Subcutaneous fat thickness (mm) by angle: thicker laterally and in front."""
    u, v = _rel(plan, x, y)
    ang = np.arctan2(v, u)
    return np.asarray(F32(plan.fat) * (1.0 + 0.35 * np.cos(2 * ang) - 0.25 * np.sin(ang)), F32)


def cavity_sd(
    plan: BodyPlan, x: np.ndarray, y: np.ndarray, z: np.ndarray, body: np.ndarray | None = None
) -> np.ndarray:
    """Signed distance to the inner surface of the chest wall (pleura), negative inside."""
    if body is None:
        body = body_sd(plan, x, y, z)
    return np.asarray(body + (fat_thickness(plan, x, y) + muscle_thickness(plan, x, y) + F32(2.0)), F32)


def dome_height(plan: BodyPlan, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """World z of the diaphragm surface above (x, y)."""
    u, v = _rel(plan, x, y)
    inner_w = F32(plan.half_width - plan.wall)
    uc = 0.38 * inner_w
    q = ((np.abs(u) - uc) / (0.66 * inner_w)) ** 2 + ((v + 0.05 * plan.half_depth_front) / (0.85 * plan.half_depth_back)) ** 2
    dome = np.where(u < 0, F32(plan.dome_right), F32(plan.dome_left)).astype(F32)
    h = dome * np.clip(1.0 - q, 0.0, None) ** 0.6
    # anterior recess is higher than the posterior one
    h = h + F32(0.12 * plan.dome_left) * np.clip(-v / F32(plan.half_depth_front), 0, 1)
    return np.asarray(F32(plan.z_base) + h, F32)


def mediastinum_sd(plan: BodyPlan, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the mediastinum (central band, spine block, heart), negative inside."""
    u, v = _rel(plan, x, y)
    zz = np.asarray(z, F32)
    t = (zz - F32(plan.z_base)) / F32(plan.lung_height)
    # band: wider at the great vessels (t ~ 0.6-0.75), narrow near the apex
    width = F32(plan.med_half_width) * (1.0 + 0.5 * np.exp(-(((t - 0.66) / 0.08) ** 2))) * np.clip(
        1.3 - 0.6 * t, 0.7, 1.3
    )
    # anterior junction: narrower toward the sternum
    width = width * (0.45 + 0.55 * np.clip((v + 50.0) / 80.0, 0.0, 1.0))
    band = np.abs(u) - width
    sy = F32(plan.spine_y - plan.cy)
    rs = F32(plan.spine_radius + 7.0)
    spine = np.sqrt(u * u + np.clip(sy - v, 0.0, None) ** 2) - rs
    med = np.minimum(band, spine)
    hx, hy, hz = plan.heart_center
    ax, ay, az = plan.heart_axes
    hu_, hv = np.asarray(x, F32) - F32(hx), np.asarray(y, F32) - F32(hy)
    hw = zz - F32(hz)
    rho = np.sqrt((hu_ / ax) ** 2 + (hv / ay) ** 2 + (hw / az) ** 2)
    heart = (rho - 1.0) * F32(min(ax, ay, az))
    return np.asarray(np.minimum(med, heart), F32)


def heart_rho(plan: BodyPlan, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid radius of the heart (< 1 inside)."""
    hx, hy, hz = plan.heart_center
    ax, ay, az = plan.heart_axes
    return np.asarray(
        np.sqrt(
            ((np.asarray(x, F32) - F32(hx)) / ax) ** 2
            + ((np.asarray(y, F32) - F32(hy)) / ay) ** 2
            + ((np.asarray(z, F32) - F32(hz)) / az) ** 2
        ),
        F32,
    )


def apex_sd(plan: BodyPlan, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the rounded lung apices (caps), negative below them."""
    u, v = _rel(plan, x, y)
    inner_w = plan.half_width - plan.wall
    cu = F32(0.42 * inner_w)
    au = F32(0.66 * inner_w)
    av = F32(0.95 * plan.half_depth_back)
    cv = F32(0.15 * plan.half_depth_back)
    az = F32(0.7 * plan.lung_height)
    zc = F32(plan.z_top) - az
    w = np.clip(np.asarray(z, F32) - zc, 0.0, None) / az
    q = ((np.abs(u) - cu) / au) ** 2 + ((v - cv) / av) ** 2 + w**1.25
    return np.asarray((np.sqrt(q) - 1.0) * min(au, az), F32)


def lung_sd(
    plan: BodyPlan,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    cavity: np.ndarray | None = None,
) -> np.ndarray:
    """Signed distance (mm, approximate) to the lung surface, negative inside either lung."""
    if cavity is None:
        cavity = cavity_sd(plan, x, y, z)
    med = mediastinum_sd(plan, x, y, z)
    dome = dome_height(plan, x, y) - np.asarray(z, F32)
    sd = np.maximum(np.maximum(cavity, -med), np.maximum(dome, apex_sd(plan, x, y, z)))
    return np.asarray(sd, F32)


def lung_gradient(plan: BodyPlan, points: np.ndarray, h: float = 0.5) -> np.ndarray:
    """Outward unit normals of the lung surface at world points (N, 3), by central differences."""
    p = np.asarray(points, np.float64)
    g = np.zeros_like(p)
    for k in range(3):
        d = np.zeros(3)
        d[k] = h
        a, b = p + d, p - d
        g[:, k] = lung_sd(plan, a[:, 0], a[:, 1], a[:, 2]) - lung_sd(plan, b[:, 0], b[:, 1], b[:, 2])
    n = np.linalg.norm(g, axis=1, keepdims=True)
    return np.asarray(g / np.maximum(n, 1e-9))


def fissure_sd(plan: BodyPlan, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances (mm) to the major fissures and to the right minor fissure.

    The major (oblique) fissure runs from posterior-superior (about the level of T4) to
    anterior-inferior at the diaphragm, slightly curved; the minor (horizontal) fissure
    lies in the right lung in front of the major one.

    Returns:
        (major, minor): signed distances; ``minor`` is large where it does not apply.
    """
    u, v = _rel(plan, x, y)
    zz = np.asarray(z, F32) - F32(plan.z_base)
    h = F32(plan.lung_height)
    # line through (v = +0.75 back, z = 0.72 h) and (v = -0.7 front, z = 0.1 h)
    v0, z0 = 0.75 * plan.half_depth_back, 0.72 * plan.lung_height
    v1, z1 = -0.7 * plan.half_depth_front, 0.12 * plan.lung_height
    dv, dz = v1 - v0, z1 - z0
    n = float(np.hypot(dv, dz))
    nv, nz = -dz / n, dv / n
    left = np.asarray(u > 0)
    bend = F32(0.0006) * (np.abs(u) - F32(0.45 * plan.half_width)) ** 2 - F32(0.35) * np.abs(u)
    major = (v - F32(v0)) * F32(nv) + (zz - F32(z0)) * F32(nz) + bend + np.where(left, F32(-8.0), F32(0.0))
    minor_z = F32(0.55) * h - F32(0.02) * v
    minor = np.where((u < 0) & (major < 0), zz - minor_z, F32(1e3)).astype(F32)
    return np.asarray(major, F32), np.asarray(minor, F32)


def sample_lung_points(
    plan: BodyPlan,
    rng: np.random.Generator,
    n: int,
    side: int = 0,
    max_sd: float = -1.0,
    min_sd: float = -1e9,
) -> np.ndarray:
    """Random world points inside the lungs by rejection sampling.

    Args:
        plan: the body plan.
        rng: random generator.
        n: number of points.
        side: -1 right lung only, +1 left lung only, 0 either.
        max_sd: keep points whose lung signed distance is below this (mm).
        min_sd: ... and above this (e.g. -3 for points near the pleura).

    Returns:
        (n, 3) world (x, y, z) points (fewer if the region is tiny).
    """
    lo = np.array([plan.cx - plan.half_width, plan.cy - plan.half_depth_front, plan.z_base])
    hi = np.array([plan.cx + plan.half_width, plan.cy + plan.half_depth_back, plan.z_top])
    if side < 0:
        hi[0] = plan.cx
    elif side > 0:
        lo[0] = plan.cx
    out: list[np.ndarray] = []
    total = 0
    for _ in range(60):
        p = rng.uniform(lo, hi, size=(max(4 * n, 256), 3))
        sd = lung_sd(plan, p[:, 0], p[:, 1], p[:, 2])
        keep = p[(sd < max_sd) & (sd > min_sd)]
        out.append(keep)
        total += len(keep)
        if total >= n:
            break
    pts = np.concatenate(out)[:n] if out else np.zeros((0, 3))
    return np.asarray(pts)
