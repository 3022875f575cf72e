"""The virtual scanner at work: build a protocol, Bloch-simulate it live, stream it to a server.

Used by ``unisono scan``. The acquisitions leave the simulator as a generator
and go straight onto the MRD connection, so the server reconstructs while the
"scanner" is still scanning, as at a real console.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ScanRequest:
    """What `unisono scan` was asked to do (SI units inside, as everywhere)."""

    protocol: str
    site: str
    out: Path
    system: str = "generic"
    overrides: dict[str, object] = field(default_factory=dict)
    subject: int = 0
    phantom: str = "brain"
    motion: str | None = None
    server: str | None = None  # "HOST:PORT"; None = an in-process server
    chain: str = "cartesian"
    realtime: bool = False
    device: str = "cpu"
    isochromats_per_voxel: int = 4
    seed: int = 0


def parse_server(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with one clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--server must be HOST:PORT with a port in 1..65535, got {address!r}")
    return host, int(port)


def make_phantom(kind: str, built, site, subject: int):
    """The phantom named on the command line, on the protocol's grid and at the site's field."""
    import simulator

    matrix = int(built.params.get("matrix", 128))
    geometry = dict(
        fov_m=float(built.params["fov"]),
        matrix=matrix,
        slice_thickness_m=float(built.params.get("slice_thickness", 0.005)),
        n_slices=int(built.params.get("n_slices", 1)),
    )
    if kind == "brain":
        return simulator.brain_phantom(field_T=site.field_T, subject=subject, **geometry)
    if kind == "shepp-logan":
        return simulator.shepp_logan_phantom(field_T=site.field_T, **geometry)
    path = Path(kind)
    if path.suffix in (".h5", ".hdf5"):
        return simulator.load_phantom(path)
    raise ValueError(f"--phantom must be brain, shepp-logan or an .h5 phantom file, got {kind!r}")


def run_scan(request: ScanRequest, print_fn: Callable[[str], None] = print) -> dict:
    """Build, simulate while streaming, collect the images; returns (and writes) ``scan.json``."""
    import gadgets
    import sequences
    import simulator
    from gadgets.export import export_nifti
    from simulator.motion import parse_motion

    remote = parse_server(request.server) if request.server else None  # fail before any work
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    built = sequences.build_protocol(request.protocol, system=request.system, overrides=request.overrides)
    built.write(out / f"{request.protocol}.seq")
    site = simulator.load_site(request.site)
    header = simulator.with_site(built.header, site)
    phantom = make_phantom(request.phantom, built, site, request.subject)
    duration_s = float(built.seq.duration()[0])
    motion = parse_motion(request.motion, duration_s) if request.motion else None
    print_fn(
        f"scanning {request.protocol} ({duration_s:.1f} s of sequence) on {site.name} "
        f"({site.field_T:g} T, {site.n_coils} coils){' in real time' if request.realtime else ''}"
    )

    stats: dict = {}
    acquisitions = simulator.simulate(
        built.seq,
        phantom,
        site,
        header=header,
        device=request.device,
        isochromats_per_voxel=request.isochromats_per_voxel,
        seed=request.seed,
        motion=motion,
        realtime=request.realtime,
        stats=stats,
    )
    server = None
    if remote is not None:
        host, port = remote
    else:
        server = gadgets.MRDServer(host="127.0.0.1", port=0, raw_dir=out / "raw")
        server.start()
        host, port = "127.0.0.1", server.port
    t0 = time.perf_counter()
    try:
        received = gadgets.send_stream(header, acquisitions, host=host, port=port, chain=request.chain)
    finally:
        if server is not None:
            server.stop()
    wall = time.perf_counter() - t0
    import ismrmrd

    images = [item for item in received if isinstance(item, ismrmrd.Image)]
    image_file = out / "images.h5"
    gadgets.write_images(image_file, header, images, mode="w")
    nifti = export_nifti(images, out / "nifti", stem=f"{request.protocol}_{site.name}")
    report = {
        "protocol": request.protocol,
        "system": request.system,
        "site": site.name,
        "server": f"{host}:{port}",
        "chain": request.chain,
        "images": len(images),
        "image_file": str(image_file),
        "nifti": [str(p) for p in nifti],
        "sequence_duration_s": duration_s,
        "wall_s": wall,
        "simulation": {k: v for k, v in stats.items() if isinstance(v, int | float | str)},
    }
    (out / "scan.json").write_text(json.dumps(report, indent=2))
    print_fn(f"{len(images)} images in {wall:.1f} s -> {image_file}")
    return report
