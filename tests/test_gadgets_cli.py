"""`unisono recon`, `unisono serve` + `unisono send` on Debian Shepp–Logan data vs the C++ reference."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from gadgets import load_chain, read_images
from gadgets.processes import start_serve
from unisono.cli import main

pytestmark = pytest.mark.skipif(
    shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None,
    reason="Debian ismrmrd-tools are not installed",
)


def _nrmse_scaled(a: np.ndarray, ref: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    s = float((a * ref).sum() / (a * a).sum())
    return float(np.linalg.norm(s * a - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    tmp = tmp_path_factory.mktemp("cli")
    raw = tmp / "sl.h5"
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", "-m", "96", "-c", "8", "-o", str(raw)],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    ref = tmp / "ref.h5"
    shutil.copy(raw, ref)
    subprocess.run(["ismrmrd_recon_cartesian_2d", str(ref)], check=True, capture_output=True, cwd=tmp)
    with h5py.File(ref, "r") as f:
        return raw, f["dataset/cpp/data"][0, 0, 0].astype(np.float64)


def test_unisono_recon_matches_reference(data: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    raw, ref = data
    out = tmp_path / "img.h5"
    rc = main(
        ["recon", str(raw), "-o", str(out), "--set", "harmonize.enabled=false", "--device", "cpu",
         "--nifti", str(tmp_path / "nii"), "--dicom", str(tmp_path / "dcm")]
    )  # fmt: skip
    assert rc == 0
    (img,) = read_images(out)
    assert _nrmse_scaled(img.data[0, 0], ref) < 1e-4
    (nii,) = sorted((tmp_path / "nii").glob("*.nii.gz"))
    assert nib.load(nii).shape == (96, 96, 1)
    assert len(list((tmp_path / "dcm").glob("*.dcm"))) == 1


def test_unisono_recon_reports_bad_parameter(data: tuple[Path, np.ndarray], tmp_path: Path, capsys) -> None:
    raw, _ = data
    assert main(["recon", str(raw), "-o", str(tmp_path / "x.h5"), "--set", "combine.method=median"]) == 1
    err = capsys.readouterr().err
    assert "gadget 'combine' failed" in err and "median" in err


def test_unisono_serve_and_send_match_reference(data: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    raw, ref = data
    chain_file = tmp_path / "cartesian-plain.toml"
    chain_file.write_text(
        Path(load_chain("cartesian").source).read_text().replace("enabled = true", "enabled = false")
    )
    server, port = start_serve("--device", "cpu", raw_dir=tmp_path / "raw")
    try:
        out = tmp_path / "img.h5"
        assert (
            main(["send", str(raw), "--port", str(port), "--chain-file", str(chain_file), "-o", str(out)])
            == 0
        )
        (img,) = read_images(out)
        assert _nrmse_scaled(img.data[0, 0], ref) < 1e-4
        assert img.meta["unisono.chain"] == "cartesian"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    assert server.returncode == 0
    assert len(list((tmp_path / "raw").glob("*.h5"))) == 1
