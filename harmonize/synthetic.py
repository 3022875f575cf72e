"""Synthetic traveling subjects: the same digital anatomy "scanned" at sites with known intensity distortions.

This is a fast, closed-form stand-in for the Bloch virtual scanner (simulator/),
used by the tests, the latency benchmark and as a fallback training set. An
image is built as

    I = | gain * B(r) * t(r)**gamma + n |,   n ~ complex Gaussian(0, (sigma*gain)^2)

where t(r) is the subject's T1-like tissue signal (CSF < GM < WM, with smooth
within-tissue texture and partial-volume blur) — identical at every site —, and
the site contributes a receive gain, a monotone contrast exponent gamma (which
changes tissue contrast ratios, as different TR/TE/flip/field strength do), a
smooth multiplicative bias field B and Rician noise (magnitude of complex noise).
The subject's ``atrophy`` factor (0 = none) shrinks the cortex and enlarges the
ventricles and the peripheral CSF: a biological effect that harmonization must keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: label values in SyntheticSubject.labels
BACKGROUND, CSF, GM, WM = 0, 1, 2, 3
#: site-independent tissue signal (arbitrary units, T1-weighted ordering)
TISSUE_SIGNAL = {CSF: 0.22, GM: 0.55, WM: 0.80}


@dataclass(frozen=True)
class SyntheticSite:
    """Site-specific intensity distortion: gain (a.u.), contrast exponent gamma (> 0, monotone),
    bias_amplitude (peak relative log-bias), noise_sigma (relative to gain), seed (bias shape)."""

    name: str
    gain: float
    gamma: float
    bias_amplitude: float
    noise_sigma: float
    seed: int


SITES: dict[str, SyntheticSite] = {
    "A": SyntheticSite("A", gain=1000.0, gamma=1.00, bias_amplitude=0.08, noise_sigma=0.015, seed=1),
    "B": SyntheticSite("B", gain=550.0, gamma=1.40, bias_amplitude=0.15, noise_sigma=0.025, seed=2),
    "C": SyntheticSite("C", gain=1600.0, gamma=0.75, bias_amplitude=0.12, noise_sigma=0.020, seed=3),
    "D": SyntheticSite("D", gain=80.0, gamma=1.20, bias_amplitude=0.10, noise_sigma=0.030, seed=4),
}


@dataclass(frozen=True)
class SyntheticSubject:
    """labels: int8 (z, y, x) tissue labels; signal: float64 (z, y, x) site-independent tissue
    signal; atrophy: dimensionless factor (0 = healthy); subject: index (seeds the anatomy)."""

    subject: int
    atrophy: float
    labels: np.ndarray
    signal: np.ndarray

    @property
    def brain_mask(self) -> np.ndarray:
        return self.labels > BACKGROUND


def synthetic_subject(
    subject: int, shape: tuple[int, int, int] = (1, 96, 96), atrophy: float | None = None
) -> SyntheticSubject:
    """Build subject ``subject``'s anatomy on a (z, y, x) grid.

    atrophy: None draws it from U(0, 0.3) with the subject's seed. The head fills
    about 80 % of the field of view; slices vary slowly along z.
    """
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 32:
        raise ValueError(f"shape must be (z, y, x) with y, x >= 32, got {shape}")
    rng = np.random.default_rng(10_000 + int(subject))
    a = float(rng.uniform(0.0, 0.3)) if atrophy is None else float(atrophy)
    if not 0.0 <= a <= 0.6:
        raise ValueError(f"atrophy must be in [0, 0.6], got {a}")
    nz, ny, nx = shape
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    theta = np.arctan2(y, x)
    ax, ay = 0.70 * (1 + 0.05 * rng.standard_normal()), 0.82 * (1 + 0.05 * rng.standard_normal())
    # low-order boundary wobble (skull shape) and high-order folding (gyri), subject specific
    wobble = sum(0.02 * rng.standard_normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
    n_gyri = int(rng.integers(9, 14))
    fold = 0.5 * np.sin(n_gyri * theta + rng.uniform(0, 2 * np.pi))
    labels = np.zeros(shape, dtype=np.int8)
    for iz in range(nz):
        zs = 1.0 - 0.15 * ((iz - (nz - 1) / 2) / max(nz, 1)) ** 2  # slices shrink slightly off centre
        rho = np.sqrt((x / (ax * zs)) ** 2 + (y / (ay * zs)) ** 2) / (1 + wobble)
        head = rho < 1.0
        brain = rho < 0.93 - 0.20 * a  # atrophy widens the peripheral CSF
        wm = rho < 0.93 - 0.20 * a - 0.14 * (1 - 0.8 * a) * (1 + fold)  # and thins the cortex
        vr = 0.10 * (1 + 2.5 * a)  # ventricles grow with atrophy
        vent = ((x / (0.6 * vr)) ** 2 + ((np.abs(y) - 0.05) / (1.8 * vr)) ** 2 < 1) & (np.abs(x) > 0.02)
        lab = np.where(head, CSF, BACKGROUND)
        lab = np.where(brain, GM, lab)
        lab = np.where(wm, WM, lab)
        lab = np.where(vent & brain, CSF, lab)
        labels[iz] = lab
    signal = np.zeros(shape, dtype=np.float64)
    for lab, s in TISSUE_SIGNAL.items():
        signal[labels == lab] = s
    # within-tissue texture (subject anatomy, identical at every site) and partial-volume blur
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0, 3, 3))
    texture *= 0.04 / max(texture.std(), 1e-12)
    signal = ndimage.gaussian_filter(signal * (1 + texture), sigma=(0, 0.7, 0.7))
    signal[labels == BACKGROUND] = 0.0
    return SyntheticSubject(int(subject), a, labels, signal)


def bias_field(shape: tuple[int, int, int], site: SyntheticSite) -> np.ndarray:
    """Smooth multiplicative receive-bias field of ``site`` on (z, y, x): exp of a low-order polynomial."""
    rng = np.random.default_rng(site.seed)
    _, ny, nx = shape
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    c = rng.standard_normal(5)
    poly = c[0] * x + c[1] * y + c[2] * x * y + c[3] * x**2 + c[4] * y**2
    poly *= site.bias_amplitude / max(np.abs(poly).max(), 1e-12)
    return np.broadcast_to(np.exp(poly), shape)


def synthetic_scan(subject: SyntheticSubject, site: SyntheticSite | str, seed: int = 0) -> np.ndarray:
    """Magnitude image (z, y, x) float32 of ``subject`` acquired at ``site`` (name or SyntheticSite)."""
    if isinstance(site, str):
        if site not in SITES:
            raise ValueError(f"unknown synthetic site {site!r}; known: {sorted(SITES)}")
        site = SITES[site]
    rng = np.random.default_rng([int(seed), subject.subject, site.seed])
    clean = site.gain * bias_field(subject.signal.shape, site) * subject.signal**site.gamma
    sd = site.noise_sigma * site.gain
    noisy = np.abs(clean + sd * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)))
    return noisy.astype(np.float32)
