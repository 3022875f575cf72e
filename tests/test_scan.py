"""`unisono scan`: the simulator's generator streams live into a server over a real socket."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gadgets
from unisono.cli import main
from unisono.scan import ScanRequest, parse_server, run_scan


def test_scan_streams_live_to_an_in_process_server(tmp_path):
    report = run_scan(
        ScanRequest(
            protocol="gre2d",
            site="siteA",
            out=tmp_path,
            phantom="shepp-logan",
            overrides={"matrix": 32},
            isochromats_per_voxel=1,
        ),
        print_fn=lambda _: None,
    )
    assert report["images"] >= 1
    images = gadgets.read_images(tmp_path / "images.h5")
    assert images and all(np.isfinite(np.asarray(im.data)).all() for im in images)
    # the server recorded the raw stream as it arrived: nothing is lost if a chain fails
    raw_files = list((tmp_path / "raw").glob("*.h5"))
    assert len(raw_files) == 1
    header, acquisitions = gadgets.read_raw(raw_files[0])
    assert len(acquisitions) == 1 + 32  # noise prescan + 32 lines
    assert json.loads((tmp_path / "scan.json").read_text())["site"] == "siteA"


def test_scan_command_line_reports_bad_server_address(tmp_path, capsys):
    assert main(["scan", "gre2d", "--site", "siteA", "--server", "nohost", "-o", str(tmp_path)]) == 2
    assert "--server must be HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["localhost", "h:0", "h:99999", ":9002"])
def test_parse_server_rejects(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_server(text)
