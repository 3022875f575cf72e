"""Gadget chains against the ISMRMRD C++ reference recon, over run_chain and over a real socket."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
import torch

from gadgets import (
    MRDServer,
    RemoteChainError,
    load_chain,
    parse_chain,
    read_raw,
    run_chain,
    send_file,
    send_stream,
    write_raw,
)
from recon.coils import rss
from recon.fft import ifftnc
from recon.noise import noise_covariance, prewhitening_matrix

needs_ismrmrd_tools = pytest.mark.skipif(
    shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None
    or shutil.which("ismrmrd_recon_cartesian_2d") is None,
    reason="Debian ismrmrd-tools are not installed (apt-get install ismrmrd-tools)",
)

# The reference recon (FFT + crop + RSS) has no harmonization: compare with it switched off.
NO_HARMONIZE = {"harmonize": {"enabled": False}}


def _generate(tmp: Path, name: str, *args: str) -> Path:
    path = tmp / f"{name}.h5"
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", *args, "-o", str(path)],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    return path


def _reference(tmp: Path, raw: Path) -> np.ndarray:
    """The C++ reference recon's image (y, x) of a copy of ``raw``."""
    ref = tmp / f"{raw.stem}_cpp.h5"
    shutil.copy(raw, ref)
    subprocess.run(["ismrmrd_recon_cartesian_2d", str(ref)], check=True, capture_output=True, cwd=tmp)
    with h5py.File(ref, "r") as f:
        return f["dataset/cpp/data"][0, 0, 0].astype(np.float64)


