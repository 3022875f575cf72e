"""The main job: one protocol, two virtual sites, one standardized chain.

``run_demo`` builds the default 2D GRE with pypulseq, scans one digital
subject at two virtual sites with the Bloch simulator, streams each site's raw
data over a loopback MRD connection to an in-process unisono server running the
default ``cartesian`` chain (which ends in the harmonization gadget), and
writes every artefact a physicist would want to look at.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unisono import __version__
from unisono.commands.harmonize import STUDY_SEQUENCE_DEFAULTS

#: the two virtual sites of the demo: they differ in field strength, coils, B1+ and noise
DEFAULT_SITES = ("siteA", "siteB")
#: protocol overrides (protocol file units: ms, degrees, counts): the T1-weighted FLASH-like
#: gre2d of the traveling-subject study that the shipped learned profile was trained on
DEMO_PROTOCOL = dict(STUDY_SEQUENCE_DEFAULTS)
#: the learned profile (a U-Net predicting a smooth gain field, then one contrast curve per
#: scanner, docs/harmonization.md), trained on simulated traveling subjects of that protocol at
#: 64 x 64 with siteA as the target; subject 0 of the demo was not among its training subjects
DEMO_PROFILE = "unet-gain-sites"
DEMO_MATRIX = 64


@dataclass
class DemoConfig:
    """Parameters of a demo run (defaults are the embedded ones `unisono demo` uses)."""

    out: Path = Path("unisono-demo")
    protocol: str = "gre2d"
    system: str = "generic"
    sites: tuple[str, ...] = DEFAULT_SITES
    matrix: int = DEMO_MATRIX
    subject: int = 0
    isochromats_per_voxel: int = 4
    #: spins along z carrying each isochromat: enough of them make gradient spoiling physical
    spins_per_isochromat: int = 16
    chain: str = "cartesian"
    #: harmonization profile the chain's Harmonize gadget applies (sent as chain text, id 2)
    harmonization_profile: str = DEMO_PROFILE
    device: str = "cpu"
    seed: int = 0
    #: protocol settings on top of gre2d's defaults
    overrides: dict[str, object] = field(default_factory=lambda: dict(DEMO_PROTOCOL))


@dataclass
class SiteResult:
    """What one site's scan produced: images (z, y, x) before and after harmonization."""

    site: str
    field_T: float
    n_coils: int
    raw_file: Path
    image_file: Path
    nifti_raw: Path
    nifti_harmonized: Path
    original: np.ndarray
    harmonized: np.ndarray
    pd: np.ndarray
    expected: np.ndarray
    mask: np.ndarray
    tissue_maps: dict[str, np.ndarray]
    meta: dict[str, str]
    timings_s: dict[str, float]


def _progress(print_fn: Callable[[str], None], step: str, message: str) -> None:
    print_fn(f"[{step}] {message}")


