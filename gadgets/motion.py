"""Motion estimation gadget: rigid head pose from navigators or low-resolution images, fed back.

A thin adapter over :mod:`recon.registration`: it picks the navigator readouts
(``ACQ_IS_NAVIGATION_DATA``, ``SEG`` = axis: 0 = x projection, 1 = y) out of
the stream, keeps the first complete pair as the reference, and after every
later pair emits one feedback text message (:mod:`gadgets.feedback`) before
passing the navigator on. Orbital navigators (header ``unisono.navigator``) are
read the same way: ``orbital`` (one in-plane orbit: tx, ty, rz) or ``orbital-3plane``
(SEG 0, 1, 2 = orbits in the xy, yz and zx planes: all six parameters), estimated
when a navigator's last orbit arrives. Everything it receives goes on unchanged, so it can
sit anywhere before the accumulation; put it first for the shortest latency.

Under prospective correction a navigator sees only the residual motion r; the
scanner tags each readout with the pose a it applied (``gadgets.feedback``),
and the head pose sent back is a ∘ r.

With ``method = "image"`` the gadget instead reconstructs a low-resolution
magnitude image of every repetition (central ``lowres_lines`` k-space lines and
partitions, FFT, root-sum-of-squares) and registers it to the first repetition's
image with :func:`recon.registration.register_rigid`: single-slice 2D data give
tx, ty and rz (slice-to-slice), 3D data (gre3d partitions) all six parameters
(volume-to-volume) -- slower feedback, but it sees the rotations and the
through-plane motion the two projection navigators cannot.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.feedback import (
    FeedbackError,
    MotionFeedback,
    angles_from_matrix,
    applied_pose,
    compose,
    encode,
    rotation_matrix,
)
from recon.fft import ifftnc
from recon.registration import (
    fixed_receive_field,
    orbital_pose,
    orbital_pose_3plane,
    projection_shift,
    register_rigid,
)

__all__ = ["motion_estimation", "TIME_TICK_S"]

log = logging.getLogger(__name__)

#: MRD acquisition_time_stamp tick (s), as Siemens and the simulator count it
TIME_TICK_S = 2.5e-3
_METHODS = ("navigator", "image")
#: which of (tx, ty, tz, rx, ry, rz) each navigator determines
_PAIR_OBSERVED = (True, True, False, False, False, False)
#: header tag (userParameterString "unisono.navigator") of each orbital navigator -> (orbits per
#: navigator, what it determines, the feedback's method name)
_ORBITAL_KINDS = {
    "orbital": (1, (True, True, False, False, False, True), "navigator-orbital"),
    "orbital-3plane": (3, (True,) * 6, "navigator-orbital-3plane"),
}


@dataclass
class _NavState:
    """Reference and latest navigator readouts per axis (0 = x, 1 = y)."""

    reference: dict[int, torch.Tensor] = field(default_factory=dict)
    reference_pose: tuple[np.ndarray, np.ndarray] | None = None
    reference_time_s: float | None = None
    latest: dict[int, ismrmrd.Acquisition] = field(default_factory=dict)
    pairs_seen: int = 0


def _sample_spacing_mm(header: Any, enc_index: int, n_samples: int) -> float:
    """Image-space spacing along a readout of ``n_samples``: encoded readout FOV / samples (mm)."""
    enc = header.encoding[enc_index].encodedSpace
    return float(enc.fieldOfView_mm.x) / n_samples


def motion_estimation(
    connection: Any,
    *,
    method: str = "navigator",
    emit_feedback: bool = True,
    lowres_lines: int = 32,
    min_interval_s: float = 0.0,
    reference_pair: int = 1,
    band: float = 0.25,
    min_change_mm: float = 0.0,
    min_change_deg: float = 0.0,
) -> None:
    """Estimate rigid motion in the stream and send :mod:`gadgets.feedback` messages back.

    Params:
        method: ``navigator`` (projection navigators, x/y translation, low latency) or
            ``image`` (per-repetition low-resolution image registration).
        emit_feedback: send the feedback texts (off = estimate and log only).
        lowres_lines: image method: central phase-encoding lines (and 2x as many readout
            samples) of the low-resolution image.
        min_interval_s: do not send feedback more often than this (sequence time, s).
        reference_pair: navigator method: the pair (0 = first) taken as the reference; earlier
            pairs are skipped because the magnetization is still approaching its steady state.
        band: navigator method: k-space half-band used (fraction of the samples, see
            :func:`recon.registration.projection_shift`).
        min_change_mm, min_change_deg: send a new pose only when it differs from the last one
            sent by more than this in some component (a dead band). 0 (default) sends every
            estimate and leaves the dead band to the scanner, which knows what it runs with.
    """
    if method not in _METHODS:
        raise ValueError(f"motion gadget parameter 'method' must be one of {_METHODS}, got {method!r}")
    if not isinstance(reference_pair, int) or reference_pair < 0:
        raise ValueError(
            f"motion gadget parameter 'reference_pair' must be an integer >= 0, got {reference_pair!r}"
        )
    if not 0 < band <= 0.5:
        raise ValueError(f"motion gadget parameter 'band' must be in (0, 0.5], got {band!r}")
    if min_change_mm < 0 or min_change_deg < 0:
        raise ValueError(
            f"motion gadget parameters 'min_change_mm' and 'min_change_deg' must be >= 0, "
            f"got {min_change_mm!r} and {min_change_deg!r}"
        )
    if lowres_lines < 8:
        raise ValueError(f"motion gadget parameter 'lowres_lines' must be >= 8, got {lowres_lines}")
    if method == "image":
        enc = connection.header.encoding[0]
        limits = enc.encodingLimits
        n_slices = 1 + int(limits.slice.maximum) if limits is not None and limits.slice is not None else 1
        if n_slices > 1:
            raise ValueError(
                "motion gadget method 'image' supports single-slice 2D data or one 3D volume; this "
                f"stream has {n_slices} slices (use method 'navigator')"
            )
    state = _NavState()
    orbital = _orbital_navigator(connection.header)
    images: dict[int, dict[tuple[int, int], np.ndarray]] = {}  # repetition -> (line, partition) -> data
    reference_image: tuple[torch.Tensor, tuple[float, ...], tuple[np.ndarray, np.ndarray]] | None = None
    reference_image_s: float | None = None
    field_map = torch.ones(())
    seq = 0
    last_sent_s = -np.inf
    last_pose = (np.zeros(3), np.zeros(3))  # what the scanner runs with before any feedback

    def send_estimate(
        acq: ismrmrd.Acquisition, t_mm, r_deg, observed, how: str, t_in: float, ref_s: float | None
    ) -> None:
        nonlocal seq, last_sent_s, last_pose
        time_s = int(acq.acquisition_time_stamp) * TIME_TICK_S
        if not emit_feedback or time_s - last_sent_s < min_interval_s:
            return
        moved_mm = float(np.max(np.abs(np.asarray(t_mm) - last_pose[0])))
        moved_deg = float(np.max(np.abs(np.asarray(r_deg) - last_pose[1])))
        if moved_mm <= min_change_mm and moved_deg <= min_change_deg:
            log.debug("pose change %.3f mm / %.3f deg within the dead band: not sent", moved_mm, moved_deg)
            return
        try:
            fb = MotionFeedback(
                seq=seq,
                scan_counter=int(acq.scan_counter),
                acquisition_time_stamp=int(acq.acquisition_time_stamp),
                translation_mm=tuple(float(v) for v in t_mm),  # type: ignore[arg-type]
                rotation_deg=tuple(float(v) for v in r_deg),  # type: ignore[arg-type]
                observed=observed,
                time_s=time_s,
                method=how,
                processing_ms=(time.perf_counter() - t_in) * 1e3,
                reference_time_s=ref_s,
            )
        except FeedbackError as exc:
            # an estimate outside the schema (e.g. a lost navigator) must not stop the recon
            log.warning("motion estimate at scan counter %d not sent: %s", int(acq.scan_counter), exc)
            return
        connection.send(encode(fb))
        seq += 1
        last_sent_s = time_s
        last_pose = (np.asarray(t_mm, dtype=np.float64), np.asarray(r_deg, dtype=np.float64))

    def estimate_and_send(acq: ismrmrd.Acquisition, t_in: float, compute, observed, how: str) -> None:
        """Run one navigator estimate; a navigator it cannot use is skipped, the stream goes on."""
        try:
            est = compute()
        except ValueError as exc:  # e.g. a navigator without signal
            log.warning("%s at scan counter %d skipped: %s", how, int(acq.scan_counter), exc)
            return
        if est is not None:
            send_estimate(acq, est[0], est[1], observed, how, t_in, state.reference_time_s)

    for item in connection:
        t_in = time.perf_counter()
        if not isinstance(item, ismrmrd.Acquisition) or item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            connection.send(item)
            continue
        if method == "navigator" and item.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA):
            axis = int(item.idx.segment)
            if orbital is not None:
                radii, (n_orbits, observed, how) = orbital
                if axis == 0:
                    state.latest.clear()  # a navigator starts: drop an incomplete one
                state.latest[axis] = item
                # a navigator is complete with its last orbit
                if axis == n_orbits - 1 and len(state.latest) == n_orbits:
                    orbits = [state.latest[i] for i in range(n_orbits)]
                    state.latest.clear()
                    compute = functools.partial(_orbital, state, orbits, radii, reference_pair)
                    estimate_and_send(item, t_in, compute, observed, how)
            elif axis in (0, 1):
                state.latest[axis] = item
                # a pair is complete when its y projection (played after x) arrives
                if axis == 1 and 0 in state.latest:
                    estimate_and_send(
                        item, t_in, lambda: _navigator_pair(state, connection.header, reference_pair, band),
                        _PAIR_OBSERVED, "navigator-projection",
                    )  # fmt: skip
            connection.send(item)
            continue
        if method == "image" and not item.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA):
            rep = int(item.idx.repetition)
            key = (int(item.idx.kspace_encode_step_1), int(item.idx.kspace_encode_step_2))
            images.setdefault(rep, {})[key] = np.asarray(item.data)
            done = item.is_flag_set(ismrmrd.ACQ_LAST_IN_REPETITION) or item.is_flag_set(
                ismrmrd.ACQ_LAST_IN_MEASUREMENT
            )
            if done:
                lines = images.pop(rep)
                img, spacing = _lowres_image(lines, connection.header, lowres_lines)
                pose = applied_pose(item)[:2]
                if reference_image is None:
                    # the coils' shading is the scanner's: fitted once, divided out of every image
                    field_map = fixed_receive_field(img)
                    reference_image = (img / field_map, spacing, pose)
                    reference_image_s = int(item.acquisition_time_stamp) * TIME_TICK_S
                else:
                    est = register_rigid(img / field_map, reference_image[0], spacing, mask=_interior(img))
                    head = compose(pose, (np.asarray(est.translation_mm), np.asarray(est.rotation_deg)))
                    observed = (True, True, False, False, False, True) if img.ndim == 2 else (True,) * 6
                    send_estimate(
                        item, head[0], head[1], observed, "image-registration", t_in, reference_image_s
                    )
        connection.send(item)


def _navigator_pair(
    state: _NavState, header: Any, reference_pair: int, band: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Head pose (translation mm, rotation deg) from the latest x/y navigator pair;
    None until the reference exists."""
    nav_x, nav_y = state.latest[0], state.latest[1]
    state.latest.clear()
    state.pairs_seen += 1
    data = {a: torch.from_numpy(np.asarray(acq.data)) for a, acq in ((0, nav_x), (1, nav_y))}
    if not state.reference:
        if state.pairs_seen <= reference_pair:
            return None
        state.reference = data
        state.reference_pose = applied_pose(nav_y)[:2]
        state.reference_time_s = int(nav_y.acquisition_time_stamp) * TIME_TICK_S
        return None
    head_t = np.zeros(3)
    head_r = np.zeros(3)
    for a, acq in ((0, nav_x), (1, nav_y)):
        spacing = _sample_spacing_mm(header, int(acq.encoding_space_ref), int(acq.number_of_samples))
        residual = np.zeros(3)
        residual[a] = projection_shift(data[a], state.reference[a], spacing, band=band)
        # each projection was encoded in the frame the scanner applied to it (it may change
        # between the two blocks): head = applied ∘ residual, taken per axis
        t, r = compose(applied_pose(acq)[:2], (residual, np.zeros(3)))
        head_t[a] = t[a]
        head_r = r
    head_t[2] = compose(applied_pose(nav_y)[:2], (np.zeros(3), np.zeros(3)))[0][2]
    return _relative_to_reference(state, head_t, head_r)


