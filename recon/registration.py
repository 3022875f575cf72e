"""Rigid motion estimation: projection-navigator shifts and rigid image registration (pure torch).

Two estimators, both against a reference:

* :func:`projection_shift` -- the translation along one axis from a k-space line through the
  centre (a projection navigator). A shift ``t`` of the object multiplies the line by
  ``exp(-i 2 pi k t)`` (Fourier shift theorem), so the phase of the coil-summed cross-power
  spectrum is linear in ``k`` with slope ``-2 pi t``. An integer-sample phase-correlation peak
  (on an upsampled grid) removes phase wraps, then a magnitude-weighted least-squares fit of
  the residual phase gives the sub-sample shift in closed form.
* :func:`orbital_pose` / :func:`orbital_pose_3plane` -- an orbital navigator (a circle in
  k-space) gives the two translations and the rotation of its plane; three orthogonal orbits
  give all six.
* :func:`register_rigid` -- rigid registration of a 2D (y, x) or 3D (z, y, x) magnitude image to
  a reference by Gauss-Newton / Levenberg-Marquardt on the rigid parameters, with the analytic
  Jacobian (warped image gradient times the pose derivative), coarse to fine.

Conventions: the returned :class:`RigidEstimate` says where the head went: a point ``p`` of the
reference is at ``R p + t`` in the moving data, ``R = Rz Ry Rx`` (degrees about x, y, z),
``t`` in mm; array axes (z, y, x) are the physical z, y, x axes with the image centre
(index ``n // 2``) at the origin, as the centred FFT places it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "RigidEstimate",
    "fixed_receive_field",
    "orbital_pose",
    "orbital_pose_3plane",
    "projection_shift",
    "register_rigid",
    "rotation_matrix_t",
    "warp_rigid",
]


@dataclass(frozen=True)
class RigidEstimate:
    """A rigid pose: translation (tx, ty, tz) mm, rotation (rx, ry, rz) deg.

    ``cost`` is the final mean squared residual (normalised intensities), ``iterations`` the
    Gauss-Newton steps taken.
    """

    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    cost: float = 0.0
    iterations: int = 0


def projection_shift(
    line: torch.Tensor,
    reference: torch.Tensor,
    sample_spacing_mm: float,
    band: float = 0.125,
    upsample: int = 8,
) -> float:
    """Shift (mm) of the object along a navigator's readout axis relative to the reference.

    Args:
        line: complex (coil, n) k-space samples through the k-space centre (sample ``n // 2``
            is k = 0, as for the project's readouts), or (n,) single-coil.
        reference: the same readout of the reference navigator, same shape.
        sample_spacing_mm: image-space sample spacing along the readout (mm), i.e. the encoded
            FOV along the readout divided by the number of samples.
        band: half-width of the k-space band used, as a fraction of ``n`` (0 < band <= 0.5).
            Low k carries the object's bulk position; high k carries fine detail that changes
            with the spin history between navigators (imperfect spoiling, T1 saturation), so a
            narrow band is more robust and the linear phase fit still resolves ~1/20 sample.
        upsample: zero-padding factor of the coarse cross-correlation search.

    Returns:
        The shift in mm (positive = the object moved towards +axis).
    """
    if line.shape != reference.shape:
        raise ValueError(
            f"navigator shape {tuple(line.shape)} differs from the reference's {tuple(reference.shape)}"
        )
    if not 0 < band <= 0.5:
        raise ValueError(f"band must be in (0, 0.5] (a fraction of the samples), got {band}")
    if line.ndim == 1:
        line, reference = line[None], reference[None]
    if line.ndim != 2 or line.shape[-1] < 8:
        raise ValueError(f"navigator must be (coil, n) with n >= 8 samples, got {tuple(line.shape)}")
    n = line.shape[-1]
    k = torch.arange(n, dtype=torch.float64) - n // 2  # cycles per readout FOV
    inside = k.abs() <= max(2.0, band * n)
    cross = (line.to(torch.complex128) * reference.to(torch.complex128).conj()).sum(0) * inside  # (n,)
    mag = cross.abs()
    if float(mag.max()) == 0.0:
        raise ValueError("navigator and reference have no common signal (all-zero cross-power)")
    # coarse: cross-correlation peak of the band-limited projections on an upsampled grid
    # (zero-padding in k interpolates it to 1/upsample of a sample); it removes phase wraps
    m = n * upsample
    padded = torch.zeros(m, dtype=torch.complex128)
    padded[m // 2 - n // 2 : m // 2 - n // 2 + n] = cross
    corr = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(padded))).real
    coarse = (int(torch.argmax(corr)) - m // 2) / upsample  # samples
    # fine: remove the coarse ramp, fit phase = a - 2 pi k d / n weighted by |cross|
    resid = cross * torch.exp(2j * math.pi * k * coarse / n)
    ang = torch.angle(resid[inside] * torch.exp(-1j * torch.angle(resid[n // 2])))  # constant phase removed
    kk, ww = k[inside], mag[inside]
    a = torch.stack([torch.ones_like(kk), kk], 1)
    sol = torch.linalg.solve(a.T @ (ww[:, None] * a), a.T @ (ww * ang))
    fine = -float(sol[1]) * n / (2 * math.pi)
    return (coarse + fine) * sample_spacing_mm


def orbital_pose(
    current: torch.Tensor, reference: torch.Tensor, radius_per_m: float
) -> tuple[float, float, float]:
    """In-plane rigid pose from an orbital navigator against its reference (Fu et al. 1995).

    Sample j of N lies on the k-space circle of radius ``radius_per_m`` at angle
    phi_j = 2 pi (j + 1/2) / N. For a head moved by p -> R(rz) p + t the signal is
    S(phi) = R(phi - rz) exp(-2 pi i k(phi).t): the coil-combined magnitude profile turns by
    rz (found by circular cross-correlation within +-90 degrees -- a real object's profile
    repeats every half turn -- refined by a parabola through the peak), and
    after turning the reference by rz the phase difference is a + b cos phi + c sin phi with
    (b, c) = -2 pi k_r (tx, ty) (magnitude-weighted least squares on the unwrapped phase).

    Args:
        current, reference: complex readouts (coils, N) on the same orbit.
        radius_per_m: the orbit's k radius (1/m).
    Returns:
        (tx mm, ty mm, rz degrees).
    Raises:
        ValueError: shapes differ, or the orbit carries no signal.
    """
    ta, tb, turn, _ = _orbital_fit(current, reference, radius_per_m)
    return ta, tb, turn


def _orbital_fit(
    current: torch.Tensor, reference: torch.Tensor, radius_per_m: float
) -> tuple[float, float, float, float]:
    """:func:`orbital_pose` and the magnitude-weighted rms residual (rad) of its phase fit: how far
    the orbit's change is from a turn plus a translation (large when the head rotated about an
    axis in the orbit's plane, which changes the projection rather than turning it)."""
    if current.shape != reference.shape or current.ndim != 2:
        raise ValueError(
            f"orbital navigator readouts must be (coils, samples) of one shape, got "
            f"{tuple(current.shape)} and {tuple(reference.shape)}"
        )
    cur = current.detach().to(torch.complex128).cpu()
    ref = reference.detach().to(torch.complex128).cpu()
    n = cur.shape[-1]
    mag_c = cur.abs().square().sum(0).sqrt()
    mag_r = ref.abs().square().sum(0).sqrt()
    if float(mag_c.max()) <= 0 or float(mag_r.max()) <= 0:
        raise ValueError("orbital navigator without signal")
    a, b = mag_c - mag_c.mean(), mag_r - mag_r.mean()
    xc = torch.fft.ifft(torch.fft.fft(a) * torch.fft.fft(b).conj()).real  # xc[s] = sum a[j] b[j - s]
    # |S(k)| = |S(-k)| for a real object, so the profile repeats every half turn: search turns
    # within +-90 degrees (a head never turns further between two navigators)
    lags = (torch.arange(n) + n // 2) % n - n // 2
    p = int(torch.argmax(torch.where(lags.abs() < n // 4, xc, torch.full_like(xc, -math.inf))))
    y0, y1, y2 = (float(xc[(p + d) % n]) for d in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    shift = p + (0.5 * (y0 - y2) / den if den < 0 else 0.0)
    shift = (shift + n / 2) % n - n / 2  # samples, in [-N/2, N/2)
    # the reference turned by the shift: a Fourier phase ramp (the orbit is periodic)
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    turned = torch.fft.ifft(torch.fft.fft(ref, dim=-1) * torch.exp(-2j * math.pi * f * shift), dim=-1)
    d = (cur * turned.conj()).sum(0)
    w = d.abs()
    phase = torch.from_numpy(np.unwrap(torch.angle(d).numpy()))
    phi = 2 * math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n
    design = torch.stack([torch.ones_like(phi), torch.cos(phi), torch.sin(phi)], 1) * w[:, None]
    sol = torch.linalg.lstsq(design, (phase * w)[:, None]).solution[:, 0]
    resid = design @ sol - phase * w
    rms = float(torch.sqrt(resid.square().sum() / w.square().sum()))
    scale = -2 * math.pi * radius_per_m
    ta, tb = float(sol[1] / scale * 1e3), float(sol[2] / scale * 1e3)
    return ta, tb, math.degrees(2 * math.pi * shift / n), rms


#: floor (rad) of a plane's phase-fit residual when it weights that plane's translations: noise
#: alone leaves about this much at the navigators' SNR, so cleaner fits are not trusted more
PHASE_RMS_FLOOR = 0.01
#: the three-plane navigator's orbits: (first, second) axis index; each orbit turns from its first
#: axis towards the second, so its profile turns with the rotation about the remaining axis
ORBIT_PLANES = ((0, 1), (1, 2), (2, 0))


def orbital_pose_3plane(
    current: list[torch.Tensor], reference: list[torch.Tensor], radius_per_m: float | Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """All six rigid parameters from three orthogonal orbital navigators (Ward et al., MRM 2000).

    Orbit i lies in the plane of :data:`ORBIT_PLANES` ``[i]`` (xy, yz, zx) and samples the 2D
    Fourier transform of the head's projection onto that plane: :func:`orbital_pose` on it
    gives the two in-plane translations and the rotation about the plane's normal (rz, rx, ry,
    positive by the right-hand rule, as ``R = Rz Ry Rx`` for small angles). A rotation about an
    axis *in* a plane does not turn that plane's profile but changes the projection, which
    corrupts the plane's phase fit most (a 3 degree rz moved the yz orbit's ty by 12 mm on a
    head-sized test object). Each translation is seen by two orbits. Where their radii differ
    it is taken from the larger orbit only: a receive array's sensitivity does not move with the
    head, so an orbit reads the shift of head x sensitivity, and the smaller the radius the more
    the coils hold that shift back (simulated brain phantom, kept ty 2 mm: the yz orbit at 30 /m
    read 1.80 mm, the xy orbit at 60 /m 1.96). A prospective loop cannot remove this pull, which
    follows where the head is and not the residual since the last update: weighted in, it held
    a kept 3 mm step at ~2.5 mm. Orbits of equal radius are combined with weights
    1 / (phase-fit rms residual)^2, so the orbit whose change is not a turn plus a shift counts
    little. What cross-talk remains is proportional to the rotation since the last applied pose,
    so a prospective loop removes it at the following navigators.

    Args:
        current, reference: three complex readouts (coils, N) each, in the order of the planes.
        radius_per_m: the orbits' k radius (1/m), or one per orbit.
    Returns:
        ((tx, ty, tz) mm, (rx, ry, rz) degrees).
    """
    radii = [float(radius_per_m)] * 3 if np.ndim(radius_per_m) == 0 else [float(r) for r in radius_per_m]
    if len(current) != len(ORBIT_PLANES) or len(reference) != len(ORBIT_PLANES):
        raise ValueError(
            f"a three-plane orbital navigator needs {len(ORBIT_PLANES)} readouts and as many references, "
            f"got {len(current)} and {len(reference)}"
        )
    if len(radii) != len(ORBIT_PLANES):
        raise ValueError(
            f"a three-plane orbital navigator needs 1 or {len(ORBIT_PLANES)} radii, got {len(radii)}"
        )
    t_sum, w_sum, rot = np.zeros(3), np.zeros(3), np.zeros(3)
    # per axis, the largest radius among the orbits that see it
    k_max = np.zeros(3)
    for (a, b), radius in zip(ORBIT_PLANES, radii, strict=True):
        k_max[[a, b]] = np.maximum(k_max[[a, b]], radius)
    for (a, b), cur, ref, radius in zip(ORBIT_PLANES, current, reference, radii, strict=True):
        ta, tb, turn, rms = _orbital_fit(cur, ref, radius)
        w = 1.0 / max(rms, PHASE_RMS_FLOOR) ** 2  # inverse variance of the plane's phase fit
        for axis, value in ((a, ta), (b, tb)):
            # a smaller orbit reads the shift of head x receive sensitivity, which the coils hold
            # back; the loop cannot remove that pull (it follows the head, not the residual)
            if radius >= k_max[axis] * (1 - 1e-9):
                t_sum[axis] += w * value
                w_sum[axis] += w
        rot[3 - a - b] = turn  # the plane's normal axis
    t = t_sum / w_sum
    return (float(t[0]), float(t[1]), float(t[2])), (float(rot[0]), float(rot[1]), float(rot[2]))


def rotation_matrix_t(angles_rad: torch.Tensor) -> torch.Tensor:
    """R = Rz Ry Rx (3, 3) from (rx, ry, rz) radians, differentiable."""
    rx, ry, rz = angles_rad[0], angles_rad[1], angles_rad[2]
    one, zero = torch.ones_like(rx), torch.zeros_like(rx)
    mx = torch.stack([one, zero, zero, zero, rx.cos(), -rx.sin(), zero, rx.sin(), rx.cos()]).reshape(3, 3)
    my = torch.stack([ry.cos(), zero, ry.sin(), zero, one, zero, -ry.sin(), zero, ry.cos()]).reshape(3, 3)
    mz = torch.stack([rz.cos(), -rz.sin(), zero, rz.sin(), rz.cos(), zero, zero, zero, one]).reshape(3, 3)
    return mz @ my @ mx


def _params_to_pose(theta: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """theta -> (R (3, 3), t (3,) mm). 2D: theta = (tx, ty, rz_rad); 3D: (tx, ty, tz, rx, ry, rz)."""
    if ndim == 2:
        zero = torch.zeros_like(theta[0])
        return rotation_matrix_t(torch.stack([zero, zero, theta[2]])), torch.stack([theta[0], theta[1], zero])
    return rotation_matrix_t(theta[3:6]), theta[0:3]


def _pose_derivatives(theta: torch.Tensor, coords: torch.Tensor, ndim: int) -> torch.Tensor:
    """d(R c + t)/d theta, (*shape, 3, n_par): identity for the translations, dR/dangle c for the angles."""
    n_par = theta.numel()
    out = torch.zeros(*coords.shape, n_par, dtype=coords.dtype)
    n_t = 2 if ndim == 2 else 3
    for j in range(n_t):
        out[..., j, j] = 1.0
    h = 1e-6  # central difference of the closed-form rotation: exact to ~1e-12 in float64
    for j in range(n_t, n_par):
        e = torch.zeros_like(theta)
        e[j] = h
        dr = (_params_to_pose(theta + e, ndim)[0] - _params_to_pose(theta - e, ndim)[0]) / (2 * h)
        out[..., j] = coords @ dr.T
    return out


def _grid_coords(shape: tuple[int, ...], spacing_mm: tuple[float, ...], dtype: torch.dtype) -> torch.Tensor:
    """Physical (x, y, z) mm of every voxel, (*shape, 3); the voxel n // 2 sits at the origin."""
    axes = [(torch.arange(n, dtype=dtype) - n // 2) * s for n, s in zip(shape, spacing_mm, strict=True)]
    mesh = torch.meshgrid(*axes, indexing="ij")  # (z, y, x) or (y, x)
    xyz = list(reversed(mesh))
    if len(shape) == 2:
        xyz.append(torch.zeros_like(mesh[0]))
    return torch.stack(xyz, -1)


def warp_rigid(
    image: torch.Tensor,
    theta: torch.Tensor,
    spacing_mm: tuple[float, ...],
    coords: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample ``image`` (y, x) or (z, y, x) at ``R p + t`` for every grid point p (bilinear, zeros outside).

    For ``image`` = the reference moved by (R, t), the output is the reference (up to
    interpolation and the field of view): this is the residual model of :func:`register_rigid`.
    """
    ndim = image.ndim
    shape = tuple(image.shape)
    if coords is None:
        coords = _grid_coords(shape, spacing_mm, image.dtype)
    r, t = _params_to_pose(theta, ndim)
    p = coords @ r.T + t  # (*shape, 3) mm
    # to grid_sample's normalised coordinates (align_corners=True: -1 and 1 are the end voxel centres)
    norm = []
    for axis_xyz in range(ndim):  # x, y (, z)
        n = shape[ndim - 1 - axis_xyz]
        s = spacing_mm[ndim - 1 - axis_xyz]
        idx = p[..., axis_xyz] / s + n // 2
        norm.append(2 * idx / max(n - 1, 1) - 1)
    grid = torch.stack(norm, -1)[None]
    out = F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0]


def _downsample(image: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return image
    pool = F.avg_pool2d if image.ndim == 2 else F.avg_pool3d
    return pool(image[None, None], factor, ceil_mode=True)[0, 0]


def fixed_receive_field(image: torch.Tensor, order: int = 2, quantile: float = 0.5) -> torch.Tensor:
    """Smooth multiplicative shading of a magnitude image: exp of a polynomial fitted to log(I).

    Receive-coil sensitivities (and B1+) stay with the scanner while the head moves, so the
    shading they put on a low-resolution image does not move with the anatomy and pulls a
    rigid registration towards no motion (a single ring of loops halved through-plane
    rotations in the simulator). Fitted once on the reference and divided out of the
    reference *and* of every moving image, it leaves images that move rigidly with the head.

    The fit uses the brighter half (``quantile``) of the voxels above 10 % of the maximum:
    tissue of similar intensity, so that the polynomial follows the shading, not the anatomy.

    Args:
        image: real (y, x) or (z, y, x) magnitude image.
        order: total polynomial degree in the normalised coordinates (2 = quadratic).
        quantile: fraction of the foreground intensities below which voxels are left out.
    Returns:
        the field, same shape as ``image`` (float64), normalised to 1 at the grid centre (only
        its shape matters: both images are divided by the same field).
    """
    img = image.detach().abs().to(torch.float64).cpu()
    axes = torch.meshgrid(
        *[torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in img.shape], indexing="ij"
    )
    fg = img > 0.1 * float(img.max())
    if int(fg.sum()) < 10:
        return torch.ones_like(img)
    fit = fg & (img >= torch.quantile(img[fg], quantile))
    powers = [p for p in itertools.product(range(order + 1), repeat=img.ndim) if 0 < sum(p) <= order]
    cols = [torch.ones_like(img)] + [math.prod(a**k for a, k in zip(axes, p, strict=True)) for p in powers]
    design = torch.stack([c[fit] for c in cols], 1)
    coef = torch.linalg.lstsq(design, torch.log(img[fit])[:, None]).solution[:, 0]
    log_field = sum(c * k for c, k in zip(cols, coef, strict=True)) - coef[0]
    return torch.exp(log_field)


def register_rigid(
    moving: torch.Tensor,
    reference: torch.Tensor,
    spacing_mm: tuple[float, ...],
    levels: int = 3,
    iterations: int = 15,
    mask: torch.Tensor | None = None,
    tolerance: float = 1e-4,
) -> RigidEstimate:
    """Rigid pose of ``moving`` relative to ``reference`` (same grid), Gauss-Newton coarse to fine.

    Args:
        moving: real (y, x) or (z, y, x) magnitude image (the reference after motion).
        reference: real image on the same grid.
        spacing_mm: voxel size per array axis (mm), (dy, dx) or (dz, dy, dx).
        levels: resolution levels (each halves the matrix by averaging).
        iterations: Gauss-Newton iterations per level at most.
        mask: optional bool reference-grid mask of the voxels that count.
        tolerance: stop a level when the update is below this (mm and rad).

    Returns:
        :class:`RigidEstimate`; 2D data give (tx, ty) and rz only (the others are 0).
    """
    if moving.shape != reference.shape:
        raise ValueError(
            f"moving shape {tuple(moving.shape)} differs from the reference's {tuple(reference.shape)}"
        )
    ndim = moving.ndim
    if ndim not in (2, 3):
        raise ValueError(f"register_rigid takes (y, x) or (z, y, x) images, got {ndim} dimensions")
    if len(spacing_mm) != ndim:
        raise ValueError(f"spacing_mm needs {ndim} values (one per array axis), got {spacing_mm!r}")
    mov_full = moving.detach().abs().to(torch.float64).cpu()
    ref_full = reference.detach().abs().to(torch.float64).cpu()
    msk = None if mask is None else mask.detach().cpu()
    return _register(mov_full, ref_full, spacing_mm, levels, iterations, msk, tolerance)


def _register(
    mov_full: torch.Tensor,
    ref_full: torch.Tensor,
    spacing_mm: tuple[float, ...],
    levels: int,
    iterations: int,
    mask: torch.Tensor | None,
    tolerance: float,
) -> RigidEstimate:
    ndim = mov_full.ndim
    dtype = torch.float64
    scale = float(ref_full.max()) or 1.0
    mov_full, ref_full = mov_full / scale, ref_full / scale
    n_par = 3 if ndim == 2 else 6
    theta = torch.zeros(n_par, dtype=dtype)
    cost = float("nan")
    total = 0
    for level in reversed(range(levels)):
        f = 2**level
        if min(mov_full.shape) // f < 8:
            continue
        mov, ref = _downsample(mov_full, f), _downsample(ref_full, f)
        spacing = tuple(s * f for s in spacing_mm)
        coords = _grid_coords(tuple(ref.shape), spacing, dtype)
        weight = torch.ones_like(ref)
        if mask is not None:
            weight = (_downsample(mask.to(dtype).cpu(), f) > 0.5).to(dtype)

        # image gradient (per mm, channels x, y (, z)) sampled with the same warp gives the
        # analytic Jacobian: d warp / d theta = grad I(p) . dp/dtheta
        grads = torch.gradient(mov, spacing=list(spacing))  # per array axis (z, y, x)
        grad_xyz = torch.stack(list(reversed(grads)))  # (ndim, *shape) ordered x, y (, z)

        def residual(
            th: torch.Tensor, mov=mov, ref=ref, spacing=spacing, coords=coords, weight=weight
        ) -> torch.Tensor:
            return ((warp_rigid(mov, th, spacing, coords) - ref) * weight).reshape(-1)

        def jacobian(
            th: torch.Tensor, grad_xyz=grad_xyz, spacing=spacing, coords=coords, weight=weight
        ) -> torch.Tensor:
            g = torch.stack([warp_rigid(gi, th, spacing, coords) for gi in grad_xyz], -1)  # (*shape, ndim)
            dp = _pose_derivatives(th, coords, ndim)  # (*shape, 3, n_par) mm per parameter
            jac = (g[..., :, None] * dp[..., :ndim, :]).sum(-2) * weight[..., None]
            return jac.reshape(-1, dp.shape[-1])

        lam = 1e-3
        for _ in range(iterations):
            r = residual(theta)
            jac = jacobian(theta)  # (voxels, n_par)
            h = jac.T @ jac
            g = jac.T @ r
            cost = float(r @ r) / r.numel()
            step = torch.linalg.solve(h + lam * torch.diag(torch.diagonal(h)).clamp_min(1e-12), -g)
            trial = theta + step
            new_cost = float(residual(trial).square().mean())
            total += 1
            if new_cost < cost:
                theta, cost, lam = trial, new_cost, max(lam / 3, 1e-6)
                if float(step.abs().max()) < tolerance:
                    break
            else:
                lam *= 10
                if lam > 1e6:
                    break
    if ndim == 2:
        t = (float(theta[0]), float(theta[1]), 0.0)
        rot = (0.0, 0.0, math.degrees(float(theta[2])))
    else:
        t = (float(theta[0]), float(theta[1]), float(theta[2]))
        rot = tuple(math.degrees(float(v)) for v in theta[3:6])  # type: ignore[assignment]
    # warp_rigid maps reference points p to R p + t in the moving image: that is the head pose itself
    return RigidEstimate(t, rot, cost, total)  # type: ignore[arg-type]