def nrmse_scaled(a: np.ndarray, ref: np.ndarray) -> float:
    """NRMSE of ``a`` against ``ref`` after the least-squares scale of ``a`` (equal scaling)."""
    a = np.asarray(a, dtype=np.float64)
    s = float((a * ref).sum() / (a * a).sum())
    return float(np.linalg.norm(s * a - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def shepp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None:
        pytest.skip("Debian ismrmrd-tools are not installed")
    tmp = tmp_path_factory.mktemp("shepp")
    return {
        "plain": _generate(tmp, "plain", "-m", "64", "-c", "4"),
        "noise": _generate(tmp, "noise", "-m", "64", "-c", "8", "-C", "-n", "0.1"),
        "big": _generate(tmp, "big", "-m", "128", "-c", "8", "-r", "2"),
        "tmp": tmp,
    }


@needs_ismrmrd_tools
@pytest.mark.parametrize("which", ["plain", "big"])
def test_run_chain_matches_cpp_reference(shepp: dict[str, Path], which: str) -> None:
    header, acqs = read_raw(shepp[which])
    chain = load_chain("cartesian", overrides=NO_HARMONIZE)
    images = run_chain(chain, header, acqs)
    reps = header.encoding[0].encodingLimits.repetition.maximum + 1
    assert len(images) == reps
    ref = _reference(shepp["tmp"], shepp[which])
    # The C++ tool writes the last repetition (it overwrites its buffer line by line).
    img = images[-1]
    assert img.data.shape == (1, 1, *ref.shape)
    assert img.data.dtype == np.float32
    assert nrmse_scaled(img.data[0, 0], ref) < 1e-4
    # geometry and bookkeeping
    assert tuple(img.field_of_view) == pytest.approx(
        (header.encoding[0].reconSpace.fieldOfView_mm.x,) * 2
        + (header.encoding[0].reconSpace.fieldOfView_mm.z,)
    )
    assert img.image_type == ismrmrd.IMTYPE_MAGNITUDE
    assert [im.repetition for im in images] == list(range(reps))
    assert [im.image_index for im in images] == list(range(1, reps + 1))
    assert img.meta["unisono.chain"] == "cartesian"
    assert img.meta["unisono.chain_sha256"] == chain.sha256
    assert img.meta["unisono.version"]


@needs_ismrmrd_tools
def test_run_chain_leaves_input_untouched(shepp: dict[str, Path]) -> None:
    header, acqs = read_raw(shepp["noise"])
    before = [a.data.copy() for a in acqs]
    run_chain(load_chain("cartesian", overrides=NO_HARMONIZE), header, acqs)
    assert all(np.array_equal(a.data, b) for a, b in zip(acqs, before, strict=True))


@needs_ismrmrd_tools
def test_prewhitening_in_chain_matches_manual_recon(shepp: dict[str, Path]) -> None:
    header, acqs = read_raw(shepp["noise"])
    noise = [a for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    data = [a for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert noise and data
    # manual: W from the noise scan, whiten, fill k-space, FFT, crop the central half in x, RSS
    W = prewhitening_matrix(noise_covariance(torch.from_numpy(np.concatenate([a.data for a in noise], 1))))
    ny = header.encoding[0].encodedSpace.matrixSize.y
    nx = data[0].number_of_samples
    k = torch.zeros(W.shape[0], ny, nx, dtype=torch.complex64)
    for a in data:
        k[:, a.idx.kspace_encode_step_1, :] = W @ torch.from_numpy(a.data)
    img = ifftnc(k)[:, :, nx // 4 : 3 * nx // 4]
    manual = rss(img).numpy()
    images = run_chain(load_chain("cartesian", overrides=NO_HARMONIZE), header, acqs)
    out = images[0].data[0, 0]
    # same intensities (no free scale): both are orthonormal recons of whitened data
    assert np.linalg.norm(out - manual) / np.linalg.norm(manual) < 1e-5
    # and whitening changed the image relative to the unwhitened reference
    plain = run_chain(load_chain("cartesian", overrides=NO_HARMONIZE), header, data)[0].data[0, 0]
    assert nrmse_scaled(plain, manual) > 1e-3


@needs_ismrmrd_tools
def test_server_and_client_over_loopback_match_reference(shepp: dict[str, Path], tmp_path: Path) -> None:
    chain_text = Path(load_chain("cartesian").source).read_text().replace("enabled = true", "enabled = false")
    ref = _reference(shepp["tmp"], shepp["plain"])
    with MRDServer(port=0, raw_dir=tmp_path / "raw") as server:
        images = send_file(shepp["plain"], port=server.port, chain_text=chain_text)
        # the shipped chain by name works too: harmonized series plus the original series
        named = send_file(shepp["plain"], port=server.port, chain="cartesian")
    assert len(images) == 1 and len(named) == 2
    assert sorted(im.meta["unisono.series"] for im in named) == ["harmonized", "original"]
    original = next(im for im in named if im.meta["unisono.series"] == "original")
    assert nrmse_scaled(original.data[0, 0], ref) < 1e-4
    assert nrmse_scaled(images[0].data[0, 0], ref) < 1e-4
    assert images[0].meta["unisono.chain"] == "cartesian"
    assert named[0].meta["unisono.chain_sha256"] == load_chain("cartesian").sha256
    # every connection's raw data were recorded, byte for byte
    header, acqs = read_raw(shepp["plain"])
    assert len(server.raw_files) == 2
    for path in server.raw_files:
        h2, got = read_raw(path)
        assert h2.encoding[0].encodedSpace.matrixSize == header.encoding[0].encodedSpace.matrixSize
        assert len(got) == len(acqs)
        assert all(a == b for a, b in zip(got, acqs, strict=True))


def test_server_handles_concurrent_connections(tmp_path: Path) -> None:
    header, acqs = _synthetic_stream(n_lines=32, n_coils=2)
    results: dict[int, list] = {}
    import threading

    with MRDServer(port=0, raw_dir=None) as server:

        def go(i: int) -> None:
            results[i] = send_stream(header, acqs, port=server.port, chain="passthrough")

        threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(results) == [0, 1, 2]
    for got in results.values():
        assert len(got) == len(acqs)
        assert all(a == b for a, b in zip(got, acqs, strict=True))


def test_server_reports_bad_chain_and_keeps_raw(tmp_path: Path) -> None:
    header, acqs = _synthetic_stream(n_lines=8, n_coils=2)
    with MRDServer(port=0, raw_dir=tmp_path) as server:
        with pytest.raises(RemoteChainError, match="unknown chain 'nope'"):
            send_stream(header, acqs, port=server.port, chain="nope")
        with pytest.raises(RemoteChainError, match="plain name"):
            send_stream(header, acqs, port=server.port, chain="../../etc/passwd")
        evil = 'name = "x"\n[[gadget]]\nmodule = "os"\ntarget = "system"\n'
        with pytest.raises(RemoteChainError, match="registered gadget"):
            send_stream(header, acqs, port=server.port, chain_text=evil)
        # the server is still alive afterwards
        ok = send_stream(header, acqs, port=server.port, chain="passthrough")
    assert len(ok) == len(acqs)
    # nothing was lost: the failing connections' data are on disk too
    assert len(server.raw_files) == 4
    for path in server.raw_files:
        assert len(read_raw(path)[1]) == len(acqs)


def test_chain_failure_reaches_client_with_gadget_name(tmp_path: Path) -> None:
    # Cartesian chain on data whose phase-encoding counter exceeds the matrix: the accumulator fails.
    header, acqs = _synthetic_stream(n_lines=8, n_coils=2)
    acqs[3].idx.kspace_encode_step_1 = 500
    with MRDServer(port=0, raw_dir=tmp_path) as server:
        t0 = time.perf_counter()
        with pytest.raises(RemoteChainError, match="gadget 'accumulate' failed.*outside the encoded matrix"):
            send_stream(header, acqs, port=server.port, chain="cartesian")
        assert time.perf_counter() - t0 < 10
    assert len(read_raw(server.raw_files[0])[1]) == len(acqs)


@needs_ismrmrd_tools
def test_write_raw_is_readable_by_cpp_tools(shepp: dict[str, Path], tmp_path: Path) -> None:
    header, acqs = read_raw(shepp["plain"])
    out = tmp_path / "copy.h5"
    assert write_raw(out, header, acqs) == len(acqs)
    ref = _reference(shepp["tmp"], shepp["plain"])
    ours = _reference(tmp_path, out)  # the C++ recon reads the file we wrote
    assert np.array_equal(ours, ref)


# --- synthetic data -------------------------------------------------------------------------------


def _synthetic_stream(n_lines: int = 16, n_coils: int = 2, nx: int = 32) -> tuple[object, list]:
    from ismrmrd import xsd

    enc = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=n_lines, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=2 * 200.0, y=200.0, z=5.0),
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx // 2, y=n_lines, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=200.0, y=200.0, z=5.0),
        ),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=n_lines - 1, center=n_lines // 2)
        ),
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_500_000),
        encoding=[enc],
    )
    rng = np.random.default_rng(0)
    acqs = []
    for i in range(n_lines):
        d = (rng.standard_normal((n_coils, nx)) + 1j * rng.standard_normal((n_coils, nx))).astype(
            np.complex64
        )
        a = ismrmrd.Acquisition.from_array(d)
        a.idx.kspace_encode_step_1 = i
        a.center_sample = nx // 2
        a.sample_time_us = 5.0
        a.scan_counter = i
        if i == n_lines - 1:
            a.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        acqs.append(a)
    return header, acqs


