"""Scanner model of the phantom: acquisition settings, reconstruction kernel and noise.

The kernel acts in-plane as a modulation transfer function (MTF)
``H(f) = exp(-(f / s)^p / 2) * (1 + e * (f / s)^2)`` (f in cycles/mm, so a kernel looks
the same at any pixel size): ``soft`` blurs (s = 0.36 cycles/mm, e = 0, p = 2.5: its noise
power spectrum peaks near 0.22 cycles/mm and falls to a tenth of the peak at 0.7 cycles/mm,
as in the two GE STANDARD scans of LIDC-IDRI), ``standard`` enhances mid frequencies and
cuts off steeply (s = 0.5, e = 1.0, p = 5: NPS peak near 0.48 cycles/mm, 0.7 of it at
0.59 cycles/mm, as in the Philips L scan of Lung-PET-CT-Dx), ``sharp`` enhances edges
(s = 0.36, e = 1.0, p = 2: MTF peak 1.21 near 0.36 cycles/mm, 1.12 at 0.5, 0.34 at
0.89 cycles/mm, like B70f/LUNG).
Quantum noise is white noise filtered to the filtered-back-projection noise power
spectrum ``NPS(f) ~ (f + 0.05 f_nyquist) * H(f)^2`` (ramp times apodisation): blotchy for
soft kernels, fine-grained for sharp ones (the sharp NPS peaks near 0.5 cycles/mm and
falls to about a third of its peak at the Nyquist frequency of 0.56 mm pixels, as
measured in the fat and air of the shared B70f scan), scaled to the requested
standard deviation. Real CT noise is not stationary: air outside the patient is
reconstructed with less noise than the tissue (SD ratio 0.47-0.53 in three of the shared
real scans, 0.93 in the fourth), so the noise SD is scaled by ``air_noise`` away from the
body (tissue above -500 HU, including arms and table), blending to 1 within a few mm of
the skin (a Gaussian of ``AIR_NOISE_SIGMA_MM``).
Along z the slice sensitivity profile is applied by the phantom (averaging a finer
grid over the slice thickness).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

Kernel = Literal["soft", "standard", "sharp"]
KERNELS: tuple[Kernel, ...] = ("soft", "standard", "sharp")
# MTF width (cycles/mm), edge-enhancement gain and order of the roll-off per kernel.
_MTF = {"soft": (0.36, 0.0, 2.5), "standard": (0.5, 1.0, 5.0), "sharp": (0.36, 1.0, 2.0)}
# Width (mm) of the blend from tissue noise to air noise outside the body.
AIR_NOISE_SIGMA_MM = 5.0
# Noise SD (HU) at reference dose and 2.5 mm slices, per kernel.
_NOISE_REF = {"soft": 10.0, "standard": 18.0, "sharp": 40.0}
# Nominal slice thicknesses of clinical protocols (mm) and their probabilities.
THICKNESSES = (0.625, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
_THICKNESS_P = (0.12, 0.08, 0.14, 0.16, 0.08, 0.16, 0.16, 0.10)
DICOM_KERNEL_NAMES = {"soft": "B30f", "standard": "B45f", "sharp": "B70f"}


@dataclass(frozen=True)
class ScannerSettings:
    """Acquisition and reconstruction settings of one scan.

    Attributes:
        slice_thickness: nominal slice thickness (width of the slice sensitivity profile), mm.
        slice_spacing: distance between slice centres, mm.
        pixel_spacing: in-plane pixel size, mm.
        matrix: in-plane matrix size (square).
        kernel: reconstruction kernel class.
        noise_hu: standard deviation of the quantum noise, HU.
        air_noise: noise SD in air away from the body relative to ``noise_hu`` (1: stationary).
    """

    slice_thickness: float
    slice_spacing: float
    pixel_spacing: float
    matrix: int
    kernel: Kernel
    noise_hu: float
    air_noise: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (for manifests)."""
        return asdict(self)


