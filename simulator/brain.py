"""A brain phantom from the MNI152 2009 tissue templates that ship inside nilearn (no network).

GM and WM probability maps and the brain mask give tissue fractions; CSF is the rest of the
mask. Fractions are mixed into PD/T1/T2/T2' at the requested field (:mod:`simulator.tissue`).
"Subjects" are deterministic: subject ``n > 0`` draws, from a generator seeded with ``n``, a
smooth displacement field (a few low-frequency sine modes, a few mm), a head-size scale and an
atrophy factor; subject 0 is the template itself. The same subject number gives the same
anatomy at every site and field strength.

Atrophy is morphological: tissue is lost where it borders CSF (sulcal widening, cortical
thinning from the pial side, ventricular enlargement), weighted by a CSF-proximity map, while
tissue far from CSF stays pure. Pure-tissue intensities therefore do not change with atrophy,
as in real brains; only the CSF spaces grow (a uniform dilution of every voxel would look like
a change of receive gain, which no image analysis could tell from a scanner difference).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from simulator.phantom import Phantom, phantom_from_fractions

#: MNI z (mm) of the default axial slice: through the bodies of the lateral ventricles
VENTRICLE_Z_MNI_MM = 18.0


@functools.lru_cache(maxsize=2)
def _templates(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gm, wm, mask) arrays indexed (x, y, z) and the 4x4 voxel->MNI-mm affine."""
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=resolution)
    wm = datasets.load_mni152_wm_template(resolution=resolution)
    mask = datasets.load_mni152_brain_mask(resolution=resolution)
    return (
        np.asarray(gm.get_fdata(), dtype=np.float32),
        np.asarray(wm.get_fdata(), dtype=np.float32),
        np.asarray(mask.get_fdata(), dtype=np.float32),
        np.asarray(gm.affine, dtype=np.float64),
    )


#: sd (mm) of the Gaussian that turns the template's CSF map into the CSF-proximity weight of atrophy
ATROPHY_PROXIMITY_SD_MM = 2.0


@functools.lru_cache(maxsize=2)
def _atrophy_weight(resolution: int) -> np.ndarray:
    """Where atrophy takes tissue, (x, y, z) like the templates: CSF proximity, GM-weighted mean 1.

    The template CSF fraction smoothed by a Gaussian (sd ATROPHY_PROXIMITY_SD_MM) is large at
    the sulci and ventricles and near 0 in deep white matter. Normalising its GM-weighted mean
    to 1 keeps the meaning of the atrophy factor: about that fraction of GM is lost (before
    the per-voxel loss is capped at 100 %).
    """
    from scipy.ndimage import gaussian_filter

    gm, wm, mask, _ = _templates(resolution)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    prox = gaussian_filter(csf, ATROPHY_PROXIMITY_SD_MM / resolution)
    return (prox / max(float((prox * gm).sum() / gm.sum()), 1e-6)).astype(np.float32)


def _brain_centre_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centre of the mask's bounding box in MNI mm (x, y, z)."""
    idx = np.argwhere(mask > 0.5)
    centre_vox = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    return affine[:3, :3] @ centre_vox + affine[:3, 3]