def _relative_to_reference(
    state: _NavState, head_t: np.ndarray, head_r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The head pose relative to the head at the reference navigator (taken under a correction
    or not)."""
    assert state.reference_pose is not None
    ref_t, ref_r = state.reference_pose
    if np.any(ref_t) or np.any(ref_r):
        rr = rotation_matrix(ref_r)
        return rr.T @ (head_t - ref_t), np.asarray(angles_from_matrix(rr.T @ rotation_matrix(head_r)))
    return head_t, head_r


def _orbital_navigator(header: Any) -> tuple[tuple[float, ...], tuple[int, tuple[bool, ...], str]] | None:
    """(k radius 1/m of each orbit, its entry of _ORBITAL_KINDS) when the header announces an
    orbital navigator, else None. The three-plane navigator's yz and zx orbits have their own
    radius (``navigator_orbital_through_plane_radius_per_m``; files written before it existed used
    the in-plane one for all three)."""
    up = getattr(header, "userParameters", None)
    strings = {p.name: p.value for p in (getattr(up, "userParameterString", None) or [])}
    tag = strings.get("unisono.navigator")
    if tag not in _ORBITAL_KINDS:
        return None
    doubles = {p.name: p.value for p in (getattr(up, "userParameterDouble", None) or [])}
    radius = doubles.get("navigator_orbital_radius_per_m")
    through = doubles.get("navigator_orbital_through_plane_radius_per_m", radius)
    for name, value in (("navigator_orbital_radius_per_m", radius),
                        ("navigator_orbital_through_plane_radius_per_m", through)):  # fmt: skip
        if value is None or not float(value) > 0:
            raise ValueError(
                f"header says unisono.navigator = {tag!r} but userParameterDouble "
                f"{name} is {value!r}; it must be the orbit's k radius > 0 (1/m)"
            )
    kind = _ORBITAL_KINDS[tag]
    radii = (float(radius),) + (float(through),) * (kind[0] - 1)
    return radii, kind


def _orbital(
    state: _NavState, orbits: list[ismrmrd.Acquisition], radii: tuple[float, ...], reference_pair: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Head pose (translation mm, rotation deg) from one orbital navigator (its orbits in SEG
    order: one in-plane, or three orthogonal); None until the reference exists (navigator
    number ``reference_pair``)."""
    state.pairs_seen += 1
    data = [torch.from_numpy(np.asarray(acq.data)) for acq in orbits]
    last = orbits[-1]
    if not state.reference:
        if state.pairs_seen <= reference_pair:
            return None
        state.reference = dict(enumerate(data))
        state.reference_pose = applied_pose(last)[:2]
        state.reference_time_s = int(last.acquisition_time_stamp) * TIME_TICK_S
        return None
    refs = [state.reference[i] for i in range(len(data))]
    if len(data) == 1:
        tx, ty, rz = orbital_pose(data[0], refs[0], radii[0])
        residual = (np.array([tx, ty, 0.0]), np.array([0.0, 0.0, rz]))
    else:
        t, r = orbital_pose_3plane(data, refs, radii)
        residual = (np.asarray(t), np.asarray(r))
    # encoded in the frame the scanner applied (the same for all orbits of one excitation):
    # head = applied ∘ residual
    head_t, head_r = compose(applied_pose(last)[:2], residual)
    return _relative_to_reference(state, np.asarray(head_t), np.asarray(head_r))


def _interior(img: torch.Tensor) -> torch.Tensor | None:
    """3D: the partitions away from the slab's faces (None in 2D, where every pixel counts).

    The slab-selective excitation does not move with the head: its outer partitions
    show the fixed slab profile and, as anatomy leaves through them, would pull the
    registration towards no motion.
    """
    if img.ndim == 2:
        return None
    mask = torch.zeros(img.shape, dtype=torch.bool)
    edge = max(1, img.shape[0] // 8)
    mask[edge : img.shape[0] - edge] = True
    return mask


def _lowres_image(
    lines: dict[tuple[int, int], np.ndarray], header: Any, lowres_lines: int
) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Magnitude image of one repetition from its central k-space, and its voxel spacing (mm).

    ``lines`` maps (line, partition) to a readout (coils, samples). The central
    ``lowres_lines`` lines (and as many partitions, when the data are 3D) are kept, with the
    readout samples that span the same k extent; zero-filled where a line is missing.

    Returns (image (y, x) or (z, y, x), spacing (dy, dx) or (dz, dy, dx) mm).
    """
    enc = header.encoding[0]
    ny = int(enc.encodedSpace.matrixSize.y)
    nz = max(int(enc.encodedSpace.matrixSize.z), 1)
    ncoil, nx = next(iter(lines.values())).shape
    n = min(lowres_lines, ny)
    nzl = min(lowres_lines, nz)
    k = torch.zeros(ncoil, nzl, n, nx, dtype=torch.complex64)
    lo, lo_z = ny // 2 - n // 2, nz // 2 - nzl // 2
    for (line, part), d in lines.items():
        if lo <= line < lo + n and lo_z <= part < lo_z + nzl:
            k[:, part - lo_z, line - lo] = torch.from_numpy(d)
    fov_x = float(enc.encodedSpace.fieldOfView_mm.x)
    fov_y = float(enc.encodedSpace.fieldOfView_mm.y)
    fov_z = float(enc.encodedSpace.fieldOfView_mm.z)
    # m readout samples around k = 0 span the same k extent along x as the n lines along y
    m = min(nx, 2 * round(n * fov_x / fov_y / 2))
    k = k[..., nx // 2 - m // 2 : nx // 2 - m // 2 + m]
    if nz == 1:
        img = ifftnc(k[:, 0], (-2, -1)).abs().square().sum(0).sqrt()
        return img, (fov_y / n, fov_x / m)
    img = ifftnc(k, (-3, -2, -1)).abs().square().sum(0).sqrt()
    return img, (fov_z / nzl, fov_y / n, fov_x / m)
