"""Rigid motion estimators recover known transforms (closed-form k-space of Gaussian blobs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gadgets.feedback import angles_from_matrix, compose, rotation_matrix
from recon.fft import fftnc, ifftnc
from recon.motion_correction import (
    cartesian_k,
    reconstruct_rotated,
    rotated_coordinates,
    undo_translation,
)
from recon.registration import fixed_receive_field, orbital_pose, projection_shift, register_rigid

# (centre x mm, centre y mm, width mm, amplitude): an asymmetric object, so rotations are visible
BLOBS = [(-20.0, 10.0, 18.0, 1.0), (30.0, -20.0, 10.0, 0.7), (0.0, 40.0, 7.0, 0.5), (10.0, 0.0, 40.0, 0.3)]


def blob_spectrum(kx: torch.Tensor, ky: torch.Tensor, t_mm=(0.0, 0.0), rz_deg: float = 0.0) -> torch.Tensor:
    """Exact 2D Fourier transform (k in cycles/mm) of the blobs moved by R(rz) then t.

    f_moved(x) = f(R^T (x - t))  =>  F_moved(k) = F(R^T k) exp(-2 pi i k.t).
    """
    c, s = math.cos(math.radians(rz_deg)), math.sin(math.radians(rz_deg))
    kxr, kyr = c * kx + s * ky, -s * kx + c * ky
    out = torch.zeros_like(kx, dtype=torch.complex128)
    for cx, cy, w, a in BLOBS:
        g = a * 2 * math.pi * w * w * torch.exp(-2 * (math.pi * w) ** 2 * (kxr**2 + kyr**2))
        out = out + g * torch.exp(-2j * math.pi * (kxr * cx + kyr * cy))
    return out * torch.exp(-2j * math.pi * (kx * t_mm[0] + ky * t_mm[1]))


def blob_image(n: int, spacing: float, t_mm=(0.0, 0.0), rz_deg: float = 0.0) -> torch.Tensor:
    """The moved blobs sampled on an (n, n) grid centred at index n // 2 (y, x)."""
    ax = (torch.arange(n, dtype=torch.float64) - n // 2) * spacing
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(math.radians(rz_deg)), math.sin(math.radians(rz_deg))
    qx, qy = xx - t_mm[0], yy - t_mm[1]
    px, py = c * qx + s * qy, -s * qx + c * qy
    f = torch.zeros_like(px)
    for cx, cy, w, a in BLOBS:
        f = f + a * torch.exp(-((px - cx) ** 2 + (py - cy) ** 2) / (2 * w * w))
    return f


def navigator_line(shift_mm: float, n: int = 128, spacing: float = 3.4375, coils: int = 4, noise: float = 0.0,
                   seed: int = 0) -> torch.Tensor:  # fmt: skip
    """(coil, n) k-space line through the centre of the blob projection onto x, object shifted along x."""
    coil_gen = torch.Generator().manual_seed(1234)  # the coils do not change between navigators
    gen = torch.Generator().manual_seed(seed)
    kx = (torch.arange(n, dtype=torch.float64) - n // 2) / (n * spacing)
    line = blob_spectrum(kx, torch.zeros_like(kx), (shift_mm, 0.0))
    # fixed per-coil complex weights (a coil sensitivity that is flat along the readout)
    weights = torch.polar(torch.rand(coils, 1, generator=coil_gen, dtype=torch.float64) + 0.5,
                          torch.rand(coils, 1, generator=coil_gen, dtype=torch.float64) * 6)  # fmt: skip
    data = weights * line[None]
    scale = float(data.abs().max())
    return data + noise * scale * torch.randn(coils, n, dtype=torch.complex128, generator=gen)


@pytest.mark.parametrize("shift_mm", [0.37, -2.9, 8.15, -21.4])
def test_projection_shift_recovers_known_translation_noiseless(shift_mm):
    est = projection_shift(navigator_line(shift_mm), navigator_line(0.0), 3.4375)
    assert est == pytest.approx(shift_mm, abs=1e-3)


def test_projection_shift_at_realistic_snr_is_well_within_the_half_millimetre_goal():
    # noise 1 % of the k-space peak per sample and coil: k-centre SNR ~100, as for a navigator
    errors = [
        projection_shift(
            navigator_line(t, noise=0.01, seed=s), navigator_line(0.0, noise=0.01, seed=s + 100), 3.4375
        )
        - t
        for s, t in enumerate(np.linspace(-5, 5, 9))
    ]
    assert float(np.sqrt(np.mean(np.square(errors)))) < 0.2


def test_projection_shift_rejects_bad_input():
    line = navigator_line(0.0)
    with pytest.raises(ValueError, match="differs from the reference"):
        projection_shift(line, line[:, :64], 3.4)
    with pytest.raises(ValueError, match="band must be in"):
        projection_shift(line, line, 3.4, band=0.9)
    with pytest.raises(ValueError, match="no common signal"):
        projection_shift(torch.zeros_like(line), line, 3.4)


@pytest.mark.parametrize("pose", [(2.0, -3.0, 4.0), (5.5, 1.2, -7.0), (-0.4, 0.3, 0.5)])
def test_register_rigid_2d_recovers_translation_and_rotation(pose):
    spacing = 3.4375
    ref = blob_image(64, spacing)
    moved = blob_image(64, spacing, pose[:2], pose[2])
    est = register_rigid(moved, ref, (spacing, spacing))
    assert est.translation_mm[:2] == pytest.approx(pose[:2], abs=0.05)
    assert est.rotation_deg[2] == pytest.approx(pose[2], abs=0.05)


BLOBS_3D = (
    ((-25.0, 10.0, 8.0), 7.0, 1.0),
    ((22.0, -18.0, -12.0), 6.0, 0.8),
    ((0.0, 28.0, 15.0), 6.0, 0.6),
    ((8.0, -5.0, -26.0), 7.0, 0.9),
    ((5.0, 0.0, 0.0), 12.0, 0.3),
)


def test_register_rigid_3d_recovers_six_parameters():
    n, spacing = 32, 3.0
    ax = (torch.arange(n, dtype=torch.float64) - n // 2) * spacing
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1)
    t = torch.tensor([1.5, -2.0, 1.0], dtype=torch.float64)
    rot = (3.0, -2.0, 4.0)
    r = torch.from_numpy(rotation_matrix(rot))

    def volume(p: torch.Tensor) -> torch.Tensor:
        f = torch.zeros(p.shape[:-1], dtype=torch.float64)
        # blobs far from the centre (rotations move them) and several voxels wide (interpolation)
        for c, w, a in BLOBS_3D:
            f = f + a * torch.exp(-((p - torch.tensor(c, dtype=torch.float64)) ** 2).sum(-1) / (2 * w * w))
        return f

    ref = volume(pts)
    moved = volume((pts - t) @ r)  # f_moved(x) = f(R^T (x - t))
    est = register_rigid(moved, ref, (spacing, spacing, spacing), levels=2, iterations=60, tolerance=1e-7)
    assert est.translation_mm == pytest.approx(tuple(t.tolist()), abs=0.1)
    assert est.rotation_deg == pytest.approx(rot, abs=0.15)


def _head_and_shading(n: int = 32, spacing: float = 3.0):
    """A 3D 'head' (ellipsoid of tissue with blobs) and a scanner-fixed quadratic shading."""
    ax = (torch.arange(n, dtype=torch.float64) - n // 2) * spacing
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1)

    def head(p: torch.Tensor) -> torch.Tensor:
        r2 = (p[..., 0] / 40) ** 2 + (p[..., 1] / 45) ** 2 + (p[..., 2] / 35) ** 2
        f = torch.sigmoid((1 - r2) * 12)  # smooth skull edge
        for c, w, a in BLOBS_3D:
            d2 = ((p - torch.tensor(c, dtype=torch.float64)) ** 2).sum(-1)
            f = f - 0.5 * a * torch.exp(-d2 / (2 * w * w))
        return f.clamp_min(0)

    u = pts / (n * spacing / 2)
    shading = torch.exp(-0.8 * u[..., 2] ** 2 - 0.3 * u[..., 0] ** 2 + 0.25 * u[..., 1])
    return pts, head, shading


def test_fixed_receive_field_recovers_a_known_shading():
    pts, head, shading = _head_and_shading()
    image = head(pts) * shading
    field = fixed_receive_field(image)
    tissue = head(pts) > 0.9
    # the field is defined up to a constant factor: compare shapes
    ratio = (field / shading)[tissue]
    assert float(ratio.std() / ratio.mean()) < 0.03


def test_fixed_shading_biases_registration_unless_divided_out():
    """The shading stays with the scanner while the head moves (receive coils)."""
    pts, head, shading = _head_and_shading()
    t = torch.tensor([1.0, -1.5, 2.0], dtype=torch.float64)
    rot = (4.0, -3.0, 2.0)
    r = torch.from_numpy(rotation_matrix(rot))
    ref = head(pts) * shading
    moved = head((pts - t) @ r) * shading
    sp = (3.0, 3.0, 3.0)
    kw = dict(levels=2, iterations=60, tolerance=1e-7)
    naive = register_rigid(moved, ref, sp, **kw)
    field = fixed_receive_field(ref)
    corrected = register_rigid(moved / field, ref / field, sp, **kw)
    err = lambda e: max(abs(a - b) for a, b in zip(e.rotation_deg, rot, strict=True))  # noqa: E731
    assert err(corrected) < 0.2
    assert err(naive) > 2 * err(corrected)
    assert corrected.translation_mm == pytest.approx(tuple(t.tolist()), abs=0.15)


def _orbit(t_mm=(0.0, 0.0), rz_deg: float = 0.0, n: int = 128, radius_per_mm: float = 0.04, coils: int = 4):
    """(coils, n) orbital readout of the moved blobs: k = radius (cos, sin)(2 pi (j + 1/2) / n)."""
    phi = 2 * math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n
    line = blob_spectrum(radius_per_mm * torch.cos(phi), radius_per_mm * torch.sin(phi), t_mm, rz_deg)
    gen = torch.Generator().manual_seed(7)  # fixed complex coil weights
    w = torch.polar(torch.rand(coils, 1, generator=gen, dtype=torch.float64) + 0.5,
                    torch.rand(coils, 1, generator=gen, dtype=torch.float64) * 6.28)  # fmt: skip
    return w * line[None]


ORBIT_CASES = [((0.0, 0.0), 0.0), ((2.0, -3.0), 0.0), ((0.0, 0.0), 3.0), ((-1.0, 1.5), -2.5), ((4, 2), 8)]


@pytest.mark.parametrize("t_mm, rz_deg", ORBIT_CASES)
def test_orbital_pose_recovers_translation_and_in_plane_rotation(t_mm, rz_deg):
    ref = _orbit()
    tx, ty, rz = orbital_pose(_orbit(t_mm, rz_deg), ref, 40.0)  # 0.04 /mm = 40 /m
    assert (tx, ty) == pytest.approx(t_mm, abs=0.02)
    assert rz == pytest.approx(rz_deg, abs=0.05)


#: (centre mm (x, y, z), width mm, amplitude): an irregular, head-sized cluster of 3D Gaussians
HEAD_BLOBS = (
    ((-30, 40, 10), 6, 1.0), ((35, 25, -15), 5, 0.8), ((0, -50, 5), 7, 1.2), ((-45, -20, -20), 5, 0.7),
    ((20, -10, 25), 6, 0.9), ((50, -40, 0), 4, 0.6), ((-10, 10, -30), 5, 1.1), ((10, 60, -5), 4, 0.5),
)  # fmt: skip


def _orbits_3plane(t_mm=(0.0, 0.0, 0.0), r_deg=(0.0, 0.0, 0.0), n: int = 128, radius_per_mm: float = 0.06):
    """The three orbits (xy, yz, zx; coils, n) of the moved 3D blobs, from their exact Fourier
    transform: f_moved(x) = f(R^T (x - t)) => F_moved(k) = F(R^T k) exp(-2 pi i k.t)."""
    from gadgets.feedback import rotation_matrix
    from recon.registration import ORBIT_PLANES

    rot = rotation_matrix(r_deg)
    phi = 2 * np.pi * (np.arange(n) + 0.5) / n
    gen = np.random.default_rng(7)  # fixed complex coil weights
    weights = (gen.random((4, 1)) + 0.5) * np.exp(1j * gen.random((4, 1)) * 2 * np.pi)
    out = []
    for a, b in ORBIT_PLANES:
        k = np.zeros((n, 3))
        k[:, a], k[:, b] = radius_per_mm * np.cos(phi), radius_per_mm * np.sin(phi)
        kr = k @ rot  # rows R^T k
        s = np.zeros(n, dtype=np.complex128)
        for c, w, amp in HEAD_BLOBS:
            g = amp * (2 * np.pi * w * w) ** 1.5 * np.exp(-2 * (np.pi * w) ** 2 * (kr**2).sum(1))
            s += g * np.exp(-2j * np.pi * kr @ np.asarray(c, dtype=np.float64))
        out.append(torch.from_numpy(weights * (s * np.exp(-2j * np.pi * k @ np.asarray(t_mm)))[None]))
    return out


# (translation mm, rotation deg): pure translation, the nod's peak, one rotation about each axis
ORBIT_3PLANE_CASES = [
    ((1.0, -2.0, 1.5), (0.0, 0.0, 0.0)),
    ((0.0, 4.0, 1.0), (2.0, 0.0, 0.0)),
    ((0.5, 0.0, -1.0), (0.0, -1.5, 0.0)),
    ((1.0, -1.0, 0.0), (0.0, 0.0, 3.0)),
]


@pytest.mark.parametrize("t_mm, r_deg", ORBIT_3PLANE_CASES)
def test_three_plane_orbital_pose_recovers_all_six_parameters(t_mm, r_deg):
    from recon.registration import orbital_pose_3plane

    t, r = orbital_pose_3plane(_orbits_3plane(t_mm, r_deg), _orbits_3plane(), 60.0)
    # cross-talk: a translation whose both orbits contain the rotation axis (tz under rz) moves
    # by ~0.1 mm per degree
    assert t == pytest.approx(t_mm, abs=0.1 + 0.1 * np.abs(r_deg).max())
    moved = int(np.argmax(np.abs(r_deg)))
    if any(r_deg):
        assert r[moved] == pytest.approx(r_deg[moved], abs=0.1)
    # a rotation about one axis leaks into the others' orbits (the projection changes shape):
    # up to a third of it here (rz into the yz orbit), and a prospective loop sees only the rotation
    # since its last update
    others = [r[i] - r_deg[i] for i in range(3) if i != moved]
    assert np.abs(others).max() <= 0.35 * max(1.0, np.abs(r_deg).max())


def test_three_plane_translations_are_weighted_by_each_orbits_phase_fit():
    """A 3 degree rz turns the xy orbit but changes the yz projection: the yz orbit alone reads
    ty off by several mm, the weighted combination does not."""
    from recon.registration import ORBIT_PLANES, orbital_pose_3plane

    cur, ref = _orbits_3plane((0.0, 0.0, 0.0), (0.0, 0.0, 3.0)), _orbits_3plane()
    yz = ORBIT_PLANES.index((1, 2))
    _, ty_yz, _ = orbital_pose(cur[yz], ref[yz], 60.0)
    assert abs(ty_yz) > 2.0
    t, _ = orbital_pose_3plane(cur, ref, 60.0)
    assert np.abs(t[:2]).max() < 0.1  # tx, ty: the xy orbit only turned
    assert abs(t[2]) < 0.3  # tz: both its orbits (yz, zx) contain the z axis
    with pytest.raises(ValueError, match="needs 3 readouts"):
        orbital_pose_3plane(cur[:2], ref, 60.0)


def test_three_plane_in_plane_translations_come_from_the_larger_orbit():
    """With the yz and zx orbits at a smaller radius (the protocol's 30 /m against 60 /m), tx and
    ty are the xy orbit's alone: a smaller orbit reads a shift the fixed receive coils hold back
    (modelled here as a yz/zx orbit that sees 80 % of the move), and weighting it in would keep a
    prospective loop short of the head. tz, seen by two orbits of one radius, stays weighted."""
    from recon.registration import orbital_pose_3plane

    t_mm = (1.0, -2.0, 1.5)
    pulled = (0.8 * t_mm[0], 0.8 * t_mm[1], t_mm[2])

    def orbits(radius_through: float) -> tuple[list, list]:
        xy = _orbits_3plane(t_mm)[0], _orbits_3plane()[0]
        k = radius_through
        rest = _orbits_3plane(pulled, radius_per_mm=k), _orbits_3plane(radius_per_mm=k)
        return [xy[0], *rest[0][1:]], [xy[1], *rest[1][1:]]

    cur, ref = orbits(0.03)
    t, _ = orbital_pose_3plane(cur, ref, (60.0, 30.0, 30.0))
    tx, ty, _ = orbital_pose(cur[0], ref[0], 60.0)
    assert t[:2] == pytest.approx((tx, ty), abs=1e-9)
    assert t == pytest.approx(t_mm, abs=0.05)
    cur, ref = orbits(0.06)  # one radius: every orbit counts, so the pulled ones drag tx, ty
    t, _ = orbital_pose_3plane(cur, ref, 60.0)
    assert abs(t[1] - t_mm[1]) > 0.1 and t[2] == pytest.approx(t_mm[2], abs=0.05)


def test_orbital_pose_refuses_mismatched_or_empty_readouts():
    with pytest.raises(ValueError, match="one shape"):
        orbital_pose(torch.zeros(2, 8, dtype=torch.complex64), torch.zeros(2, 9, dtype=torch.complex64), 40.0)
    with pytest.raises(ValueError, match="without signal"):
        orbital_pose(torch.zeros(2, 8, dtype=torch.complex64), torch.zeros(2, 8, dtype=torch.complex64), 40.0)


def test_register_rigid_rejects_mismatched_input():
    with pytest.raises(ValueError, match="differs from the reference"):
        register_rigid(torch.zeros(8, 8), torch.zeros(8, 9), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing_mm needs 2"):
        register_rigid(torch.zeros(16, 16), torch.zeros(16, 16), (1.0,))


def test_pose_composition_matches_matrices():
    a = (np.array([1.0, -2.0, 0.5]), np.array([3.0, -1.0, 10.0]))
    b = (np.array([-0.3, 4.0, 2.0]), np.array([-5.0, 2.0, 1.0]))
    t, r = compose(a, b)
    ra, rb = rotation_matrix(a[1]), rotation_matrix(b[1])
    p = np.array([10.0, -7.0, 3.0])
    assert np.allclose(rotation_matrix(r) @ p + t, ra @ (rb @ p + b[0]) + a[0])
    assert np.allclose(angles_from_matrix(rotation_matrix((4.0, -3.0, 20.0))), (4.0, -3.0, 20.0))


def test_undo_translation_equals_the_fourier_shift_theorem():
    n, spacing = 32, 2.0
    fov = n * spacing
    ky, kx = cartesian_k(n, n, (fov, fov))
    ky_mm, kx_mm = ky[:, None] * 1e-3 * torch.ones(n, n), kx[None, :] * 1e-3 * torch.ones(n, n)
    ref = blob_spectrum(kx_mm, ky_mm)
    # each line acquired at a different head position
    t = torch.stack([torch.linspace(-3, 3, n), torch.linspace(2, -1, n)], 1).to(torch.float64)
    moved = torch.stack([blob_spectrum(kx_mm[i], ky_mm[i], tuple(t[i].tolist())) for i in range(n)])
    fixed = undo_translation(moved[None], (fov, fov), t)[0]
    assert torch.allclose(fixed, ref, atol=1e-9 * float(ref.abs().max()))
    assert not torch.allclose(moved, ref, atol=1e-3 * float(ref.abs().max()))


def test_reconstruct_rotated_undoes_per_line_rotations():
    n, spacing = 48, 4.0
    fov = n * spacing
    rot = torch.linspace(-4.0, 6.0, n).to(torch.float64)  # in-plane rotation per line (deg)
    ky, kx = cartesian_k(n, n, (fov, fov))
    ky_mm, kx_mm = (ky[:, None] * 1e-3).expand(n, n), (kx[None, :] * 1e-3).expand(n, n)
    moved = torch.stack([blob_spectrum(kx_mm[i], ky_mm[i], rz_deg=float(rot[i])) for i in range(n)])
    # orthonormal scaling of recon.fft: image = ifftnc(k) with k sampled per pixel
    truth = ifftnc(blob_spectrum(kx_mm, ky_mm).to(torch.complex64), (-2, -1)).abs()
    naive = ifftnc(moved.to(torch.complex64), (-2, -1)).abs()
    fixed = reconstruct_rotated(
        moved[None].to(torch.complex64), rotated_coordinates(n, n, rot), iterations=20
    )[0].abs()
    err_naive = float((naive - truth).norm() / truth.norm())
    err_fixed = float((fixed - truth).norm() / truth.norm())
    assert err_fixed < 0.25 * err_naive
    assert err_fixed < 0.02
    _ = fftnc  # the forward transform is the model the recon inverts


def _slab_orbits(tz_mm: float, radius_per_m: float, n: int = 128) -> list[torch.Tensor]:
    """The three orbits of the simulator's thin phantom (a 160 x 180 x 15 mm box) moved by
    ``tz_mm``, with the imaged slice's band (|z| < 2.5 mm, 0.32 of the magnetisation: the
    benchmark's 70 + 30 degree steady state against 30 alone) saturated where the scanner keeps
    it, in its own frame: exact box Fourier transforms, F = prod_i L_i sinc(k_i L_i)."""
    from recon.registration import ORBIT_PLANES

    phi = 2 * np.pi * (np.arange(n) + 0.5) / n
    out = []
    for a, b in ORBIT_PLANES:
        r = (60.0 if (a, b) == (0, 1) else radius_per_m) * 1e-3  # 1/mm
        k = np.zeros((n, 3))
        k[:, a], k[:, b] = r * np.cos(phi), r * np.sin(phi)

        def box(size, k=k):
            return np.prod([s * np.sinc(k[:, i] * s) for i, s in enumerate(size)], axis=0)

        s = box((160.0, 180.0, 15.0)) * np.exp(-2j * np.pi * k[:, 2] * tz_mm) - 0.68 * box(
            (160.0, 180.0, 5.0)
        )
        out.append(torch.from_numpy(s[None]))
    return out


def test_through_plane_orbits_sit_below_the_thin_phantoms_first_zero():
    """The saturated band stays in the scanner's frame when the head moves through the slice. On
    a 15 mm slab at 60 /m (near the slab's first zero, 1/15 mm) the band dominates the yz and zx
    orbits and tz comes out with the wrong sign -- the three-plane loop oscillated. At the
    protocol's through-plane radius the sign is right and the gain bounded, towards the band's
    limit 15 / (15 - 0.68 * 5) = 1.29 as k -> 0, which a prospective loop converges through."""
    from recon.registration import orbital_pose_3plane
    from sequences.navigator import THROUGH_PLANE_RADIUS

    for radius, gain in ((60.0, (-1.2, -0.5)), (THROUGH_PLANE_RADIUS, (1.29, 1.5))):
        for tz in (1.0, -2.0):
            t, r = orbital_pose_3plane(
                _slab_orbits(tz, radius), _slab_orbits(0.0, radius), (60.0, radius, radius)
            )
            assert gain[0] <= t[2] / tz <= gain[1], (radius, tz, t)
            assert np.abs(t[:2]).max() < 1e-6 and np.abs(r).max() < 1e-6


def test_the_gadget_reads_each_orbits_radius_from_the_header():
    """orbital3 headers carry the yz/zx radius; files written before it existed fall back to the
    in-plane radius for all three orbits; a bad value gets one error naming the field."""
    from types import SimpleNamespace

    from gadgets.motion import _orbital_navigator

    def header(**doubles):
        strings = [SimpleNamespace(name="unisono.navigator", value="orbital-3plane")]
        values = [SimpleNamespace(name=k, value=v) for k, v in doubles.items()]
        return SimpleNamespace(
            userParameters=SimpleNamespace(userParameterString=strings, userParameterDouble=values)
        )

    both = {"navigator_orbital_radius_per_m": 60.0, "navigator_orbital_through_plane_radius_per_m": 30.0}
    assert _orbital_navigator(header(**both))[0] == (60.0, 30.0, 30.0)
    assert _orbital_navigator(header(navigator_orbital_radius_per_m=60.0))[0] == (60.0, 60.0, 60.0)
    with pytest.raises(ValueError, match="navigator_orbital_through_plane_radius_per_m is 0.0"):
        _orbital_navigator(header(**{**both, "navigator_orbital_through_plane_radius_per_m": 0.0}))
