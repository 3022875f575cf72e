"""`unisono sequence list|build|info|plot`: the protocol library on the command line."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    """Add the ``sequence`` subcommand and its actions to ``subparsers``."""
    p = subparsers.add_parser(
        "sequence",
        help="list, build, inspect and plot Pulseq protocols",
        description="Vendor-agnostic protocol library: TOML protocols + hardware profiles "
        "-> Pulseq + MRD header.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")

    ls = sub.add_parser("list", help="protocols and hardware profiles, or one protocol's parameters")
    ls.add_argument("protocol", nargs="?", help="show this protocol's parameters (unit, default, range)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    b = sub.add_parser("build", help="build a protocol into FILE.seq (+ FILE.mrd.xml)")
    b.add_argument("protocol", help="protocol name (see `list`) or a path to a protocol TOML")
    b.add_argument(
        "--system", default="generic", help="hardware profile name or TOML path (default: generic)"
    )
    b.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a protocol parameter, in its unit (e.g. TE=6 or TE=6ms); repeatable",
    )
    b.add_argument("-o", "--output", required=True, help="output .seq path (the MRD header goes beside it)")
    b.add_argument("--pns", action="store_true", help="also compute and print the PNS report (slower)")

    i = sub.add_parser("info", help="summarise any Pulseq file")
    i.add_argument("file", help="a .seq file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--system", default=None, help="profile for gradient/slew use and dead times (optional)")
    i.add_argument("--no-pns", action="store_true", help="skip the PNS computation")

    pl = sub.add_parser("plot", help="sequence diagram and k-space trajectory")
    pl.add_argument("file", help="a .seq file")
    pl.add_argument("-o", "--output", required=True, help="output image (.png)")
    pl.add_argument("--time-range", nargs=2, type=float, metavar=("T0", "T1"), help="diagram window in s")

    p.set_defaults(handler=_handle, _parser=p)


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r} must be KEY=VALUE, e.g. --set TE=6.")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _handle(args: argparse.Namespace) -> int:
    if not args.action:
        args._parser.print_help()
        return 0
    if args.action == "list":
        return _list(args)
    if args.action == "build":
        return _build(args)
    if args.action == "info":
        return _info(args)
    return _plot(args)


def _list(args) -> int:
    import sequences
    from sequences.protocol import load_protocol

    if args.protocol:
        proto = load_protocol(args.protocol)
        rows = [
            {
                "name": s.name,
                "default": s.default,
                "unit": s.unit,
                "allowed": s.allowed(),
                "description": s.description,
            }
            for s in proto.params.values()
        ]
        if args.json:
            print(
                json.dumps(
                    {"protocol": proto.name, "description": proto.description, "params": rows}, indent=2
                )
            )
            return 0
        print(f"{proto.name}: {proto.description}")
        for r in rows:
            unit = "" if r["unit"] in (None, "1") else f" {r['unit']}"
            print(f"  {r['name']:24s} {str(r['default']) + unit:18s} {r['allowed']:34s} {r['description']}")
        return 0
    protocols = {name: load_protocol(name).description for name in sequences.list_protocols()}
    systems = {name: sequences.load_system(name).description for name in sequences.list_systems()}
    if args.json:
        print(json.dumps({"protocols": protocols, "systems": systems}, indent=2))
        return 0
    print("protocols:")
    for name, desc in protocols.items():
        print(f"  {name:14s} {desc}")
    print("systems:")
    for name, desc in systems.items():
        print(f"  {name:14s} {desc}")
    return 0


def _build(args) -> int:
    import sequences
    from sequences.analysis import summarize

    built = sequences.build_protocol(args.protocol, args.system, _parse_overrides(args.overrides))
    seq_path, xml_path = built.write(args.output)
    p = built.params
    print(f"wrote {seq_path} and {xml_path}")
    print(
        f"{built.protocol} on {built.system.name}: TE {p.get('actual_TE', float('nan')) * 1e3:.3f} ms, "
        f"TR {p.get('actual_TR', float('nan')) * 1e3:.3f} ms, duration {built.seq.duration()[0]:.3f} s"
    )
    if args.pns:
        report = summarize(built.seq, built.system, pns=True)
        print(json.dumps({"pns": report["pns"], "gradients": report["gradients"]}, indent=2))
    return 0


def _info(args) -> int:
    from pathlib import Path

    import sequences
    from sequences.analysis import read_sequence, summarize

    path = Path(args.file)
    if not path.exists():
        raise FileNotFoundError(f"file {path} does not exist.")
    system = sequences.load_system(args.system) if args.system else None
    seq = read_sequence(str(path), system.to_opts() if system else None)
    report = summarize(seq, system, pns=not args.no_pns)
    report["file"] = str(path)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report, sys.stdout)
    return 0


def _print_report(r: dict, out) -> None:
    print(f"file:        {r['file']}", file=out)
    print(f"name:        {r['definitions'].get('Name', '-')}", file=out)
    print(f"duration:    {r['duration_s']:.3f} s in {r['n_blocks']} blocks", file=out)
    print(f"RF pulses:   {r['n_rf']} ({r['n_excitations']} excitations)", file=out)
    print(f"ADCs:        {r['n_adc']} ({r['n_samples']} samples), noise ADCs {r['n_noise_adc']}", file=out)
    te = r["TE_ms"]
    print(f"TE:          defined {te['defined']} ms, measured {te['measured']} ms", file=out)
    tr = r["TR_ms"]
    print(f"TR:          defined {tr['defined']} ms, measured {tr['measured']} ms", file=out)
    k = r["kspace"]
    print(f"k-space:     extent kx {k['kx_range']} ky {k['ky_range']} kz {k['kz_range']} 1/m", file=out)
    print(f"coverage:    {k['coverage']}", file=out)
    print(f"labels:      {', '.join(r['labels']) or '-'}", file=out)
    t = r["timing"]
    print(f"timing:      {'ok' if t['ok'] else 'FAILED'} ({t['n_errors']} errors)", file=out)
    for e in t["first_errors"]:
        print(f"  {e}", file=out)
    g = r["gradients"]
    use = ""
    if g.get("system"):
        use = f" ({g['grad_use_percent']:.0f}% / {g['slew_use_percent']:.0f}% of {g['system']})"
    grad = f"max {g['max_grad_mT_per_m']:.1f} mT/m, max slew {g['max_slew_T_per_m_per_s']:.1f} T/m/s"
    print(f"gradients:   {grad}{use}", file=out)
    pns = r.get("pns")
    if pns:
        verdict = "ok" if pns["ok"] else "ABOVE LIMIT"
        print(f"PNS:         peak {pns['peak_percent']:.1f}% ({verdict}; {pns['model']})", file=out)
    defs = r["definitions"]
    if defs:
        print("definitions:", file=out)
        for key, value in defs.items():
            print(f"  {key} = {value}", file=out)


def _plot(args) -> int:
    from pathlib import Path

    from sequences.analysis import read_sequence
    from sequences.plotting import plot_sequence

    path = Path(args.file)
    if not path.exists():
        raise FileNotFoundError(f"file {path} does not exist.")
    seq = read_sequence(str(path))
    out = plot_sequence(seq, args.output, time_range=args.time_range)
    print(f"wrote {out}")
    return 0