def sample_scanner(
    rng: np.random.Generator,
    matrix: int,
    body_width_mm: float,
    small: bool = False,
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
    kernel: Kernel | None = None,
    noise_hu: float | None = None,
    min_thickness: float = 0.0,
    air_noise: float | None = None,
) -> ScannerSettings:
    """Draw scanner settings; any argument given fixes that setting.

    Full scans: thickness from clinical protocols 0.625-3 mm; pixel spacing from the
    field of view that fits the body (0.5-0.9 mm at 512); kernel soft/standard/sharp with
    probabilities 0.3/0.4/0.3; noise = kernel reference x dose factor (log-uniform 0.6-2.2)
    x sqrt(2.5 mm / thickness); air noise ratio uniform 0.45-1. Small scans (the test preset) use 4.5-6 mm slices and the
    pixel size that fits the body in ``matrix`` pixels.

    Args:
        rng: random generator.
        matrix: in-plane matrix size.
        body_width_mm: body width, to choose the field of view.
        small: the reduced preset.
        slice_thickness: fixed thickness, mm.
        pixel_spacing: fixed pixel size, mm.
        kernel: fixed kernel.
        noise_hu: fixed noise SD, HU.
        min_thickness: draw only thicknesses of at least this (so that a scan of at
            most 400 slices covers the lungs); a fixed thickness is kept.
        air_noise: fixed air noise ratio.

    Returns:
        The settings.
    """
    fov = body_width_mm * float(rng.uniform(1.03, 1.15))
    if small:
        st = float(rng.uniform(4.5, 6.0))
        ps = fov / matrix
    else:
        allowed = np.asarray(THICKNESSES) >= min(min_thickness, THICKNESSES[-1])
        p = np.asarray(_THICKNESS_P) * allowed
        st = float(rng.choice(THICKNESSES, p=p / p.sum()))
        ps = float(np.clip(fov / matrix, 0.5, 0.9))
    kern: Kernel = KERNELS[int(rng.choice(3, p=(0.3, 0.4, 0.3)))]
    dose = float(np.exp(rng.uniform(np.log(0.6), np.log(2.2))))
    st = float(slice_thickness) if slice_thickness is not None else st
    ps = float(pixel_spacing) if pixel_spacing is not None else round(ps, 4)
    kern = kernel if kernel is not None else kern
    if kern not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kern!r}")
    if noise_hu is None:
        noise_hu = float(np.clip(_NOISE_REF[kern] * dose * np.sqrt(2.5 / st), 4.0, 200.0))
    air = 1.0 if small else float(rng.uniform(0.45, 1.0))
    air = float(air_noise) if air_noise is not None else air
    if not 0.0 < air <= 1.0:
        raise ValueError(f"air_noise must lie in (0, 1], got {air}")
    return ScannerSettings(
        slice_thickness=st,
        slice_spacing=st,
        pixel_spacing=ps,
        matrix=matrix,
        kernel=kern,
        noise_hu=float(noise_hu),
        air_noise=air,
    )


def radial_frequency(shape_yx: tuple[int, int], pixel_spacing: float) -> np.ndarray:
    """Radial spatial frequency (cycles/mm) on the ``rfft2`` grid of a slice ((ny, nx//2+1), float64)."""
    fy = np.fft.fftfreq(shape_yx[0], d=pixel_spacing)[:, None]
    fx = np.fft.rfftfreq(shape_yx[1], d=pixel_spacing)[None, :]
    return np.asarray(np.sqrt(fx * fx + fy * fy))


def _mtf_at(kernel: Kernel, f: np.ndarray) -> np.ndarray:
    """The kernel's MTF at radial frequencies ``f`` (cycles/mm), float32."""
    s, e, p = _MTF[kernel]
    h = np.exp(-0.5 * (f / s) ** p) * (1.0 + e * (f / s) ** 2)
    return np.asarray(h, np.float32)


def kernel_mtf(kernel: Kernel, shape_yx: tuple[int, int], pixel_spacing: float) -> np.ndarray:
    """The kernel's MTF on the ``rfft2`` frequency grid of a slice (float32, (ny, nx//2+1))."""
    return _mtf_at(kernel, radial_frequency(shape_yx, pixel_spacing))


