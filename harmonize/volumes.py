"""CSF volume read-outs from one magnitude image, aware of partial volume (the atrophy read-out).

At 3–4 mm voxels most CSF sits in voxels shared with grey matter, so counting voxels
below a threshold measures the threshold, not the CSF (the two scale differently with
atrophy). Two read-outs here, both after a smooth multiplicative field (receive-coil
shading, B1) has been divided out:

``csf_signal_fractions`` (what the evaluation uses): linear unmixing of the mean. Every
voxel mixes parenchyma (signal P) and CSF (signal C), so the mask mean is P − f̄ (P − C)
for the CSF volume fraction f̄, whatever the partial-volume distribution; with P the
bright end of the field-corrected histogram, 1 − mean/P = f̄ (1 − C/P) on a zero-based
scale. Robust, but its slope depends on the CSF/parenchyma contrast C/P.

``csf_volume_fractions``: a partial-volume mixture, as in Santago & Gage (IEEE TMI 1993)
and Shattuck et al. (NeuroImage 2001), which estimates C itself:

- three pure classes CSF < GM < WM (T1-like contrast) with means μ_k and one common
  noise sd σ, and two mixed classes CSF–GM and GM–WM whose voxels hold a fraction f
  of the darker tissue, f uniform in (0, 1), intensity (1 − f) μ_k + f μ_{k+1};
- parameters (μ, σ, the five class weights) by expectation–maximisation on the masked
  intensities; each voxel's CSF fraction is its posterior expectation of f_CSF, and the
  image's CSF volume fraction is the mean of that over the mask. The posterior fraction
  is unbiased under noise, unlike clip((μ_GM − I)/(μ_GM − μ_CSF), 0, 1), which turns
  noise on pure tissue into CSF. It needs the three classes to be distinct.

Fields: ``log_field`` fits log I (zero-based images); ``flatten_field`` needs no knowledge
of where zero intensity is, so it commutes with any increasing affine map of an image
(z-score, WhiteStripe). Both keep the image's own units, so a pooled, multi-site read-out
still sees each site's scale. docs/harmonization.md reports how each read-out fares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harmonize._arrays import as_magnitude, check_mask
from harmonize.mask import otsu_threshold

#: interior fraction levels that discretise each mixed class (f uniform in (0, 1))
N_MIX_LEVELS = 9
#: samples the EM fit uses at most (a histogram shape needs no more)
MAX_SAMPLES = 20000
#: histogram bins the EM runs on
HIST_BINS = 256


@dataclass(frozen=True)
class PVMixture:
    """A fitted partial-volume mixture: means (3,) CSF/GM/WM, sd, weights (5,) of
    [CSF, GM, WM, CSF–GM, GM–WM], all in image units (weights sum to 1)."""

    means: np.ndarray
    sd: float
    weights: np.ndarray

    def components(self) -> tuple[np.ndarray, np.ndarray]:
        """(fractions (J, 3) of CSF/GM/WM per component, prior weight (J,)) of the discretised mixture."""
        f = (np.arange(N_MIX_LEVELS) + 0.5) / N_MIX_LEVELS
        frac = [np.eye(3)[k] for k in range(3)]
        prior = list(self.weights[:3])
        for k, w in ((0, self.weights[3]), (1, self.weights[4])):  # darker tissue k, brighter k+1
            for fi in f:
                a = np.zeros(3)
                a[k], a[k + 1] = fi, 1.0 - fi
                frac.append(a)
                prior.append(w / N_MIX_LEVELS)
        return np.array(frac), np.array(prior)

    def posterior_fractions(self, values: np.ndarray) -> np.ndarray:
        """Posterior expected CSF/GM/WM fractions of each value: (n,) -> (n, 3)."""
        frac, prior = self.components()
        resp = _responsibilities(np.ravel(values), frac @ self.means, self.sd, prior)
        return resp @ frac


def _responsibilities(x: np.ndarray, means: np.ndarray, sd: float, prior: np.ndarray) -> np.ndarray:
    """Posterior component probabilities (n, J) of values x under N(means_j, sd) with prior."""
    logp = -0.5 * ((x[:, None] - means[None, :]) / sd) ** 2 + np.log(np.maximum(prior, 1e-12))[None, :]
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def _log_likelihood(x: np.ndarray, n: np.ndarray, model: PVMixture) -> float:
    """Mean log-likelihood of values x (with counts n) under the discretised mixture."""
    frac, prior = model.components()
    z = (x[:, None] - (frac @ model.means)[None, :]) / model.sd
    dens = (np.exp(-0.5 * z * z) * prior[None, :]).sum(axis=1) / (model.sd * np.sqrt(2 * np.pi))
    return float(np.sum(n * np.log(np.maximum(dens, 1e-300))) / n.sum())


#: initial CSF/GM/WM means as quantiles of the sample; EM runs from each, the likeliest wins
#: (one start lands in a local optimum when CSF is abundant or rare)
INIT_QUANTILES = ((0.02, 0.45, 0.85), (0.05, 0.6, 0.9), (0.1, 0.7, 0.93))


def fit_pv_mixture(values: np.ndarray, iterations: int = 150, seed: int = 0) -> PVMixture:
    """EM fit of the 3-tissue partial-volume mixture to a 1-D intensity sample (image units).

    EM starts from each of INIT_QUANTILES (CSF/GM/WM means as sample quantiles) and keeps the
    likeliest fit; the means are re-solved each step by weighted least squares (every
    component's mean is linear in μ). Deterministic for a given ``seed`` (subsampling).
    """
    v = np.ravel(np.asarray(values, dtype=np.float64))
    if v.size < 50:
        raise ValueError(f"fit_pv_mixture needs >= 50 values, got {v.size}")
    if v.size > MAX_SAMPLES:
        v = np.random.default_rng(seed).choice(v, MAX_SAMPLES, replace=False)
    # EM on a fine histogram (bin width well below the noise sd): same fit, far less work
    lo, hi = np.quantile(v, [0.001, 0.999])
    if hi <= lo:
        raise ValueError("image has no intensity spread inside the mask")
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=HIST_BINS, range=(lo, hi))
    x = 0.5 * (edges[:-1] + edges[1:])
    n = counts.astype(np.float64)
    best: tuple[float, PVMixture] | None = None
    for q in INIT_QUANTILES:
        model = _em(x, n, np.quantile(v, q), iterations)
        ll = _log_likelihood(x, n, model)
        if best is None or ll > best[0]:
            best = (ll, model)
    assert best is not None
    return best[1]


def _em(x: np.ndarray, n: np.ndarray, mu: np.ndarray, iterations: int) -> PVMixture:
    """EM iterations of the partial-volume mixture on values x with counts n, from means ``mu`` (3,)."""
    spread = float(mu[2] - mu[0])
    if spread <= 0:
        raise ValueError("image has no intensity spread inside the mask")
    sd = 0.1 * spread
    weights = np.array([0.05, 0.3, 0.3, 0.15, 0.2])
    for _ in range(iterations):
        frac, prior = PVMixture(mu, sd, weights).components()
        resp = _responsibilities(x, frac @ mu, sd, prior) * n[:, None]
        rj = resp.sum(axis=0)  # (J,)
        w_mix = [rj[3 : 3 + N_MIX_LEVELS].sum(), rj[3 + N_MIX_LEVELS :].sum()]
        weights = np.concatenate([rj[:3], w_mix]) / n.sum()
        # weighted least squares for mu: sum_ij r_ij (x_i - a_j.mu)^2
        A = (frac * rj[:, None]).T @ frac
        b = frac.T @ (resp.T @ x)
        mu = np.linalg.solve(A + 1e-9 * np.eye(3) * np.trace(A), b)
        resid = (x[:, None] - (frac @ mu)[None, :]) ** 2
        sd = max(float(np.sqrt((resp * resid).sum() / n.sum())), 1e-3 * spread)
    return PVMixture(np.asarray(mu), sd, np.asarray(weights))


#: the terms of ``poly_basis`` in order (x: columns, y: rows, z: slices; each on [-1, 1])
LOG_FIELD_TERMS = ("1", "x", "y", "xy", "x2", "y2", "z")


def poly_basis(shape: tuple[int, ...]) -> np.ndarray:
    """Quadratic in-plane polynomial basis (6, z, y, x) on [-1, 1] coordinates, plus linear z
    for three slices or more (7 terms; LOG_FIELD_TERMS)."""
    z, y, x = (np.linspace(-1, 1, n) if n > 1 else np.zeros(1) for n in shape)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    terms = [np.ones_like(xx), xx, yy, xx * yy, xx * xx, yy * yy]
    if shape[0] > 2:
        terms.append(zz)
    return np.stack(terms)


#: a first parenchyma selection below this share of the mask is not the parenchyma (most of a
#: brain mask) but the bright near field of the coils; every head at the isocentre in the
#: studies starts at 28 % or more
MIN_FIRST_SELECTION = 0.2
#: nor is a last one below this share (a fit stuck on the near field); every head at the
#: isocentre ends at 64 % or more
MIN_LAST_SELECTION = 0.4


def _fit_log_field(vol: np.ndarray, mv: np.ndarray, basis: np.ndarray, iterations: int) -> np.ndarray:
    """Coefficients (over ``basis``, ``poly_basis(vol.shape)``) of log I fitted over the
    parenchyma voxels of ``vol`` (z, y, x) in ``mv`` (above the Otsu threshold of the
    field-corrected image, refined ``iterations`` times); all 0 when too few voxels qualify.

    Under steep shading the first Otsu selection, made on the uncorrected image, can be the
    bright region near the coils rather than the parenchyma (11-19 % of the mask for some
    heads moved off the isocentre, most of them at siteC). A quadratic fitted there
    extrapolates. The selections then
    shrank and the field ran to e^22 across one head (its flattened image all but zero), or
    the fit swung between the bump and the few voxels left and removed no field, settled on
    the near field, or stopped short and left the read-out off (r 0.708 at siteC on shift48,
    0.951 with this). So when the first selection is below MIN_FIRST_SELECTION of the mask or
    the last below MIN_LAST_SELECTION, the refinements start again from a fit over the whole
    mask, which takes most of the shading out at once. Every other fit is unchanged."""
    logi = np.log(np.maximum(vol, 1e-3 * max(float(np.quantile(vol[mv], 0.99)), 1e-30)))
    coef, first = _refine_log_field(vol, mv, logi, basis, np.zeros(basis.shape[0]), iterations)
    n = mv.sum()
    if n < basis.shape[0] * 4:
        return coef
    if first < MIN_FIRST_SELECTION * n or _parenchyma(vol, mv, basis, coef).sum() < MIN_LAST_SELECTION * n:
        start, *_ = np.linalg.lstsq(basis[:, mv].T, logi[mv], rcond=None)
        coef, _ = _refine_log_field(vol, mv, logi, basis, start, iterations)
    return coef


def _parenchyma(vol: np.ndarray, mv: np.ndarray, basis: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """The voxels of ``mv`` above the Otsu threshold of ``vol`` with the field ``coef`` divided out."""
    corrected = vol / np.exp(np.tensordot(coef, basis, axes=1))
    return mv & (corrected > otsu_threshold(corrected[mv]))


def _refine_log_field(
    vol: np.ndarray, mv: np.ndarray, logi: np.ndarray, basis: np.ndarray, coef: np.ndarray, iterations: int
) -> tuple[np.ndarray, int]:
    """Select the parenchyma and refit ``iterations`` times from ``coef`` (stopping when a
    selection is too small to fit): (coefficients, size of the first selection; that of the
    one ``coef`` makes without iterations)."""
    first = None
    for _ in range(iterations):
        sel = _parenchyma(vol, mv, basis, coef)
        n = int(sel.sum())
        first = n if first is None else first
        if n < basis.shape[0] * 4:
            break
        coef, *_ = np.linalg.lstsq(basis[:, sel].T, logi[sel], rcond=None)
    if first is None:
        first = int(_parenchyma(vol, mv, basis, coef).sum())
    return coef, first


def log_field_coefficients(image: object, mask: object, iterations: int = 4) -> np.ndarray:
    """The polynomial of ``log_field`` before it is set to geometric mean 1: coefficients
    (6 or 7,) of log intensity over ``poly_basis`` (LOG_FIELD_TERMS in order)."""
    img = as_magnitude(image)
    m = check_mask(mask, img.shape)
    vol, mv = (img[None], m[None]) if img.ndim == 2 else (img, m)
    return _fit_log_field(vol, mv, poly_basis(vol.shape), iterations)


def log_field(image: object, mask: object, iterations: int = 4) -> np.ndarray:
    """Smooth multiplicative field (z, y, x) of a zero-based image, geometric mean 1 over ``mask``.

    log I is fitted by a quadratic polynomial over the parenchyma voxels (above the Otsu
    threshold of the field-corrected image, refined ``iterations`` times). Valid where zero
    intensity means no signal (scanner units, CDF-aligned or U-Net output), not for images
    with an offset (use ``flatten_field``).
    """
    img = as_magnitude(image)
    m = check_mask(mask, img.shape)
    vol, mv = (img[None], m[None]) if img.ndim == 2 else (img, m)
    basis = poly_basis(vol.shape)
    field_log = np.tensordot(_fit_log_field(vol, mv, basis, iterations), basis, axes=1)
    field_log -= field_log[mv].mean()
    out = np.exp(field_log)
    return out[0] if img.ndim == 2 else out


def flatten_field(
    image: object, mask: object, iterations: int = 4, dark_quantile: float = 0.15, dark_terms: int = 3
) -> np.ndarray:
    """Remove a smooth multiplicative field from ``image`` (z, y, x), without assuming where zero is.

    Harmonized images may carry an offset (z-score, WhiteStripe and Nyúl outputs are affine or
    piecewise-linear in the scanner's intensity), so the field cannot be fitted to log I. With
    I = β + B(x) T (offset β, field B, tissue signal T), the parenchyma level P(x) = β + B(x) P
    and the CSF-side level C(x) = β + B(x) C are both quadratic polynomials fitted in the linear
    domain — P to the voxels above the Otsu threshold, C to the darkest ``dark_quantile`` of the
    mask, with the ``dark_terms`` lowest terms (constant, x, y), as its voxels are few — and
    their difference K(x) = B(x) (P − C) carries the field without the offset. The result
    P̄ + (I − P(x)) K̄ / K(x) (bars: mask means) is the image with the field divided out,
    in its own units; it commutes with any increasing affine map of the intensities.
    Returns float64 with the image's shape (values outside ``mask`` are left unchanged).
    """
    img = as_magnitude(image)
    m = check_mask(mask, img.shape)
    vol, mv = (img[None], m[None]) if img.ndim == 2 else (img, m)
    basis = poly_basis(vol.shape)
    corrected = vol.copy()
    for _ in range(iterations):
        v = corrected[mv]
        bright = mv & (corrected > otsu_threshold(v))
        dark = mv & (corrected < np.quantile(v, dark_quantile))
        if min(bright.sum(), dark.sum()) < basis.shape[0] * 4:
            break
        level = np.tensordot(np.linalg.lstsq(basis[:, bright].T, vol[bright], rcond=None)[0], basis, axes=1)
        # the dark (CSF-side) level is fitted with fewer terms: its voxels are few and partial-volume
        low = np.tensordot(
            np.linalg.lstsq(basis[:dark_terms, dark].T, vol[dark], rcond=None)[0], basis[:dark_terms], axes=1
        )
        k = level - low
        k_mean = float(k[mv].mean())
        if k_mean <= 0:
            break
        k = np.maximum(k, 0.2 * k_mean)  # a fit that dips towards zero must not blow voxels up
        corrected = np.where(mv, level[mv].mean() + (vol - level) * k_mean / k, vol)
    return corrected[0] if img.ndim == 2 else corrected


def csf_volume_fractions(
    images: Sequence[object], masks: Sequence[object], pooled: bool = False, field: str | None = "log"
) -> np.ndarray:
    """CSF volume fraction of each image inside its mask (dimensionless, 0..1), shape (n,).

    pooled=False: one partial-volume mixture per image (does the image still hold the
    anatomy?). pooled=True: ONE mixture fitted to all images' intensities together, as a
    multi-site analysis would (needs the images on a common intensity scale — what
    harmonization is for). field: "log" divides out ``log_field`` (zero-based images),
    "affine" uses ``flatten_field`` (any offset), None leaves the image as it is.
    """
    if field not in ("log", "affine", None):
        raise ValueError(f"field must be 'log', 'affine' or None, got {field!r}")
    vals = []
    for im, mk in zip(images, masks, strict=True):
        x = as_magnitude(im)
        m = check_mask(mk, x.shape)
        if field == "log":
            x = x / log_field(x, m)
        elif field == "affine":
            x = flatten_field(x, m)
        vals.append(x[m])
    if pooled:
        pool = np.concatenate([v[:: max(1, v.size * len(vals) // MAX_SAMPLES)] for v in vals])
        model = fit_pv_mixture(pool)
        return np.array([model.posterior_fractions(v)[:, 0].mean() for v in vals])
    return np.array([fit_pv_mixture(v).posterior_fractions(v)[:, 0].mean() for v in vals])


#: in-mask percentile taken as the parenchyma reference (bright end: pure WM/GM, little CSF)
PARENCHYMA_PERCENTILE = 95.0
#: in-mask percentile taken as the CSF-side reference of the pooled read-out
CSF_PERCENTILE = 2.0
#: an image with more than this share of in-mask values <= 0 has an offset scale (no zero)
OFFSET_SHARE = 0.005


def field_corrected_values(image: object, mask: object) -> np.ndarray:
    """In-mask intensities (n,) of a zero-based image with its ``log_field`` divided out (image units)."""
    x = as_magnitude(image)
    m = check_mask(mask, x.shape)
    return (x / log_field(x, m))[m]


def parenchyma_level(image: object, mask: object) -> float:
    """The image's parenchyma level (image units): the ``PARENCHYMA_PERCENTILE`` of its
    ``field_corrected_values`` -- the P of ``csf_signal_fractions``.

    Unlike the median, it does not move with the share of dark CSF in the mask; and an image
    scaled to a given level has, once flattened, the same parenchyma intensity whatever the
    shading it carries (where the head sat under the coils), unlike one scaled by a percentile
    of the shaded image. The smooth-field U-Net profiles pin it (harmonize.learned.scale_output)."""
    return float(np.percentile(field_corrected_values(image, mask), PARENCHYMA_PERCENTILE))


def csf_signal_fractions(
    images: Sequence[object], masks: Sequence[object], pooled: bool = False
) -> np.ndarray:
    """CSF read-out by linear partial-volume unmixing of the mean (dimensionless), shape (n,).

    Each voxel is a mix of parenchyma (signal P) and CSF (signal C < P), so the mask mean is
    P − f̄ (P − C), with f̄ the CSF volume fraction: f̄ = (P − mean) / (P − C) exactly,
    whatever the partial-volume distribution. P is the in-mask 95th percentile after the
    smooth field is divided out.

    pooled=False (per image): zero-based scales only (0 = no signal; scanner units, CDF, U-Net):
    C = 0 there is not the CSF signal, so the value is f̄ (1 − C/P), proportional to f̄ while
    C/P (the site's CSF/parenchyma contrast) is alike — no per-image estimate of the dim,
    rare pure-CSF level is needed. Images with an offset scale (> 0.5 % of in-mask values
    <= 0: z-score, WhiteStripe, Nyúl) get NaN: without a zero this read-out does not exist.
    pooled=True: ONE P and C (95th and 2nd percentiles of all images' field-corrected values)
    for every image, as a multi-site analysis on a common scale would use: affine-invariant,
    and meaningful only if harmonization put the images on one scale.
    """
    vals = []
    for im, mk in zip(images, masks, strict=True):
        x = as_magnitude(im)
        m = check_mask(mk, x.shape)
        if pooled:
            vals.append(flatten_field(x, m)[m])
        elif np.mean(x[m] <= 0) > OFFSET_SHARE:
            vals.append(None)
        else:
            vals.append(field_corrected_values(x, m))
    if pooled:
        pool = np.concatenate(vals)
        p, c = np.percentile(pool, [PARENCHYMA_PERCENTILE, CSF_PERCENTILE])
        return np.array([(p - v.mean()) / (p - c) for v in vals])
    return np.array(
        [np.nan if v is None else 1.0 - v.mean() / np.percentile(v, PARENCHYMA_PERCENTILE) for v in vals]
    )
