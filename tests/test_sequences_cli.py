"""`unisono sequence list|build|info|plot` and reading other tools' Pulseq files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sequences
from unisono.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pulseq-examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.seq"))


def test_list_names_protocols_and_systems(capsys):
    assert main(["sequence", "list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["protocols"]) == sequences.list_protocols()
    assert sorted(out["systems"]) == sequences.list_systems()
    assert all(out["protocols"].values()) and all(out["systems"].values())


def test_list_one_protocol_shows_units_and_ranges(capsys):
    assert main(["sequence", "list", "tse2d", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    te = next(r for r in out["params"] if r["name"] == "TE")
    assert te["unit"] == "ms" and "to" in te["allowed"] and te["description"]
    assert main(["sequence", "list", "gre2d"]) == 0
    assert "readout_bandwidth" in capsys.readouterr().out


def test_build_writes_seq_and_header(tmp_path, capsys):
    target = tmp_path / "g.seq"
    rc = main(
        [
            "sequence",
            "build",
            "gre2d",
            "--system",
            "vendor_b_3t",
            "--set",
            "matrix=16",
            "--set",
            "TE=6ms",
            "-o",
            str(target),
        ]
    )
    assert rc == 0
    assert target.exists() and (tmp_path / "g.mrd.xml").exists()
    h = sequences.header_for_seq_file(target)
    assert h.encoding[0].reconSpace.matrixSize.x == 16
    assert h.sequenceParameters.TE == [pytest.approx(6.0)]
    assert h.acquisitionSystemInformation.systemModel == "vendor_b_3t"
    assert "TE 6.000 ms" in capsys.readouterr().out


def test_build_bad_value_is_one_sentence(tmp_path, capsys):
    rc = main(["sequence", "build", "gre2d", "--set", "TE=0.7", "-o", str(tmp_path / "x.seq")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "TE = 0.700 ms is below the minimum" in err and "\n" not in err
    assert not (tmp_path / "x.seq").exists()
    assert main(["sequence", "build", "nope", "-o", str(tmp_path / "x.seq")]) == 2
    assert "available" in capsys.readouterr().err
    assert main(["sequence", "build", "gre2d", "--set", "TE", "-o", str(tmp_path / "x.seq")]) == 2


def test_info_on_own_file_reports_everything(tmp_path, capsys):
    target = tmp_path / "e.seq"
    sequences.build_protocol("epi2d", "generic", {"matrix": 16, "n_repetitions": 2}).write(target)
    assert main(["sequence", "info", str(target), "--json", "--system", "generic"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["definitions"]["Name"] == "epi2d"
    assert r["TE_ms"]["measured"] == pytest.approx(r["TE_ms"]["defined"][0], abs=0.01)
    assert r["TR_ms"]["measured"] == pytest.approx(200.0)
    assert r["timing"]["ok"]
    assert r["n_noise_adc"] == 1
    assert {"LIN", "NAV", "REV", "NOISE"} <= set(r["labels"])
    assert r["kspace"]["coverage"]["distinct_ky"] == 16
    assert r["kspace"]["coverage"]["fov_from_ky_step_m"] == pytest.approx(0.22, rel=1e-3)
    assert r["gradients"]["system"] == "generic" and 0 < r["gradients"]["grad_use_percent"] <= 100
    assert r["pns"]["peak_percent"] > 0 and isinstance(r["pns"]["ok"], bool)


@pytest.mark.skipif(not EXAMPLE_FILES, reason="no ../shared/data/pulseq-examples")
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_info_reads_every_example_file(path, capsys):
    # PNS is the slow part on the long files; it is covered on our own files above
    assert main(["sequence", "info", str(path), "--json", "--no-pns"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["definitions"].get("Name")
    assert r["n_adc"] > 0 and r["duration_s"] > 0
    assert r["timing"]["ok"], r["timing"]["first_errors"]
    assert r["TE_ms"]["measured"] is not None
    kx = r["kspace"]["kx_range"]
    assert kx[0] < 0 < kx[1]


@pytest.mark.skipif(not EXAMPLE_FILES, reason="no ../shared/data/pulseq-examples")
def test_header_from_foreign_file_definitions():
    path = EXAMPLES / "write_gre_label.seq"
    h = sequences.header_for_seq_file(path)
    enc = h.encoding[0]
    assert enc.reconSpace.matrixSize.y == 64  # from the LIN labels
    assert enc.encodingLimits.kspace_encoding_step_1.maximum == 63
    assert enc.reconSpace.fieldOfView_mm.x == pytest.approx(224.0, rel=0.02)


def test_plot_writes_png(tmp_path, capsys):
    target = tmp_path / "r.seq"
    sequences.build_protocol("radial2d", "generic", {"matrix": 16, "n_spokes": 8}).write(target)
    png = tmp_path / "r.png"
    assert main(["sequence", "plot", str(target), "-o", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["sequence", "info", str(tmp_path / "none.seq")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_docs_describe_every_protocol_parameter_and_system():
    from sequences.protocol import load_protocol

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sequences.md").read_text()
    for name in sequences.list_protocols():
        assert f"### {name} " in doc or f"### `{name}`" in doc, name
        for param in load_protocol(name).params:
            assert f"`{param}`" in doc, (name, param)
    for system in sequences.list_systems():
        assert f"`{system}`" in doc, system
