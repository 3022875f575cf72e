"""cartesian-grappa and cartesian-sense chains on retrospectively undersampled Debian Shepp–Logan data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from gadgets import load_chain, read_raw, run_chain

NO_HARMONIZE = {"harmonize": {"enabled": False}}


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, list, np.ndarray]:
    if shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None:
        pytest.skip("Debian ismrmrd-tools are not installed")
    tmp = tmp_path_factory.mktemp("pi")
    path = Path(tmp) / "sl.h5"
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", "-m", "128", "-c", "8", "-n", "0.002", "-o", str(path)],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    header, acqs = read_raw(path)
    reference = run_chain(load_chain("cartesian", overrides=NO_HARMONIZE), header, acqs)[0].data[0, 0]
    return header, acqs, reference.astype(np.float64)


def _undersample(acqs: list, R: int, acs: int = 24, n: int = 128) -> list:
    out = []
    for a in acqs:
        ky = a.idx.kspace_encode_step_1
        in_acs = n // 2 - acs // 2 <= ky < n // 2 + acs // 2
        if ky % R == 0 or in_acs:
            b = ismrmrd.Acquisition(a.getHead(), a.data, a.traj)
            if in_acs:
                b.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
            out.append(b)
    return out


def _nrmse(a: np.ndarray, ref: np.ndarray) -> float:
    a = np.abs(a).astype(np.float64)
    s = float((a * ref).sum() / (a * a).sum())
    return float(np.linalg.norm(s * a - ref) / np.linalg.norm(ref))


# measured NRMSE vs the fully sampled recon: zero-filled 0.29 / 0.32, GRAPPA 0.014 / 0.022,
# SENSE 0.019 / 0.068 (R = 2 / 3, 24 calibration lines)
@pytest.mark.parametrize(
    ("chain", "R", "limit"),
    [
        ("cartesian-grappa", 2, 0.03),
        ("cartesian-grappa", 3, 0.04),
        ("cartesian-sense", 2, 0.03),
        ("cartesian-sense", 3, 0.09),
    ],
)
def test_parallel_imaging_chains_approach_fully_sampled(full, chain: str, R: int, limit: float) -> None:
    header, acqs, reference = full
    sub = _undersample(acqs, R)
    zero_filled = run_chain(load_chain("cartesian", overrides=NO_HARMONIZE), header, sub)[0].data[0, 0]
    images = run_chain(load_chain(chain, overrides=NO_HARMONIZE), header, sub)
    assert len(images) == 1 and images[0].data.shape == (1, 1, 128, 128)
    err = _nrmse(images[0].data[0, 0], reference)
    assert err < limit
    assert err < 0.3 * _nrmse(zero_filled, reference)
    assert images[0].meta["unisono.chain"] == chain


def test_debian_accelerated_data_reconstruct(tmp_path: Path) -> None:
    """The generator's own R=2 acquisition (-a 2 -w 24) against the coil images it stores as truth."""
    import h5py

    if shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None:
        pytest.skip("Debian ismrmrd-tools are not installed")
    path = tmp_path / "acc.h5"
    args = ["-m", "128", "-c", "8", "-a", "2", "-w", "24", "-n", "0.002", "-o", str(path)]
    tool = "ismrmrd_generate_cartesian_shepp_logan"
    subprocess.run([tool, *args], check=True, capture_output=True, cwd=tmp_path)
    with h5py.File(path, "r") as f:
        ci = f["dataset/coil_images"][0]
    coil_images = ci["real"] + 1j * ci["imag"]  # (coil, y, 2x): readout-oversampled FOV
    truth = np.sqrt((np.abs(coil_images) ** 2).sum(0))[:, 64:192]
    header, acqs = read_raw(path)
    # measured: zero-filled 0.60 / 0.66, GRAPPA 0.019 / 0.021, SENSE 0.030 / 0.035 (repetitions 0 / 1)
    for chain, limit in (("cartesian-grappa", 0.03), ("cartesian-sense", 0.045)):
        images = run_chain(load_chain(chain, overrides=NO_HARMONIZE), header, acqs)
        assert [im.repetition for im in images] == [0, 1]
        for im in images:
            assert _nrmse(im.data[0, 0], truth) < limit