def _subject_warp(subject: int) -> tuple[float, float, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Seeded subject variation: (scale, atrophy, displacement modes (amp_mm[3], k[3], phase))."""
    if subject == 0:
        return 1.0, 0.0, []
    rng = np.random.default_rng(1000 + subject)
    scale = float(rng.uniform(0.94, 1.06))
    atrophy = float(rng.uniform(0.0, 0.15))
    modes = []
    for _ in range(6):
        amp = rng.normal(0.0, 1.5, size=3)  # mm
        k = rng.uniform(-1.0, 1.0, size=3) * 2 * math.pi / 80.0  # rad/mm: wavelengths >= 80 mm
        phase = rng.uniform(0, 2 * math.pi, size=1)
        modes.append((amp, k, phase))
    return scale, atrophy, modes


def brain_phantom(
    field_T: float = 3.0,
    fov_m: float = 0.22,
    matrix: int = 128,
    slice_thickness_m: float = 0.005,
    n_slices: int = 1,
    subject: int = 0,
    slice_gap_m: float = 0.0,
    centre_z_mni_mm: float = VENTRICLE_Z_MNI_MM,
    atrophy: float | None = None,
    resolution: int = 1,
) -> Phantom:
    """Axial brain slices resampled from the MNI152 templates.

    Args:
        field_T: field strength (T) for the relaxation times.
        fov_m: in-plane field of view (m), centred on the brain.
        matrix: in-plane matrix (matrix x matrix).
        slice_thickness_m: voxel size along z (m); each voxel averages the template over it.
        n_slices: number of slices, centred on ``centre_z_mni_mm``.
        subject: 0 = the template; n > 0 = a seeded deformed, scaled, atrophied subject.
        slice_gap_m: gap between slices (m). Each voxel spans thickness + gap along z (its
            spins fill the gap too, so slices sit where a sequence with that gap excites them);
            its tissue is the template averaged over the slice thickness around its centre.
        centre_z_mni_mm: MNI z of the middle slice (mm).
        atrophy: override the subject's atrophy factor (0..0.5: about this fraction of GM, and
            half of it of WM, is turned into CSF, where the tissue borders CSF; see the module doc).
        resolution: template resolution in mm (1 or 2).
    Returns:
        Phantom (n_slices, matrix, matrix) with tissue_maps 'gm', 'wm', 'csf' kept.
    """
    from scipy.ndimage import map_coordinates

    if not isinstance(matrix, int) or not 8 <= matrix <= 1024:
        raise ValueError(f"matrix={matrix!r} must be an integer in 8..1024")
    if not 0.05 <= fov_m <= 0.5:
        raise ValueError(f"fov_m={fov_m} must be in 0.05..0.5 m")
    if not isinstance(n_slices, int) or not 1 <= n_slices <= 256:
        raise ValueError(f"n_slices={n_slices!r} must be an integer in 1..256")
    if not 0.0002 <= slice_thickness_m <= 0.05:
        raise ValueError(f"slice_thickness_m={slice_thickness_m} must be in 0.0002..0.05 m")
    if not (math.isfinite(slice_gap_m) and 0.0 <= slice_gap_m <= 0.05):
        raise ValueError(f"slice_gap_m={slice_gap_m} must be in 0..0.05 m")
    if not isinstance(subject, int) or subject < 0:
        raise ValueError(f"subject={subject!r} must be a non-negative integer")
    if resolution not in (1, 2):
        raise ValueError(f"resolution={resolution!r} must be 1 or 2 (mm)")
    gm_t, wm_t, mask_t, affine = _templates(resolution)
    centre = _brain_centre_mm(mask_t, affine)
    scale, subject_atrophy, modes = _subject_warp(subject)
    if atrophy is None:
        atrophy = subject_atrophy
    if not 0.0 <= atrophy <= 0.5:
        raise ValueError(f"atrophy={atrophy} must be in 0..0.5")

    pix_mm = fov_m * 1e3 / matrix
    dz_mm = slice_thickness_m * 1e3
    # supersample so each output voxel averages the template over its extent (no aliasing)
    ss_xy = max(1, math.ceil(pix_mm / resolution))
    ss_z = max(1, math.ceil(dz_mm / resolution))
    sub_xy = (np.arange(ss_xy) + 0.5) / ss_xy - 0.5
    sub_z = (np.arange(ss_z) + 0.5) / ss_z - 0.5
    x = ((np.arange(matrix) - matrix // 2)[:, None] + sub_xy[None, :]).ravel() * pix_mm
    y = x.copy()
    z_centres = (np.arange(n_slices) - n_slices // 2) * (dz_mm + slice_gap_m * 1e3)
    z = (z_centres[:, None] + sub_z[None, :] * dz_mm).ravel()
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    # subject space -> template space: undo the head scale, then the smooth displacement
    pts = np.stack([xx, yy, zz], axis=-1) / scale
    pts[..., 2] += (centre_z_mni_mm - centre[2]) / scale
    for amp, k, phase in modes:
        arg = pts @ k + phase
        pts = pts + np.sin(arg)[..., None] * amp
    pts = pts + centre
    inv = np.linalg.inv(affine)
    vox = pts @ inv[:3, :3].T + inv[:3, 3]
    coords = [vox[..., i].ravel() for i in range(3)]

    def sample(vol: np.ndarray) -> np.ndarray:
        out = map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)
        out = out.reshape(n_slices, ss_z, matrix, ss_xy, matrix, ss_xy)
        return out.mean(axis=(1, 3, 5))

    mask = np.clip(sample(mask_t), 0.0, 1.0)
    weight = sample(_atrophy_weight(resolution)) if atrophy > 0 else 0.0
    gm = np.clip(sample(gm_t), 0.0, 1.0) * mask
    wm = np.clip(sample(wm_t), 0.0, 1.0) * mask
    total = gm + wm
    over = total > mask
    # the probability maps can sum above the mask fraction at edges: renormalise there
    gm = np.where(over, gm * mask / np.maximum(total, 1e-6), gm)
    wm = np.where(over, wm * mask / np.maximum(total, 1e-6), wm)
    gm = gm * (1.0 - np.clip(atrophy * weight, 0.0, 1.0))
    wm = wm * (1.0 - np.clip(0.5 * atrophy * weight, 0.0, 1.0))
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    fractions = {"gm": gm, "wm": wm, "csf": csf}
    return phantom_from_fractions(
        fractions,
        field_T,
        (slice_thickness_m + slice_gap_m, pix_mm * 1e-3, pix_mm * 1e-3),
        mask > 0.5,
        name=f"brain-subject{subject}",
    )