def test_parse_chain_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="needs at least one"):
        parse_chain('name = "x"\n')
    with pytest.raises(ValueError, match="unknown gadget 'Nope'"):
        parse_chain('name = "x"\n[[gadget]]\ngadget = "Nope"\n')
    with pytest.raises(ValueError, match="used twice"):
        parse_chain('name = "x"\n[[gadget]]\ngadget = "PassThrough"\n[[gadget]]\ngadget = "PassThrough"\n')
    with pytest.raises(ValueError, match="unknown key"):
        parse_chain('name = "x"\nqueue = 3\n[[gadget]]\ngadget = "PassThrough"\n')
    with pytest.raises(ValueError, match="has no parameter 'methd'; allowed: calib_size, method"):
        load_chain("cartesian", overrides={"combine": {"methd": "rss"}})
    with pytest.raises(ValueError, match="has no gadget 'combined'"):
        load_chain("cartesian", overrides={"combined": {"method": "rss"}})


def test_stream_recording_reads_and_converts_even_when_cut_short(tmp_path: Path) -> None:
    from ismrmrd.serialization import ProtocolSerializer

    from gadgets.recorder import stream_to_h5

    header, acqs = _synthetic_stream(n_lines=12, n_coils=3)
    full = tmp_path / "full.mrd"
    with open(full, "wb") as f:
        ser = ProtocolSerializer(f)
        ser.serialize(header)
        for a in acqs:
            ser.serialize(a)
        ser.close()
    h, got = read_raw(full)  # read_raw detects a stream file by content
    assert h.encoding[0].encodedSpace.matrixSize.x == 32
    assert all(a == b for a, b in zip(got, acqs, strict=True))
    # a client that disconnects mid-message: everything complete is kept, in HDF5 too
    data = full.read_bytes()
    cut = tmp_path / "cut.mrd"
    cut.write_bytes(data[: len(data) - 3 * acqs[-1].data.nbytes // 2])
    assert len(read_raw(cut)[1]) == len(acqs) - 2
    assert stream_to_h5(cut, tmp_path / "cut.h5") == len(acqs) - 2
    assert not cut.exists()  # the stream file is removed once converted
    h5_header, h5_acqs = read_raw(tmp_path / "cut.h5")
    assert all(a == b for a, b in zip(h5_acqs, acqs[:-2], strict=True))


def test_prewhitening_scales_each_readout_by_its_own_dwell() -> None:
    """Noise power follows the sampled bandwidth: a navigator at another dwell than the imaging
    readouts (and the noise scan) must come out with unit-variance noise as well."""
    from gadgets.synthetic import make_header, noise_acquisition

    rng = np.random.default_rng(3)
    coils, n = 4, 4096
    mix = np.array([[1.0, 0.3, 0, 0], [0, 1.2, 0.2, 0], [0, 0, 0.8, 0.1], [0.2, 0, 0, 1.0]])

    def noise(dwell_us: float) -> np.ndarray:
        """Correlated coil noise whose variance per sample is proportional to 1 / dwell."""
        white = (rng.standard_normal((coils, n)) + 1j * rng.standard_normal((coils, n))) / np.sqrt(2)
        return (mix @ white) * np.sqrt(10.0 / dwell_us)

    header = make_header((16, 16), n_coils=coils)
    stream = [noise_acquisition(noise(10.0), dwell_us=10.0)]
    for dwell in (32.0, 10.0, 32.0, 5.0):  # imaging, navigator, imaging, another navigator
        acq = noise_acquisition(noise(dwell), dwell_us=dwell)
        acq.clear_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        stream.append(acq)
    chain = parse_chain('name = "w"\n[[gadget]]\nname = "noise"\ngadget = "NoiseAdjust"\n')
    out = run_chain(chain, header, stream, images_only=False)
    assert [a.sample_time_us for a in out] == [32.0, 10.0, 32.0, 5.0]
    for acq in out:
        cov = np.cov(np.asarray(acq.data))
        np.testing.assert_allclose(cov, np.eye(coils), atol=0.08)


class _Stream:
    """The part of a gadget connection the harmonize gadget uses: items in, items sent."""

    header = None

    def __init__(self, items: list) -> None:
        self.items, self.sent = items, []

    def __iter__(self):
        return iter(self.items)

    def send(self, item) -> None:
        self.sent.append(item)


def test_harmonize_gadget_passes_an_image_it_cannot_harmonize_on_unchanged() -> None:
    """An empty slice (all zero: no foreground to mask) must not end the scan's reconstruction:
    it goes on unharmonized, flagged, and the next image is harmonized as usual."""
    from gadgets.buffers import ImageBuffer
    from gadgets.harmonization import harmonize

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    head = ((xx**2 + yy**2 < 0.6) * (100.0 + 50.0 * xx)).to(torch.float32)
    ref = ismrmrd.AcquisitionHeader()
    empty = ImageBuffer(torch.zeros(1, 1, 32, 32), ref, 0, {"slice": 0})
    full = ImageBuffer(head[None, None], ref, 0, {"slice": 1})
    stream = _Stream([empty, full])
    harmonize(stream, profile="zscore")
    skipped, harmonized = stream.sent
    assert torch.equal(skipped.data, empty.data)
    assert "no foreground" in skipped.meta["unisono.harmonization_skipped"]
    assert "unisono.harmonization" not in skipped.meta and skipped.meta["slice"] == 0
    assert harmonized.meta["unisono.harmonization"] == "zscore"
    assert "unisono.harmonization_skipped" not in harmonized.meta
    assert not torch.equal(harmonized.data, full.data)
