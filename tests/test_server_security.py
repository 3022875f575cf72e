"""Security of the server: loopback by default, no client code or imports, no client paths."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from ismrmrd.serialization import ConfigFile, ConfigText

from gadgets import MRDServer, load_chain, read_raw
from gadgets.chain import list_chains
from gadgets.faults import ClientPlan, encode, run_plan, scan_data
from gadgets.policy import is_plain_name, parse_client_chain
from gadgets.server import _is_loopback

# a stdlib module with a visible side effect on import (it opens a web browser): never to be imported
CANARY = "antigravity"


def test_listens_on_loopback_unless_told_otherwise() -> None:
    assert MRDServer().host == "127.0.0.1"
    from unisono.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3") and not _is_loopback("scanner.local")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("default", True),
        ("whitestripe", True),
        ("rss", True),
        ("siteA-3T_v2.1", True),
        ("/etc/passwd", False),
        ("../profiles/x", False),
        ("..", False),
        (".hidden", False),
        ("~root", False),
        ("C:\\x", False),
        ("a/b", False),
        ("x\x00y", False),
        ("", False),
    ],
)
def test_plain_names(name: str, ok: bool) -> None:
    assert is_plain_name(name) is ok


def test_client_chain_text_is_data_with_registered_gadgets_and_plain_parameters() -> None:
    # every shipped chain, sent as text by a client, is accepted (clients may send the standard chains)
    for name in list_chains():
        text = Path(load_chain(name).source).read_text()
        assert parse_client_chain(text).name == load_chain(name).name
    with pytest.raises(ValueError, match="must name a registered gadget"):
        parse_client_chain(f'name = "x"\n[[gadget]]\nmodule = "{CANARY}"\ntarget = "f"\n')
    with pytest.raises(ValueError, match=f"unknown gadget '{CANARY}'"):
        parse_client_chain(f'name = "x"\n[[gadget]]\ngadget = "{CANARY}"\n')
    nested = (
        'name = "x"\n[[gadget]]\ngadget = "Harmonize"\n[gadget.params]\nprofile = ["ok", "/etc/shadow"]\n'
    )
    with pytest.raises(ValueError, match=r"parameter 'profile\[1\]' = '/etc/shadow' is not a plain name"):
        parse_client_chain(nested)
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_client_chain("__import__('os').system('touch pwned')")
    deep = "name = 'x'\nv = " + "[" * 100_000 + "]" * 100_000 + "\n"
    with pytest.raises(ValueError):
        parse_client_chain(deep)
    assert CANARY not in sys.modules


def test_no_client_name_or_path_reaches_imports_or_files(tmp_path: Path) -> None:
    raw_dir = tmp_path / "out" / "raw"
    chains = tmp_path / "out" / "chains"
    chains.mkdir(parents=True)
    (tmp_path / "out" / "secret.toml").write_text('name = "secret"\n[[gadget]]\ngadget = "PassThrough"\n')
    # a chain the operator installed may use module/target (trusted, local file)
    (chains / "local.toml").write_text(
        'name = "local"\n[[gadget]]\nmodule = "gadgets.passthrough"\ntarget = "pass_through"\n'
    )
    header, acqs = scan_data(measurement_id="../../../escaped")
    cases = {
        CANARY: "unknown chain",
        "../secret": "plain name",
        "/etc/passwd": "plain name",
        str(tmp_path / "out" / "secret.toml"): "plain name",
        "gadgets.server": "unknown chain",
    }
    with MRDServer(port=0, raw_dir=raw_dir, chains_dir=chains) as server:
        for name, text in cases.items():
            plan = ClientPlan(
                name, (("send", encode(ConfigFile(name), header, *acqs, close=True)),), text, None
            )
            r = run_plan(server.port, plan)
            assert r.errors and text in r.errors[0], (name, r.errors)
        text_chain = f'name = "x"\n[[gadget]]\ngadget = "PassThrough"\n[gadget.params]\nx = "{CANARY}"\n'
        r = run_plan(
            server.port,
            ClientPlan("t", (("send", encode(ConfigText(text_chain), header, *acqs, close=True)),), "", None),
        )
        assert r.errors and "has no parameter 'x'" in r.errors[0]
        ok = run_plan(
            server.port,
            ClientPlan("ok", (("send", encode(ConfigFile("local"), header, *acqs, close=True)),), None, None),
        )
        assert not ok.errors and len(ok.items) == len(acqs)
    assert CANARY not in sys.modules
    # every file the server wrote is inside raw_dir, named by the server, whatever the header said
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    outside = [
        p for p in written if raw_dir not in p.parents and p.parent != chains and p.name != "secret.toml"
    ]
    assert outside == []
    assert len(server.raw_files) == len(cases) + 2
    for path in server.raw_files:
        assert path.parent == raw_dir and ".." not in path.name
        assert read_raw(path)[0].measurementInformation.measurementID == "../../../escaped"


def test_client_text_cannot_forge_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gadgets.server")
    header, acqs = scan_data(measurement_id="log")
    forged = "hello\nERROR gadgets.server: connection 99: forged"
    chain = (
        'name = "x"\n[[gadget]]\nname = "a\\nERROR forged"\ngadget = "PassThrough"\n[gadget.params]\nq = 1\n'
    )
    with MRDServer(port=0, raw_dir=None) as server:
        data = encode(ConfigText(chain), header, forged, *acqs[:2], close=True)
        r = run_plan(server.port, ClientPlan("log", (("send", data),), "", None))
    assert r.errors and "has no parameter 'q'" in r.errors[0]
    server_lines = [rec.getMessage() for rec in caplog.records if rec.name == "gadgets.server"]
    assert server_lines and all("\n" not in line for line in server_lines)
    assert any("hello\\nERROR gadgets.server" in line for line in server_lines)
    assert any("a\\nERROR forged" in line for line in server_lines)