def noise_filter(kernel: Kernel, shape_yx: tuple[int, int], pixel_spacing: float) -> np.ndarray:
    """Amplitude filter sqrt(NPS) for white noise, normalised to unit output variance."""
    f = radial_frequency(shape_yx, pixel_spacing)
    h = _mtf_at(kernel, f).astype(np.float64)
    nps = (f + 0.05 * 0.5 / pixel_spacing) * h * h
    # variance of filtered unit white noise = mean of |G|^2 over the full (two-sided) grid
    w = np.full(nps.shape, 2.0)
    w[:, 0] = 1.0
    if shape_yx[1] % 2 == 0:
        w[:, -1] = 1.0
    var = float((nps * w).sum() / (shape_yx[0] * shape_yx[1]))
    return np.asarray(np.sqrt(nps / var), np.float32)


def apply_scanner(
    hu: np.ndarray, settings: ScannerSettings, rng: np.random.Generator, chunk: int = 32
) -> np.ndarray:
    """Apply the kernel's MTF and add kernel-shaped noise to every slice, in place.

    With ``settings.air_noise`` < 1 the noise is scaled down away from the tissue of the
    noise-free image (see the module docstring).

    Args:
        hu: float32 (z, y, x) noise-free image at the output grid (modified in place).
        settings: scanner settings (kernel, noise, pixel spacing).
        rng: random generator of the noise.
        chunk: slices per FFT batch.

    Returns:
        ``hu``.
    """
    shape_yx = (hu.shape[1], hu.shape[2])
    mtf = kernel_mtf(settings.kernel, shape_yx, settings.pixel_spacing)
    # white noise drawn directly in the frequency domain: E|W|^2 = N as for rfft2 of unit noise
    amp = noise_filter(settings.kernel, shape_yx, settings.pixel_spacing)
    amp *= np.float32(settings.noise_hu * np.sqrt(shape_yx[0] * shape_yx[1] / 2.0))
    for z0 in range(0, hu.shape[0], chunk):
        block = hu[z0 : z0 + chunk]
        spec = sfft.rfft2(block, workers=1)
        shape = spec.shape
        noise = rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32)
        noise_spec = noise.astype(np.complex64) * amp
        spec *= mtf
        if settings.air_noise >= 1.0:  # stationary noise: one inverse transform
            spec += noise_spec
            hu[z0 : z0 + chunk] = sfft.irfft2(spec, s=shape_yx, workers=1)
            continue
        scale = noise_scale(block, settings.air_noise, settings.pixel_spacing)
        field = sfft.irfft2(noise_spec, s=shape_yx, workers=1)
        hu[z0 : z0 + chunk] = sfft.irfft2(spec, s=shape_yx, workers=1) + field * scale
    return hu


def noise_scale(block: np.ndarray, air_noise: float, pixel_spacing: float) -> np.ndarray:
    """Relative noise SD per pixel of noise-free slices (z, y, x): 1 in the body (tissue above
    -500 HU with the lungs and airways it encloses in each slice) and near it, ``air_noise``
    in air away from it (a Gaussian blend of ``AIR_NOISE_SIGMA_MM``, computed on ~2 mm pixels)."""
    f = max(1, round(2.0 / pixel_spacing))
    coarse = block[:, ::f, ::f] > -500.0
    body = ndimage.binary_fill_holes(coarse, structure=np.ones((1, 3, 3), bool))
    sigma = AIR_NOISE_SIGMA_MM / (pixel_spacing * f)
    near = np.clip(2.0 * ndimage.gaussian_filter(body.astype(np.float32), (0, sigma, sigma), truncate=3.0), 0.0, 1.0)
    near = np.maximum(near, body)
    up = ndimage.zoom(near, (1, block.shape[1] / near.shape[1], block.shape[2] / near.shape[2]), order=1, grid_mode=True, mode="nearest")
    up = np.maximum(up[:, : block.shape[1], : block.shape[2]], block > -500.0)
    return np.asarray(air_noise + (1.0 - air_noise) * up, np.float32)
