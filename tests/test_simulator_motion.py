"""Rigid motion during a scan, and prospective correction from feedback."""

from __future__ import annotations

import numpy as np
import pytest
from test_simulator_imaging import cartesian_gre, ideal, ifft2c, kspace

from simulator import MotionTrajectory, RigidTransform, shepp_logan_phantom, simulate
from simulator.motion import parse_motion

N, FOV = 32, 0.22


@pytest.fixture(scope="module")
def setup():
    ph = shepp_logan_phantom(matrix=N, fov_m=FOV, slice_thickness_m=0.005)
    # proton-density GRE (long TR) with a hard pulse: no slice profile, so a through-plane
    # component of a rotation does not change the signal
    seq = cartesian_gre(N, FOV, 0.005, tr=5.0, te=0.005, flip_deg=90, noise=False, selective=False)
    still = image(seq, ph)
    return ph, seq, still


def image(seq, ph, **kw) -> np.ndarray:
    return np.abs(ifft2c(kspace(list(simulate(seq, ph, ideal(), isochromats_per_voxel=1, **kw)), N)))[0]


def constant(pose: RigidTransform) -> MotionTrajectory:
    return MotionTrajectory([0.0], [pose.translation_mm], [pose.rotation_deg])


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_translation_shifts_the_image(setup):
    ph, seq, still = setup
    pixel_mm = FOV / N * 1e3
    moved = image(seq, ph, motion=constant(RigidTransform((2 * pixel_mm, -3 * pixel_mm, 0.0))))
    # +x by 2 pixels, -y by 3 pixels: the image is the still image rolled by those pixels
    np.testing.assert_allclose(moved, np.roll(still, (-3, 2), axis=(0, 1)), atol=1e-3 * still.max())


def test_feedback_corrects_translation_and_rotation_prospectively(setup):
    ph, seq, still = setup
    pose = RigidTransform((3.0, -2.0, 0.0), (0.0, 0.0, 8.0))
    moved = image(seq, ph, motion=constant(pose))
    assert corr(moved, still) < 0.9
    calls = []

    def feedback():
        calls.append(1)
        return pose

    corrected = image(seq, ph, motion=constant(pose), feedback=feedback)
    assert len(calls) > N  # asked before every block
    assert corr(corrected, still) > 0.999
    np.testing.assert_allclose(corrected, still, atol=0.02 * still.max())


def test_step_motion_mid_scan_corrupts_only_later_lines(setup):
    ph, seq, still = setup
    # a step half way through: the first half of k-space is consistent with the still image
    t_half = 5.0 * N / 2
    traj = MotionTrajectory.step(t_half, translation_mm=(0.0, 4.0, 0.0), rotation_deg=(0.0, 0.0, 0.0))
    acqs = list(simulate(seq, ph, ideal(), isochromats_per_voxel=1, motion=traj))
    ref = list(simulate(seq, ph, ideal(), isochromats_per_voxel=1))
    early = [np.abs(a.data - b.data).max() for a, b in zip(acqs[: N // 2 - 1], ref, strict=False)]
    late = [np.abs(a.data - b.data).max() for a, b in zip(acqs[N // 2 + 1 :], ref[N // 2 + 1 :], strict=True)]
    assert max(early) < 1e-3 * np.abs(ref[N // 2].data).max()
    assert min(late) > 1e-3 * np.abs(ref[N // 2].data).max()


def test_motion_file_round_trip_and_errors(tmp_path):
    traj = MotionTrajectory.jerk(1.0)
    path = tmp_path / "motion.txt"
    traj.write(path)
    back = MotionTrajectory.from_file(path)
    for t in (0.0, 1.05, 1.1, 1.15, 3.0):
        a, b = traj.transform_at(t), back.transform_at(t)
        assert a.close_to(b, 1e-4, 1e-4)
    assert traj.transform_at(1.1).translation_mm[1] == pytest.approx(4.0)
    assert traj.transform_at(5.0).is_identity()
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1 2 3\n")
    with pytest.raises(ValueError, match="line 1: expected 7 values"):
        MotionTrajectory.from_file(bad)
    with pytest.raises(ValueError, match="rotations within"):
        MotionTrajectory([0.0], [[0, 0, 0]], [[0, 0, 90]])
    assert parse_motion("drift", 10.0).transform_at(10.0).translation_mm == (0.0, 2.0, 0.0)


def test_realtime_streams_at_acquisition_pace():
    import time

    import pypulseq as pp

    seq = pp.Sequence()
    for _ in range(4):
        seq.add_block(pp.make_adc(num_samples=16, dwell=1e-5), pp.make_delay(0.05))
    ph = shepp_logan_phantom(matrix=8)
    t0 = time.perf_counter()
    arrivals = [time.perf_counter() - t0 for _ in simulate(seq, ph, ideal(), realtime=True)]
    # the k-th acquisition cannot leave before its ADC has ended in sequence time
    for k, t in enumerate(arrivals):
        assert t >= k * 0.05 + 16e-5 - 1e-3
    assert arrivals[-1] >= 0.15
