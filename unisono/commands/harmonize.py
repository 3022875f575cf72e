"""`unisono harmonize study|fit|apply|evaluate`: traveling-subject study, fitting, applying, evaluating.

    unisono harmonize study --subjects 12 --sites siteA,siteB,siteC -o study/  # seq→sim→recon
    unisono harmonize fit --method nyul --train study/ --target-site siteA -o nyul.json
    unisono harmonize apply nyul.json images.h5 -o harmonized.h5                     # MRD, NIfTI or .npy
    unisono harmonize evaluate study/ --methods raw,zscore,whitestripe,nyul,cdf,unet --json

Heavy imports happen inside the handlers so `unisono --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unisono.options import parse_key_values

log = logging.getLogger("unisono.harmonize")

#: sequence parameters the study uses on top of the protocol defaults (TR in ms, flip in
#: degrees): a FLASH-like T1-weighted spoiled GRE (70° at TR 100 ms; CSF about a third of
#: parenchyma) with enough dummy TRs for the steady state (T1* < 2 TRs at 70°), so that
#: the approach to steady state does not modulate k-space into phase-direction ghosts
STUDY_SEQUENCE_DEFAULTS = {"flip_angle": 70.0, "TR": 100.0, "dummy_scans": 40}
#: simulator sampling of the study: 4 isochromats x 32 spins per voxel. With the simulator's
#: default 8 spins the spoiled steady state is unconverged: two noise-free scans that differ
#: only in seed differ at WM SNR ~50 (SSIM 0.976), more than the sites' thermal noise; with 32
#: spins at SNR ~190 (SSIM 0.998), and more spins or isochromats barely help (see
#: docs/harmonization.md)
STUDY_ISOCHROMATS = 4
STUDY_SPINS = 32


def int_list(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _str_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "harmonize",
        help="harmonization: traveling-subject study, fit/apply profiles, evaluate",
        description="Harmonize images across sites (z-score, WhiteStripe, Nyúl, CDF alignment, U-Net).",
    )
    sub = p.add_subparsers(dest="harmonize_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: (p.print_help(), 0)[1])

    s = sub.add_parser("study", help="scan subjects at several virtual sites through the real pipeline")
    s.add_argument("--subjects", type=int, default=8, help="number of subjects (numbered 1..N; default 8)")
    s.add_argument("--sites", default="siteA,siteB,siteC", help="comma-separated site names")
    s.add_argument("-o", "--out", required=True, help="study folder to write")
    s.add_argument("--matrix", type=int, default=64, help="in-plane matrix (default 64)")
    s.add_argument("--protocol", default="gre2d", help="protocol name (default gre2d)")
    s.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="protocol override")
    s.add_argument("--rescan-site", help="also rescan --rescan-subjects here (same-site training pairs)")
    s.add_argument("--rescan-subjects", default="", help="subjects to rescan, e.g. 1-6")
    s.add_argument(
        "--isochromats",
        type=int,
        default=STUDY_ISOCHROMATS,
        help=f"isochromats per voxel (default {STUDY_ISOCHROMATS})",
    )
    s.add_argument(
        "--spins",
        type=int,
        default=STUDY_SPINS,
        help=f"spins per isochromat, stratified through the slice (spoiling; default {STUDY_SPINS})",
    )
    s.add_argument(
        "--clean-site", help="also scan a noise-free twin of repeat 0 here (training targets), see --clean-*"
    )
    s.add_argument("--clean-subjects", default="", help="subjects with a noise-free twin, e.g. 1-12")
    s.add_argument(
        "--clean-isochromats",
        type=int,
        default=None,
        help="isochromats per voxel of the noise-free twins (default: --isochromats)",
    )
    s.add_argument(
        "--clean-spins",
        type=int,
        default=None,
        help="spins per isochromat of the noise-free twins (default: --spins)",
    )
    s.add_argument(
        "--phantom-margin",
        type=int,
        default=0,
        metavar="SLICES",
        help="phantom slices beyond each end of the slice stack (default 0: the phantom ends with the "
        "stack); 1 gives the outer slices of a contiguous stack the tissue a head has beyond them",
    )
    s.add_argument(
        "--noise-scale",
        type=float,
        default=1.0,
        metavar="K",
        help="multiply every site's thermal noise (its noise.sigma, prescan included) by K (default 1; "
        "the site files' noise is 10-30x below a head scan's at these voxels, docs/harmonization.md)",
    )
    s.add_argument(
        "--head-shift",
        type=int,
        default=0,
        metavar="PIXELS",
        help="place the head off-centre in every scan by a random whole number of pixels in each "
        "in-plane direction, up to this many (default 0: always at the isocentre); the scans are "
        "registered back onto the phantom's grid, so the coils' shading moves under the anatomy",
    )
    s.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="scans simulated in parallel processes (default 1; same results)",
    )
    s.add_argument("--device", default="cpu", help="simulation/recon device: auto|cpu|cuda")
    s.add_argument(
        "--synthetic", action="store_true", help="use harmonize.synthetic (closed-form sites A-D) instead"
    )
    s.set_defaults(handler=cmd_study)

    f = sub.add_parser("fit", help="fit a harmonization profile on a study")
    f.add_argument(
        "--method",
        required=True,
        help="zscore | whitestripe | nyul | cdf | unet | unet-gain | unet-fields "
        "(unet-gain: smooth gain field, structure-preserving; unet-fields: smooth monotone map)",
    )
    f.add_argument("--train", required=True, help="study folder")
    f.add_argument(
        "-o", "--out", required=True, help="profile file to write (.json; U-Net weights .pt beside)"
    )
    f.add_argument("--target-site", help="reference site (default: the study's first)")
    f.add_argument("--train-subjects", help="subjects to fit on, e.g. 1-6 (default all)")
    f.add_argument("--train-sites", help="sites the U-Net sees as sources (default all)")
    f.add_argument("--name", help="profile name (default: file stem)")
    f.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="U-Net training iterations (0: the untrained identity network, a baseline)",
    )
    f.add_argument(
        "--output-cdf",
        action="store_true",
        help="U-Net: also write NAME-cdf.json, the same network followed by CDF alignment to the target",
    )
    f.set_defaults(handler=cmd_fit)

    c = sub.add_parser(
        "calibrate",
        help="add per-site contrast curves to a smooth-field U-Net profile, from unpaired scans of each site",
    )
    c.add_argument("profile", help="unet-gain / unet-fields profile (.json path or shipped name)")
    c.add_argument("--scans", required=True, help="study folder holding the sites' scans")
    c.add_argument("--sites", help="sites to calibrate (default: all of the study's; the target among them)")
    c.add_argument("--subjects", help="subjects whose scans calibrate, e.g. 1-12 (default all; unpaired)")
    c.add_argument("-o", "--out", required=True, help="profile to write (.json, beside the input profile)")
    c.add_argument("--name", help="profile name (default: file stem)")
    c.add_argument(
        "--domain",
        choices=("image", "flattened"),
        default=None,
        help="curves on the output as it is or with its smooth field divided out (default: the "
        "profile's curves' own, else image)",
    )
    c.add_argument(
        "--shading",
        choices=("kept", "removed", "target"),
        default=None,
        help="the output's smooth shading: kept (the target site's, as the network maps it), removed "
        "(divided out before the curves: a bias-corrected output) or target (divided out, then the "
        "target site's own shading, calibrated from its scans, multiplied in); default: the profile's own",
    )
    c.add_argument(
        "--noise-sd",
        type=float,
        default=None,
        metavar="SD",
        help="the scans' thermal noise sd in their own units (the recon's prewhitened RSS images: "
        "0.7071); given, each site's noise level is calibrated too and the output of a site noisier "
        "than the target is brought down to the target's",
    )
    c.set_defaults(handler=cmd_calibrate)

    a = sub.add_parser("apply", help="apply a profile to MRD images (.h5), NIfTI (.nii/.nii.gz) or .npy")
    a.add_argument("profile", help="profile name (shipped) or .json path")
    a.add_argument("input", help="input images")
    a.add_argument("-o", "--out", required=True, help="output file (same kind as the input)")
    a.add_argument(
        "--site",
        help="scanner the images come from, for profiles with per-site contrast curves "
        "(default: the MRD header's stationName; NIfTI/.npy: none)",
    )
    a.set_defaults(handler=cmd_apply)

    e = sub.add_parser("evaluate", help="score raw and each method on held-out subjects and sites")
    e.add_argument("study", help="study folder")
    e.add_argument(
        "--methods",
        default="raw,zscore,whitestripe,nyul,cdf",
        help="comma-separated: raw, a method name (fitted here on the training subjects; unet-gain and "
        "unet-fields too), unet+cdf (the U-Net followed by CDF alignment), unet-gain+sites / "
        "unet-fields+sites (that variant with per-site contrast curves calibrated on the training "
        "subjects' scans at every site, the held-out ones included, unpaired), or NAME=PROFILE for a "
        "fitted profile file/shipped name",
    )
    e.add_argument("--test-subjects", help="held-out subjects (default: the second half)")
    e.add_argument("--heldout-sites", default=None, help="sites never used in fitting (default: the last)")
    e.add_argument("--target-site", help="reference site (default: the study's first)")
    e.add_argument("--iterations", type=int, default=None, help="U-Net training iterations when fitting here")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")
    e.add_argument("--plots", metavar="DIR", help="write histogram and image-grid PNGs here")
    e.set_defaults(handler=cmd_evaluate)


# --- study ----------------------------------------------------------------------------------------


def _orient(image, reference):
    """Return the flip/transpose of ``reference`` (z, y, x) that best matches ``image``, and its name.

    The recon's image orientation follows MRD/patient conventions; the phantom's
    arrays follow the simulator's. Choosing the candidate with the highest
    correlation makes the ground-truth labels line up without assuming either.
    """
    import numpy as np

    cands = {
        "identity": lambda a: a,
        "flip_y": lambda a: a[:, ::-1, :],
        "flip_x": lambda a: a[:, :, ::-1],
        "flip_xy": lambda a: a[:, ::-1, ::-1],
        "transpose": lambda a: a.transpose(0, 2, 1),
        "transpose_flip_y": lambda a: a.transpose(0, 2, 1)[:, ::-1, :],
        "transpose_flip_x": lambda a: a.transpose(0, 2, 1)[:, :, ::-1],
        "transpose_flip_xy": lambda a: a.transpose(0, 2, 1)[:, ::-1, ::-1],
    }
    best = max(
        cands,
        key=lambda k: (
            np.corrcoef(image.ravel(), cands[k](reference).ravel())[0, 1]
            if cands[k](reference).shape == image.shape
            else -2.0
        ),
    )
    return cands[best], best


def scan_seed(subject: int, site: str, repeat: int) -> int:
    """Simulator seed of one scan: distinct for every (subject, site, repeat).

    The seed draws the thermal noise and the isochromats' T2' order (Monte-Carlo noise), so
    two scans of one subject never share noise, as two real scans would not.
    """
    import zlib

    return zlib.crc32(f"{subject}/{site}/{repeat}".encode()) & 0x7FFFFFFF


def head_shift(subject: int, site: str, repeat: int, max_pixels: int) -> tuple[int, int]:
    """Where the head lies in one scan: (rows, columns) of the phantom's grid it is moved by,
    each a whole number in -max_pixels..max_pixels, drawn from (subject, site, repeat) alone
    (a second scan of a subject, at any site, puts it somewhere else)."""
    import zlib

    import numpy as np

    if max_pixels == 0:
        return (0, 0)
    rng = np.random.default_rng(zlib.crc32(f"head/{subject}/{site}/{repeat}".encode()))
    rows, cols = rng.integers(-max_pixels, max_pixels + 1, size=2)
    return int(rows), int(cols)


def _register(image, orient, shape: tuple[int, ...], shift: tuple[int, int]):
    """``image`` (the recon's orientation, ``orient`` of a phantom-grid array of ``shape``)
    rolled back by the head's ``shift`` (rows, columns of the phantom's grid): a marker voxel
    and its shifted copy, oriented like the image, give the roll in the image's own axes.
    The head never reaches the edge, so only background wraps."""
    import numpy as np

    marker = np.zeros((1, *shape[1:]))
    marker[0, 0, 0] = 1.0
    home = np.argwhere(orient(marker)[0])[0]
    moved = np.argwhere(orient(np.roll(marker, shift, axis=(1, 2)))[0])[0]
    return np.roll(image, tuple(int(v) for v in home - moved), axis=(1, 2))


def _simulated_scan(
    built,
    site_name: str,
    subject: int,
    atrophy: float,
    args,
    chain,
    seed: int,
    clean_isochromats=None,
    clean_spins=None,
    shift: tuple[int, int] = (0, 0),
):
    """One scan through sequence -> simulator -> recon.

    shift: (rows, columns) of the phantom's grid the head is moved by in the scanner
    (``head_shift``); the images are registered back onto the phantom's grid, where the labels
    and the brain mask are.

    Returns (image, labels, brain mask, orientation name, clean image or None); with
    ``clean_isochromats`` the same scan (same seed) is repeated with thermal noise off and
    that many isochromats (``clean_spins`` spins each, default ``args.spins``), and
    reconstructed with the noisy scan's noise readouts (identical prewhitening, hence
    identical units).
    """
    import dataclasses

    import ismrmrd
    import numpy as np

    from gadgets import run_chain
    from simulator import brain_phantom, load_site, simulate, with_site
    from simulator.phantom_spec import stack_placement

    site = load_site(site_name)
    site = dataclasses.replace(site, noise_sigma=site.noise_sigma * args.noise_scale)
    prm = built.params
    n, margin = int(prm["n_slices"]), args.phantom_margin
    gap, z_offset = stack_placement(built.seq)
    # the margin slices are excited only by the stack's slice-profile tails; the study keeps
    # the stack's own slices, each of which lies where the sequence excites it
    ph = brain_phantom(
        field_T=site.field_T,
        fov_m=prm["fov"],
        matrix=int(prm["matrix"]),
        slice_thickness_m=prm["slice_thickness"],
        n_slices=n + 2 * margin,
        subject=subject,
        atrophy=atrophy,
        slice_gap_m=gap,
    )
    _, dy, dx = ph.voxel_size_m
    ph.offset_m = (shift[1] * dx, shift[0] * dy, z_offset)
    stack = slice(margin, margin + n)  # the phantom slices the sequence images
    hdr = with_site(built.header, site)

    def run(site_obj, isochromats: int, spins: int, noise_readouts=None):
        acqs = list(
            simulate(
                built.seq,
                ph,
                site_obj,
                header=hdr,
                device=args.device,
                isochromats_per_voxel=isochromats,
                spins_per_isochromat=spins,
                seed=seed,
            )
        )
        is_noise = [a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in acqs]
        if noise_readouts is not None:
            acqs = list(noise_readouts) + [a for a, n in zip(acqs, is_noise, strict=True) if not n]
        imgs = run_chain(chain, hdr, acqs, device=args.device)
        if not imgs:
            raise ValueError(f"the recon chain produced no image for subject {subject} at {site_name}")
        image = np.concatenate([np.abs(np.asarray(im.data))[0] for im in imgs], axis=0).astype(np.float32)
        return image, [a for a, n in zip(acqs, is_noise, strict=True) if n]

    image, noise_readouts = run(site, args.isochromats, args.spins)
    clean = None
    if clean_isochromats:
        quiet = dataclasses.replace(site, noise_sigma=0.0)
        clean, _ = run(quiet, clean_isochromats, clean_spins or args.spins, noise_readouts)
    fr = {k: v.detach().cpu().numpy()[stack] for k, v in ph.tissue_maps.items()}
    brain = ph.brain_mask.detach().cpu().numpy()[stack]
    labels = (1 + np.argmax(np.stack([fr["csf"], fr["gm"], fr["wm"]]), axis=0)).astype(np.int8)
    labels[~brain] = 0
    torch_pd = (ph.pd * ph.brain_mask).detach().cpu().numpy()[stack]
    posed = np.roll(torch_pd, shift, axis=(1, 2))  # where the head lay in the scanner
    orient, name = _orient(image, posed)
    if shift != (0, 0):
        image = _register(image, orient, torch_pd.shape, shift)
        clean = None if clean is None else _register(clean, orient, torch_pd.shape, shift)
    return image, np.ascontiguousarray(orient(labels)), np.ascontiguousarray(orient(brain)), name, clean


def subject_atrophy(subject: int) -> float:
    """The study's atrophy factor of ``subject`` (about the fraction of GM lost to CSF), in 0..0.3.

    Set explicitly (not the simulator's own draw) so the ground truth is known here. A
    golden-ratio (low-discrepancy) sequence rather than random draws: any run of
    consecutive subjects (the training half, the test half) spans the range evenly, so a
    correlation over a dozen test subjects is not at the mercy of clustered draws.
    """
    golden = (5**0.5 - 1) / 2
    return float(0.3 * ((0.5 + subject * golden) % 1.0))


@dataclass(frozen=True)
class _ScanTask:
    """One scan of the study's plan (and, with clean_isochromats, its noise-free twin)."""

    subject: int
    site: str
    repeat: int
    clean_isochromats: int | None
    clean_spins: int
    shift: tuple[int, int] = (0, 0)


#: what a scanning process builds once: the protocol's sequence and the recon chain
_WORKER: dict[str, Any] = {}


def _init_scan_worker(protocol: str, overrides: dict, torch_threads: int | None, built=None) -> None:
    """Build the sequence (unless ``built`` is given) and the recon chain in this process."""
    from gadgets import load_chain
    from sequences import build_protocol

    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    _WORKER["built"] = built if built is not None else build_protocol(protocol, overrides=overrides)
    _WORKER["chain"] = load_chain("cartesian", overrides={"harmonize": {"enabled": False}})


def _scan(task: _ScanTask, args: argparse.Namespace):
    """_simulated_scan of one task in this process (after _init_scan_worker), plus its seconds."""
    t0 = time.perf_counter()
    out = _simulated_scan(
        _WORKER["built"],
        task.site,
        task.subject,
        subject_atrophy(task.subject),
        args,
        _WORKER["chain"],
        seed=scan_seed(task.subject, task.site, task.repeat),
        clean_isochromats=task.clean_isochromats,
        clean_spins=task.clean_spins,
        shift=task.shift,
    )
    return (*out, time.perf_counter() - t0)


def _run_scans(tasks: list[_ScanTask], args: argparse.Namespace, overrides: dict, built):
    """Results of ``_scan`` for each task, in task order; ``args.jobs`` processes share the work.

    ``built`` is the protocol's sequence, used as it is in this process; spawned workers
    rebuild it from (protocol, overrides), as a built sequence does not pickle.

    Each scan is seeded by (subject, site, repeat) alone, so the study does not depend on how
    many processes ran it. Workers are spawned (not forked: torch's thread pools do not survive a
    fork) and split the parent's torch threads between them.
    """
    # only what _simulated_scan reads crosses to the workers
    scan_args = argparse.Namespace(
        device=args.device,
        isochromats=args.isochromats,
        spins=args.spins,
        phantom_margin=args.phantom_margin,
        noise_scale=args.noise_scale,
    )
    if args.jobs == 1:
        _init_scan_worker(args.protocol, overrides, None, built)
        try:
            for task in tasks:
                yield _scan(task, scan_args)
        finally:
            _WORKER.clear()  # the sequence and chain are not kept past the study
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    threads = max(1, torch.get_num_threads() // args.jobs)
    with ProcessPoolExecutor(
        max_workers=args.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_scan_worker,
        initargs=(args.protocol, overrides, threads),
    ) as pool:
        yield from pool.map(_scan, tasks, [scan_args] * len(tasks))


def cmd_study(args: argparse.Namespace) -> int:
    from harmonize.study import CLEAN_REPEAT, Study, StudyScan, save_study, synthetic_study

    sites = _str_list(args.sites)
    if args.subjects < 2:
        raise ValueError(f"--subjects must be >= 2, got {args.subjects}")
    if len(sites) < 2:
        raise ValueError(f"--sites needs >= 2 sites, got {sites}")
    rescans = int_list(args.rescan_subjects)
    cleans = int_list(args.clean_subjects) if args.clean_site else []
    t0 = time.perf_counter()
    if args.synthetic and args.head_shift:
        raise ValueError("--head-shift moves the head in the simulator; the --synthetic sites have none")
    if args.synthetic:
        study = synthetic_study(
            range(args.subjects), sites, (1, args.matrix, args.matrix), args.rescan_site, rescans
        )
    else:
        from sequences import build_protocol
        from simulator import list_sites

        known = list_sites()
        for s in sites + [x for x in (args.rescan_site, args.clean_site) if x]:
            if s not in known:
                raise ValueError(f"unknown site {s!r}; known sites: {known}")
        overrides = {**STUDY_SEQUENCE_DEFAULTS, "matrix": args.matrix, **parse_key_values(args.set)}
        built = build_protocol(args.protocol, overrides=overrides)
        if args.phantom_margin < 0 or args.jobs < 1:
            raise ValueError(
                f"--phantom-margin must be >= 0 and --jobs >= 1, got {args.phantom_margin} and {args.jobs}"
            )
        if not (args.noise_scale > 0 and math.isfinite(args.noise_scale)):
            raise ValueError(f"--noise-scale must be a finite number > 0, got {args.noise_scale}")
        if not 0 <= args.head_shift <= args.matrix // 8:
            raise ValueError(
                f"--head-shift must be in 0..{args.matrix // 8} pixels (matrix/8) for --matrix "
                f"{args.matrix}, got {args.head_shift}"
            )
        scans, orientations = [], set()
        clean_isochromats = args.clean_isochromats or args.isochromats
        clean_spins = args.clean_spins or args.spins
        tasks = []
        for subj in range(1, args.subjects + 1):
            plan = [(s, 0) for s in sites]
            if args.rescan_site and subj in rescans:
                plan.append((args.rescan_site, 1))
            if args.clean_site and subj in cleans and (args.clean_site, 0) not in plan:
                plan.append((args.clean_site, 0))
            for site, rep in plan:
                want_clean = rep == 0 and site == args.clean_site and subj in cleans
                shift = head_shift(subj, site, rep, args.head_shift)
                tasks.append(
                    _ScanTask(subj, site, rep, clean_isochromats if want_clean else None, clean_spins, shift)
                )
        for task, (image, labels, brain, orient, clean, seconds) in zip(
            tasks, _run_scans(tasks, args, overrides, built), strict=True
        ):
            subj, site, rep, a = task.subject, task.site, task.repeat, subject_atrophy(task.subject)
            orientations.add(orient)
            # evaluation and fitting use the phantom's brain mask ("inside the brain"); the
            # gadget and `apply` use auto_mask at run time
            if site in sites or rep > 0:
                scans.append(StudyScan(subj, site, rep, a, image, brain, labels))
            if clean is not None:
                scans.append(StudyScan(subj, site, CLEAN_REPEAT, a, clean, brain, labels))
            log.info("subject %d site %s repeat %d: %.1f s", subj, site, rep, seconds)
        study = Study(
            scans,
            "simulator",
            {
                "protocol": args.protocol,
                "overrides": overrides,
                "isochromats_per_voxel": args.isochromats,
                "spins_per_isochromat": args.spins,
                "phantom_margin_slices": args.phantom_margin,
                "thermal_noise_scale": args.noise_scale,
                "head_shift_pixels": args.head_shift,
                "head_shifts": "head_shift(subject, site, repeat, head_shift_pixels); images registered back",
                "chain": "cartesian (harmonize disabled)",
                "label_orientation": sorted(orientations),
                "atrophy": "explicit per subject, a golden-ratio sequence in 0..0.3 (see subject_atrophy)",
                "seeds": "scan_seed(subject, site, repeat): independent noise per scan",
                "clean": {
                    "site": args.clean_site,
                    "subjects": cleans,
                    "isochromats_per_voxel": clean_isochromats,
                    "spins_per_isochromat": clean_spins,
                    "seed": "repeat 0's",
                    "thermal_noise": "off",
                },
            },
        )
    path = save_study(study, args.out)
    print(
        f"wrote {len(study.scans)} scans ({len(study.subjects)} subjects x {len(study.sites)} sites) "
        f"to {path} in {time.perf_counter() - t0:.0f} s"
    )
    return 0


# --- fit / apply ----------------------------------------------------------------------------------


def _training_config(iterations: int | None):
    from harmonize.learned import TrainingConfig

    return TrainingConfig() if iterations is None else TrainingConfig(iterations=iterations)


def cmd_fit(args: argparse.Namespace) -> int:
    from harmonize.fit import LEARNED_VARIANTS, fit_profile
    from harmonize.study import load_study

    if args.output_cdf and args.method != "unet" and args.method not in LEARNED_VARIANTS:
        # checked before the (minutes-long) training, for every method that writes a U-Net profile
        raise ValueError("--output-cdf applies to --method unet (or its variants) only")
    study = load_study(args.train)
    prof = fit_profile(
        args.method,
        study,
        args.out,
        target_site=args.target_site,
        train_subjects=int_list(args.train_subjects) if args.train_subjects else None,
        train_sites=_str_list(args.train_sites) if args.train_sites else None,
        name=args.name,
        training=_training_config(args.iterations),
    )
    print(f"profile {prof.name} ({prof.method}) sha256 {prof.sha256} -> {Path(args.out)}")
    if args.output_cdf:
        from harmonize.fit import with_output_cdf

        out = Path(args.out)
        cdf_path = out.with_name(out.stem + "-cdf.json")
        cprof = with_output_cdf(
            prof,
            study,
            cdf_path,
            train_subjects=int_list(args.train_subjects) if args.train_subjects else None,
        )
        print(f"profile {cprof.name} (unet + output CDF) sha256 {cprof.sha256} -> {cdf_path}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from harmonize.fit import with_site_contrast
    from harmonize.profile import load_profile
    from harmonize.study import load_study

    prof = load_profile(args.profile)
    study = load_study(args.scans)
    out = with_site_contrast(
        prof,
        study,
        args.out,
        sites=_str_list(args.sites) if args.sites else None,
        subjects=int_list(args.subjects) if args.subjects else None,
        name=args.name,
        domain=args.domain,
        shading=args.shading,
        noise_sd=args.noise_sd,
    )
    curves = out.parameters["site_contrast"]["sites"]
    counts = ", ".join(f"{k} ({v['n_images']} scans)" for k, v in sorted(curves.items()))
    print(f"profile {out.name} sha256 {out.sha256}: contrast curves for {counts} -> {Path(args.out)}")
    return 0


def _apply_mrd(prof, inp: Path, out: Path, site: str | None) -> int:
    import ismrmrd
    import numpy as np

    from gadgets.mrdfile import read_header, read_images, write_images
    from harmonize import apply_profile

    images = read_images(inp)
    if not images:
        raise ValueError(f"{inp} holds no images")
    try:
        header = read_header(inp)
    except Exception:  # an image-only file may carry no XML header
        header = None
    if site is None:
        from gadgets.harmonization import station_name

        site = station_name(header)
    outs = []
    for img in images:
        data = np.asarray(img.data)  # (channel, z, y, x)
        if data.shape[0] != 1:
            raise ValueError(f"harmonize needs coil-combined images (1 channel), got {data.shape[0]}")
        res = apply_profile(prof, np.abs(data[0]), site=site)[None]
        new = ismrmrd.Image.from_array(res.astype(np.float32), transpose=False)
        head = img.getHead()
        head.data_type = new.data_type
        new.setHead(head)
        meta = ismrmrd.Meta.deserialize(img.attribute_string) if img.attribute_string else ismrmrd.Meta()
        meta["unisono.harmonization"] = prof.name
        meta["unisono.harmonization_sha256"] = prof.sha256
        new.attribute_string = meta.serialize()
        outs.append(new)
    if out.exists():
        out.unlink()
    write_images(out, header, outs)
    return len(outs)


def cmd_apply(args: argparse.Namespace) -> int:
    import numpy as np

    from harmonize import apply_profile, load_profile

    prof = load_profile(args.profile)
    inp, out = Path(args.input), Path(args.out)
    if not inp.is_file():
        raise FileNotFoundError(f"input {inp} does not exist")
    name = inp.name.lower()
    if name.endswith((".h5", ".mrd")):
        n = _apply_mrd(prof, inp, out, args.site)
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        nii = nib.load(str(inp))
        vol = np.asarray(nii.get_fdata(), dtype=np.float32)  # (x, y, z)
        if vol.ndim not in (2, 3):
            raise ValueError(f"NIfTI input must be 2-D or 3-D, got shape {vol.shape}")
        zyx = vol.T if vol.ndim == 3 else vol.T[None]
        res = apply_profile(prof, zyx, site=args.site)
        res = res.T if vol.ndim == 3 else res[0].T
        hdr = nii.header.copy()
        hdr.set_data_dtype(np.float32)
        hdr["descrip"] = f"unisono harmonization {prof.name} {prof.sha256[:16]}".encode()[:80]
        nib.save(nib.Nifti1Image(res, nii.affine, hdr), str(out))
        n = 1
    elif name.endswith(".npy"):
        np.save(out, apply_profile(prof, np.load(inp), site=args.site))
        n = 1
    else:
        raise ValueError(f"input must be MRD (.h5), NIfTI (.nii, .nii.gz) or .npy, got {inp.name}")
    print(f"harmonized {n} image(s) with {prof.name} ({prof.sha256[:12]}) -> {out}")
    return 0


# --- evaluate ------------------------------------------------------------------------------------


def _plots(result: dict, study, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    methods = list(result["images"])
    sites = result["sites"]
    subjects = result["test_subjects"]
    written = []
    # intensity histograms per site, before/after, first test subject pooled over test subjects
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        imgs = result["images"][m]
        for site in sites:
            vals = np.concatenate(
                [imgs[(s, site, 0)][study.get(s, site).mask] for s in subjects if (s, site, 0) in imgs]
            )
            ax.hist(vals, bins=80, histtype="step", density=True, label=site)
        ax.set_title(m)
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    p = folder / "histograms.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)
    # image grid: rows subjects x methods, columns sites (middle slice)
    show = subjects[:2]
    fig, axes = plt.subplots(
        len(show) * len(methods),
        len(sites),
        figsize=(1.9 * len(sites), 1.9 * len(show) * len(methods)),
        squeeze=False,
    )
    for i, s in enumerate(show):
        for j, m in enumerate(methods):
            row = axes[i * len(methods) + j]
            ims = [result["images"][m][(s, site, 0)] for site in sites]
            masks = [study.get(s, site).mask for site in sites]
            lo = min(float(im[mk].min()) for im, mk in zip(ims, masks, strict=True))
            hi = max(float(np.percentile(im[mk], 99.5)) for im, mk in zip(ims, masks, strict=True))
            for k, (ax, im) in enumerate(zip(row, ims, strict=True)):
                ax.imshow(im[im.shape[0] // 2], cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_ylabel(f"s{s} {m}", fontsize=7)
                if i == 0 and j == 0:
                    ax.set_title(sites[k], fontsize=8)
    fig.tight_layout()
    p = folder / "grid.png"
    fig.savefig(p, dpi=70)
    plt.close(fig)
    written.append(p)
    return written


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harmonize.evaluate import evaluate_study, format_table
    from harmonize.fit import LEARNED_VARIANTS, fit_profile
    from harmonize.profile import METHODS, load_profile
    from harmonize.study import load_study

    study = load_study(args.study)
    subjects = study.subjects
    test = int_list(args.test_subjects) if args.test_subjects else subjects[len(subjects) // 2 :]
    train = [s for s in subjects if s not in test]
    if not train:
        raise ValueError("no training subjects left: --test-subjects takes every subject")
    target = args.target_site or study.sites[0]
    heldout = _str_list(args.heldout_sites) if args.heldout_sites is not None else [study.sites[-1]]
    if target in heldout:
        raise ValueError(f"the target site {target!r} cannot be held out")
    train_sites = [s for s in study.sites if s not in heldout]
    profiles: dict[str, Any] = {}
    fit_dir = Path(args.study) / "profiles"
    fitted: set[str] = set()

    def fit(method: str) -> Any:
        """``method`` fitted here on the training subjects (once, whichever item asks first)."""
        if method not in fitted:
            t0 = time.perf_counter()
            profiles[method] = fit_profile(
                method,
                study,
                fit_dir / f"{method}.json",
                target_site=target,
                train_subjects=train,
                train_sites=train_sites,
                training=_training_config(args.iterations),
            )
            fitted.add(method)
            log.info("fitted %s in %.1f s", method, time.perf_counter() - t0)
        return profiles[method]

    for item in _str_list(args.methods):
        if "=" in item:
            name, ref = item.split("=", 1)
            profiles[name] = load_profile(ref)
        elif item == "raw":
            profiles["raw"] = None
        elif item == "unet+cdf":
            from harmonize.fit import with_output_cdf

            base = profiles["unet"] if "unet" in profiles else fit("unet")  # a given unet=PROFILE too
            profiles[item] = with_output_cdf(base, study, fit_dir / "unet-cdf.json", train_subjects=train)
        elif item.endswith("+sites") and item.removesuffix("+sites") in LEARNED_VARIANTS:
            from harmonize.fit import with_site_contrast

            variant = item.removesuffix("+sites")
            base = profiles[variant] if variant in profiles else fit(variant)
            # every site of the study, the held-out ones too: calibration needs no pairs
            profiles[item] = with_site_contrast(
                base, study, fit_dir / f"{variant}-sites.json", subjects=train
            )
        elif item in METHODS or item in LEARNED_VARIANTS:
            fit(item)
        else:
            raise ValueError(
                f"--methods item {item!r} must be raw, one of {METHODS + tuple(LEARNED_VARIANTS)}, "
                "unet+cdf, unet-gain+sites, unet-fields+sites or NAME=PROFILE"
            )
    result = evaluate_study(
        study, profiles, test_subjects=test, heldout_sites=heldout, keep_images=bool(args.plots)
    )
    result["train_subjects"] = train
    result["target_site"] = target
    if args.plots:
        result["plots"] = [str(p) for p in _plots(result, study, Path(args.plots))]
        del result["images"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"test subjects {test}, train subjects {train}, target {target}, held-out sites {heldout}")
        print(format_table(result))
    return 0