def run_demo(config: DemoConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Run the whole chain and return the summary (also written to ``summary.json``)."""
    # Heavy imports here: `unisono --help` must stay instant.
    import sequences
    from gadgets import load_chain
    from gadgets.server import MRDServer

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. protocol -> pypulseq sequence -> .seq + MRD header
    t0 = time.perf_counter()
    overrides = {"matrix": config.matrix, **config.overrides}
    built = sequences.build_protocol(config.protocol, system=config.system, overrides=overrides)
    seq_path = out / f"{config.protocol}.seq"
    built.write(seq_path)
    timings["sequence_build"] = time.perf_counter() - t0
    _progress(
        print_fn,
        "1/4 sequence",
        f"{config.protocol} on system '{config.system}': {len(built.seq.block_events)} blocks, "
        f"{built.seq.duration()[0]:.2f} s scan time -> {seq_path}",
    )

    # the standard chain with the demo's profile, sent as chain text (MRD config text, id 2)
    chain = load_chain(config.chain, overrides={"harmonize": {"profile": config.harmonization_profile}})
    chain_text = chain.to_toml()
    server = MRDServer(host="127.0.0.1", port=0, raw_dir=out / "server-raw")
    server.start()
    results: list[SiteResult] = []
    try:
        for index, site_name in enumerate(config.sites):
            results.append(
                _scan_site(config, built, chain_text, site_name, index, server.port, out, print_fn)
            )
    finally:
        server.stop()

    # 4. compare the sites before and after harmonization
    t0 = time.perf_counter()
    from unisono.compare import compare_sites

    comparison = compare_sites(
        [r.original for r in results],
        [r.harmonized for r in results],
        results[0].mask,
        results[0].tissue_maps,
    )
    figure = out / "sites.png"
    _figure(results, comparison, figure)
    timings["compare_and_plot"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    summary = {
        "unisono_version": __version__,
        "protocol": config.protocol,
        "system": config.system,
        "matrix": config.matrix,
        "subject": config.subject,
        "chain": config.chain,
        "chain_sha256": results[0].meta.get("unisono.chain_sha256"),
        "harmonization": results[0].meta.get("unisono.harmonization"),
        "device": config.device,
        "threads": _threads(),
        "sites": {
            r.site: {
                "field_T": r.field_T,
                "n_coils": r.n_coils,
                "raw_file": str(r.raw_file),
                "image_file": str(r.image_file),
                "nifti": [str(r.nifti_raw), str(r.nifti_harmonized)],
                "correlation_with_pd_in_mask": _correlation(r.original, r.pd, r.mask),
                # the closed-form Ernst steady state with the site's B1+ and receive field
                "correlation_with_closed_form_in_mask": _correlation(r.original, r.expected, r.mask),
                "timings_s": r.timings_s,
            }
            for r in results
        },
        "inter_site": comparison,
        "outputs": {"sequence": str(seq_path), "figure": str(figure)},
        "timings_s": timings,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    raw, harmonized = comparison["raw"], comparison["harmonized"]
    _progress(
        print_fn,
        "4/4 compare",
        f"inter-site SSIM raw {raw['ssim']:.3f} -> harmonized {harmonized['ssim']:.3f}, "
        f"tissue-mean spread {raw['tissue_mean_spread']:.3f} -> {harmonized['tissue_mean_spread']:.3f}; "
        f"figure {figure}",
    )
    print_fn(f"done in {timings['total']:.1f} s; outputs in {out.resolve()} (summary.json)")
    return summary


def _scan_site(config, built, chain_text, site_name, index, port, out, print_fn) -> SiteResult:
    import gadgets
    import simulator
    from gadgets.export import export_nifti
    from simulator.signal_models import expected_spoiled_gre_image

    timings: dict[str, float] = {}
    site = simulator.load_site(site_name)
    t0 = time.perf_counter()
    phantom = simulator.brain_phantom(
        field_T=site.field_T,
        fov_m=built.params["fov"],
        matrix=config.matrix,
        slice_thickness_m=built.params["slice_thickness"],
        n_slices=1,
        subject=config.subject,
    )
    header = simulator.with_site(built.header, site)
    acquisitions = list(
        simulator.simulate(
            built.seq,
            phantom,
            site,
            header=header,
            device=config.device,
            isochromats_per_voxel=config.isochromats_per_voxel,
            spins_per_isochromat=config.spins_per_isochromat,
            seed=config.seed + index,
        )
    )
    raw_file = out / f"raw_{site_name}.h5"
    simulator.write_raw(raw_file, header, acquisitions)
    timings["simulate"] = time.perf_counter() - t0
    _progress(
        print_fn,
        f"2/4 scan {site_name}",
        f"{site.field_T:g} T, {site.n_coils} coils: Bloch-simulated {len(acquisitions)} readouts "
        f"in {timings['simulate']:.1f} s -> {raw_file}",
    )

    t0 = time.perf_counter()
    images = gadgets.send_file(raw_file, host="127.0.0.1", port=port, chain_text=chain_text)
    timings["stream_and_recon"] = time.perf_counter() - t0
    image_file = out / f"images_{site_name}.h5"
    gadgets.write_images(image_file, header, images, mode="w")
    original, harmonized, meta = _split_series(images)
    nifti = {
        kind: export_nifti([im for im in images if _series(im) == kind], out, stem=f"{site_name}_{kind}")
        for kind in ("original", "harmonized")
    }
    nifti_raw, nifti_harm = nifti["original"][0], nifti["harmonized"][0]
    _progress(
        print_fn,
        f"3/4 recon {site_name}",
        f"streamed over MRD/TCP to chain '{config.chain}', {len(images)} images back in "
        f"{timings['stream_and_recon']:.2f} s -> {image_file}",
    )
    return SiteResult(
        site=site_name,
        field_T=site.field_T,
        n_coils=site.n_coils,
        raw_file=raw_file,
        image_file=image_file,
        nifti_raw=nifti_raw,
        nifti_harmonized=nifti_harm,
        original=original,
        harmonized=harmonized,
        pd=phantom.pd.cpu().numpy(),
        expected=expected_spoiled_gre_image(
            phantom,
            site,
            tr_s=built.params["TR"],
            te_s=built.params["TE"],
            flip_deg=float(np.degrees(built.params["flip_angle"])),
        ).numpy(),
        mask=phantom.brain_mask.cpu().numpy(),
        tissue_maps={k: v.cpu().numpy() for k, v in phantom.tissue_maps.items()},
        meta=meta,
        timings_s=timings,
    )


def _series(image) -> str:

    return str(image.meta.get("unisono.series", "original"))


def _split_series(images) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Stack the chain's two image series, (z, y, x) each, ordered by slice."""
    by_series: dict[str, list] = {"original": [], "harmonized": []}
    meta: dict[str, str] = {}
    for image in images:
        by_series[_series(image)].append(image)
        meta.update({k: str(v) for k, v in image.meta.items()})
    stacks = []
    for name in ("original", "harmonized"):
        if not by_series[name]:
            raise RuntimeError(f"the chain returned no {name} images")
        ordered = sorted(by_series[name], key=lambda im: im.slice)
        stacks.append(np.concatenate([_real(im) for im in ordered], axis=0))
    return stacks[0], stacks[1], {k: str(v) for k, v in meta.items()}


def _real(image) -> np.ndarray:
    """(z, y, x) intensities of an MRD image: magnitude of complex data, real data as they are
    (harmonized intensities are signed; abs() would invert their contrast)."""
    data = np.asarray(image.data)[0]
    return np.abs(data) if np.iscomplexobj(data) else data.astype(np.float32)


def _correlation(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    a, b = image[mask].ravel(), reference[mask].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _threads() -> dict[str, object]:
    import os

    import torch

    return {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _figure(results: list[SiteResult], comparison: dict, path: Path) -> None:
    """Row 1: each site as delivered; row 2: harmonized; last column: first minus second site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(2, n + 1, figsize=(3.2 * (n + 1), 6.6))
    for row, key in enumerate(("original", "harmonized")):
        stacks = [getattr(r, key) for r in results]
        mid = stacks[0].shape[0] // 2
        mask = results[0].mask[mid]
        for col, (r, stack) in enumerate(zip(results, stacks, strict=True)):
            image = stack[mid]
            lo, hi = np.percentile(image[mask], [0.5, 99.5])
            axes[row, col].imshow(np.where(mask | (row == 0), image, lo), cmap="gray", vmin=lo, vmax=hi)
            axes[row, col].set_title(f"{r.site} ({r.field_T:g} T) {key}", fontsize=9)
        # difference in units of the pooled spread (raw images first scaled to their mean)
        a, b = (s[mid] / (s[mid][mask].mean() if row == 0 else 1.0) for s in stacks[:2])
        spread = np.std(np.concatenate([a[mask], b[mask]]))
        axes[row, n].imshow(np.where(mask, (a - b) / spread, 0.0), cmap="RdBu_r", vmin=-1, vmax=1)
        stats = comparison["raw_mean_scaled" if row == 0 else "harmonized"]
        axes[row, n].set_title(
            f"{results[0].site}−{results[1].site} / SD, SSIM {stats['ssim']:.3f}\n"
            f"tissue-mean spread {stats['tissue_mean_spread']:.3f}",
            fontsize=9,
        )
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("unisono demo: one subject, two virtual sites, one chain", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
