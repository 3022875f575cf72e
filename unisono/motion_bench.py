"""`unisono bench motion`: the closed motion loop measured on the brain phantom.

For each standard trajectory (slow drift, step, sudden nod) the virtual scanner
streams a navigated gre2d scan live to an in-process server running the
``cartesian-motion`` chain, three ways:

* feedback off: the estimates come back but are ignored (no correction; open-loop
  estimation error against the simulated truth);
* feedback on: the scanner applies each estimate to the following blocks (prospective);
* prospective with the true pose: the same loop (update points, lockstep, dead band) fed the
  simulated truth at each navigator instead of the estimate -- what the timing of the updates
  and the simulated spin history allow at best;
* retrospective: the feedback-off raw data replayed offline through ``cartesian-retro``: each
  readout corrected with the pose interpolated from the navigator estimates (translation
  phase ramps, in-plane rotation by CG-NUFFT; :mod:`gadgets.retro_motion`).

Images are compared with a motion-free scan of the same protocol (SSIM and NRMSE inside
the brain mask). Latency is the client-side round trip (readout handed to the socket ->
feedback decoded), an upper bound of the server's navigator-in -> feedback-out time, plus
the estimator's own time stamped in each message.

Defaults: matrix 64, the project's T1-weighted protocol (TR 100 ms, flip 70 degrees, 40 dummy
TRs, as the traveling-subject study), 9 isochromats per voxel (a 3 x 3 in-plane grid, which
cancels the protocol's 2-cycle spoilers), a 1 ms / 20 us RF pulse (the RF Bloch step dominates
when spins move), and a three-plane orbital navigator (``navigator_type = "orbital3"``: a
5 degree non-selective pulse, then k-space circles in the xy plane at 60 /m and the yz and zx
planes at ``navigator_through_plane_radius``, 30 /m: all six rigid parameters; ~6 ms) before
every imaging TR and in the dummy TRs, on a phantom with one guard slice above and one below
the imaged one, so that the navigator sees the head's extent along z and a nod moves tissue
into the slice. Dead band 0.2 mm / 0.8 deg: a turn of the scanner's frame reads about twice as
large for some TRs at this flip angle, and 0.4 deg let that cycle; with ``dead_band_persist`` 3
an offset that three estimates in a row agree on is applied inside the band too. One scan takes about 5
minutes on one core (three slices of spins); the whole run about 70 minutes.

``BenchSettings.in_plane()`` (``--set navigator_type=orbital --set navigator_flip_deg=30 --set
guard_slices=0 --set dead_band_deg=0.4 --set dead_band_persist=0``) is the earlier default:
one orbit in the slice plane (tx, ty, rz), 30 degrees, dead band 0.2 mm / 0.4 deg (about three
times its noise, 0.07 mm and 0.13 deg RMS); it cannot see the nod's through-plane part.
docs/benchmarks.md has both tables.

Why TR 100 ms and not the protocol's default 20 ms / 15 degrees: with a finite number of spins
per voxel the residual transverse coherences of a short-TR spoiled steady state leave a
spin-configuration "speckle" -- two noise-free scans that differ only in the seed of the
isochromat layout reach SSIM 0.70 at TR 20 ms (0.90 with 4x the spins) but 0.976 at TR 100 ms
(``benchmarks/motion_limits.py``).
Every pose update re-phases RF and receiver and reshuffles that speckle, so at TR 20 ms the
benchmark measured the simulation's convergence rather than the correction (even the true pose
applied at every block recovered only 78 % of a drift). A real voxel has no such speckle.

The scanner runs in lockstep with the estimator (``ScannerFeedback.sync_timeout_s``): each
estimate takes effect at the excitation after its navigator, as on a real-time scanner whose
feedback arrives within the TR, instead of whenever the faster- or slower-than-real-time
simulation happens to be.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unisono.scan import DEAD_BAND_DEG, DEAD_BAND_MM

__all__ = ["BenchSettings", "standard_trajectory", "run_benchmark", "TRAJECTORIES"]

TRAJECTORIES = ("drift", "step", "nod", "turn")
#: rotation dead band (deg) of the three-plane setting: a turn of the scanner's frame reads about
#: twice as large with a 5 degree non-selective navigator for some TRs, and at 0.4 degrees that
#: loop gain cycled rz after the nod (docs/feedback.md)
THREE_PLANE_DEAD_BAND_DEG = 0.8


@dataclass(frozen=True)
class BenchSettings:
    """Protocol and simulation settings of the benchmark (units as in the gre2d protocol)."""

    matrix: int = 64
    tr_ms: float = 100.0
    flip_deg: float = 70.0
    dummy_scans: int = 40
    isochromats: int = 9
    site: str = "siteA"
    navigator_every: int = 1
    navigator_type: str = "orbital3"
    navigator_flip_deg: float = 5.0
    navigator_through_plane_radius: float | None = None  # 1/m; None = the protocol's default
    rf_duration_ms: float = 1.0
    rf_dwell_us: float = 20.0
    seed: int = 0
    dead_band_mm: float = DEAD_BAND_MM
    dead_band_deg: float = THREE_PLANE_DEAD_BAND_DEG
    dead_band_persist: int = 3  # see ScannerFeedback.persist
    guard_slices: int = 1

    @classmethod
    def in_plane(cls, **changes: Any) -> BenchSettings:
        """The in-plane orbital navigator's setting (the benchmark's default until the seventh
        session): one orbit in the slice plane at 30 degrees, no guard slices, the scanner's
        default dead band."""
        return cls(**{"navigator_type": "orbital", "navigator_flip_deg": 30.0, "guard_slices": 0,
                      "dead_band_deg": DEAD_BAND_DEG, "dead_band_persist": 0, **changes})  # fmt: skip

    def overrides(self) -> dict[str, object]:
        radius = self.navigator_through_plane_radius
        return {
            "matrix": self.matrix,
            "TR": self.tr_ms,
            "flip_angle": self.flip_deg,
            "dummy_scans": self.dummy_scans,
            "navigator_every": self.navigator_every,
            "navigator_type": self.navigator_type,
            "navigator_flip_angle": self.navigator_flip_deg,
            "rf_duration": self.rf_duration_ms,
            "rf_dwell": self.rf_dwell_us,
            **({} if radius is None else {"navigator_through_plane_radius": radius}),
        }


def standard_trajectory(name: str, duration_s: float, start_s: float = 0.0):
    """One of the benchmark's head motions over a scan of ``duration_s`` (s).

    Percentages are of the imaging part, from ``start_s`` (the first navigator or imaging
    readout, after the dummy TRs) to the end: motion during the dummies would happen before the
    reference navigator, where no correction relative to it can see it.

    * ``drift``: at rest for the first 20 % of the scan, then a linear drift to
      (tx, ty) = (1.5, 3.0) mm at the end (in-plane, what the navigators see).
    * ``step``: at 45 % of the scan a 50 ms move to (tx, ty) = (-2, 3) mm that is kept.
    * ``nod``: at 50 % a 0.3 s nod and back: up to ty = 4 mm and tz = 1 mm with a 2 degree
      rotation about x (the left-right axis): partly through-plane, which the two in-plane
      projection navigators cannot see.
    * ``turn``: at 35 % a 0.5 s turn of the head about z (shaking "no") to rz = 3 degrees with
      (tx, ty) = (1, -1) mm, kept: in-plane, seen by the orbital navigator.
    """
    from simulator.motion import MotionTrajectory

    d = float(duration_s)
    if not 0.0 <= start_s < d:
        raise ValueError(f"motion trajectory start_s={start_s} must be in [0, duration_s={d})")

    def at(fraction: float) -> float:
        return start_s + fraction * (d - start_s)

    if name == "drift":
        return MotionTrajectory(
            [0.0, at(0.2), d], [[0, 0, 0], [0, 0, 0], [1.5, 3.0, 0]], np.zeros((3, 3)), "drift"
        )
    if name == "step":
        t0 = at(0.45)
        return MotionTrajectory(
            [0.0, t0, t0 + 0.05], [[0, 0, 0], [0, 0, 0], [-2.0, 3.0, 0]], np.zeros((3, 3)), name="step"
        )
    if name == "nod":
        t0 = at(0.5)
        return MotionTrajectory(
            [0.0, t0, t0 + 0.15, t0 + 0.3],
            [[0, 0, 0], [0, 0, 0], [0, 4.0, 1.0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0], [2.0, 0, 0], [0, 0, 0]],
            name="nod",
        )
    if name == "turn":
        t0 = at(0.35)
        return MotionTrajectory(
            [0.0, t0, t0 + 0.5], [[0, 0, 0], [0, 0, 0], [1.0, -1.0, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 3.0]],
            name="turn",
        )  # fmt: skip
    raise ValueError(f"motion benchmark trajectory must be one of {TRAJECTORIES}, got {name!r}")


#: volume-to-volume check of the image method: poses (translation mm, rotation deg) reached
#: between two gre3d repetitions -- the nod's peak, the drift's end, and one in every component
VOLUME_POSES = (
    ((0.0, 4.0, 1.0), (2.0, 0.0, 0.0)),
    ((1.5, 3.0, 0.0), (0.0, 0.0, 0.0)),
    ((3.0, -2.0, 3.0), (3.0, -2.0, 4.0)),
)


def volume_pose_estimate(
    translation_mm: tuple[float, float, float],
    rotation_deg: tuple[float, float, float],
    device: str = "cpu",
    seed: int = 0,
) -> Any:
    """The image method's estimate for a head that moves by the given pose between two volumes.

    A whole-brain gre3d slab (16 x 16 x 16 at 13.75 x 13.75 x 10 mm, TR 100 ms, flip 70 deg, two
    repetitions) is simulated on the brain phantom at siteA with the move at the repetition
    boundary and streamed through ``cartesian-motion`` with ``method = "image"``; returns the
    one :class:`gadgets.feedback.MotionFeedback` it sends (about 10 s on one CPU core).
    """
    import gadgets
    import sequences
    import simulator
    from gadgets.feedback import decode, is_feedback
    from simulator.motion import MotionTrajectory

    built = sequences.build_protocol(
        "gre3d",
        overrides={"matrix": 16, "n_partitions": 16, "slab_thickness": 160.0, "n_repetitions": 2,
                   "TR": 100.0, "flip_angle": 70.0, "dummy_scans": 4},
    )  # fmt: skip
    site = simulator.load_site("siteA")
    header = simulator.with_site(built.header, site)
    phantom = simulator.brain_phantom(
        field_T=site.field_T, fov_m=0.22, matrix=16, slice_thickness_m=0.01, n_slices=16
    )
    half = float(built.seq.duration()[0]) / 2
    motion = MotionTrajectory([0, half - 0.01, half], [[0, 0, 0], [0, 0, 0], list(translation_mm)],
                              [[0, 0, 0], [0, 0, 0], list(rotation_deg)])  # fmt: skip
    acqs = simulator.simulate(
        built.seq, phantom, site, header=header, device=device, isochromats_per_voxel=4,
        spins_per_isochromat=2, seed=seed, motion=motion,
    )  # fmt: skip
    chain = gadgets.load_chain("cartesian-motion", overrides={"motion": {"method": "image"}})
    out = gadgets.run_chain(chain, header, list(acqs), images_only=False)
    estimates = [decode(o) for o in out if is_feedback(o)]
    if len(estimates) != 1:
        raise RuntimeError(f"the image method sent {len(estimates)} estimates for two volumes, expected 1")
    return estimates[0]


def _volume_estimation(device: str) -> dict[str, Any]:
    """RMS error of the volume-to-volume image method over :data:`VOLUME_POSES`."""
    err_t, err_r, rows = [], [], []
    for t, r in VOLUME_POSES:
        fb = volume_pose_estimate(t, r, device)
        err_t.extend(np.subtract(fb.translation_mm, t).tolist())
        err_r.extend(np.subtract(fb.rotation_deg, r).tolist())
        rows.append({"truth": [*t, *r], "estimate": [*fb.translation_mm, *fb.rotation_deg]})
    return {
        "protocol": "gre3d 16x16x16, 13.75 x 13.75 x 10 mm, TR 100 ms, flip 70 deg, 2 repetitions",
        "rms_mm": float(np.sqrt(np.mean(np.square(err_t)))),
        "rms_deg": float(np.sqrt(np.mean(np.square(err_r)))),
        "max_abs_mm": float(np.max(np.abs(err_t))),
        "max_abs_deg": float(np.max(np.abs(err_r))),
        "poses": rows,
    }


def _oracle_channel(motion, base: type, dead_band: tuple[float, float], last_segment: int) -> Any:
    """A scanner feedback channel fed the *true* pose at each navigator (ignores the server).

    Same update points, lockstep and dead band as the real loop: it separates what estimation
    errors cost from what the update timing and the simulated spin history cost.
    """
    import ismrmrd

    from gadgets.feedback import MotionFeedback
    from gadgets.motion import TIME_TICK_S

    class OracleFeedback(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            # the plain dead band: `persist` undoes wrong estimates, which the true pose never makes
            super().__init__(apply=True, min_change_mm=dead_band[0], min_change_deg=dead_band[1])
            self._navs = 0
            self._ref_s: float | None = None

        def on_item(self, item: Any) -> None:  # the server's estimates are not used
            return

        def tag(self, acquisitions):
            for acq in super().tag(acquisitions):
                # a navigator is complete with its last readout (projection: SEG 1; orbital: SEG 0)
                if acq.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA) and int(acq.idx.segment) == last_segment:
                    t = int(acq.acquisition_time_stamp) * TIME_TICK_S
                    self._navs += 1
                    if self._navs == 2:  # the estimator's reference navigator (reference_pair = 1)
                        self._ref_s = t
                    elif self._navs > 2:
                        true_t = np.subtract(motion.transform_at(t).translation_mm,
                                             motion.transform_at(self._ref_s).translation_mm)  # fmt: skip
                        true_r = np.subtract(motion.transform_at(t).rotation_deg,
                                             motion.transform_at(self._ref_s).rotation_deg)  # fmt: skip
                        self._latest = MotionFeedback(
                            seq=self._navs, scan_counter=int(acq.scan_counter),
                            acquisition_time_stamp=int(acq.acquisition_time_stamp),
                            translation_mm=tuple(true_t), rotation_deg=tuple(true_r), method="oracle",
                        )  # fmt: skip
                yield acq

    return OracleFeedback()


def imaging_start_s(built: Any) -> float:
    """Sequence time (s) at which a built sequence starts imaging: the start of the first block
    with an ADC after the noise prescan (block 1), i.e. after the dummy TRs."""
    t = float(built.seq.get_block(1).block_duration)
    for index in list(built.seq.block_events)[1:]:
        block = built.seq.get_block(index)
        if getattr(block, "adc", None) is not None:
            return t
        t += float(block.block_duration)
    raise ValueError("the sequence acquires nothing after its noise prescan")


def _image(out: Path) -> np.ndarray:
    import gadgets

    images = gadgets.read_images(out / "images.h5")
    if not images:
        raise RuntimeError(f"the scan in {out} returned no image")
    return np.abs(np.asarray(images[0].data, dtype=np.float32)).squeeze()


def _metrics(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from harmonize.metrics import ssim

    nrmse = float(np.linalg.norm((image - reference)[mask]) / np.linalg.norm(reference[mask]))
    return {"ssim": ssim(image, reference, mask), "nrmse": nrmse}


def _estimation_errors(messages: list[Any], motion) -> dict[str, Any]:
    """Estimated vs true pose (relative to the reference navigator), observed components only."""
    err_t, err_r, rows = [], [], []
    for fb in messages:
        truth = motion.transform_at(fb.time_s)
        ref = motion.transform_at(fb.reference_time_s or 0.0)
        true_t = np.subtract(truth.translation_mm, ref.translation_mm)
        true_r = np.subtract(truth.rotation_deg, ref.rotation_deg)
        obs = np.asarray(fb.observed)
        dt = (np.asarray(fb.translation_mm) - true_t)[obs[:3]]
        dr = (np.asarray(fb.rotation_deg) - true_r)[obs[3:]]
        err_t.extend(dt.tolist())
        err_r.extend(dr.tolist())
        # (time, estimated t (3), true t (3), estimated r (3)): what the traces figure plots
        rows.append((fb.time_s, *fb.translation_mm, *true_t, *fb.rotation_deg))
    unobserved_t = [i for i in range(3) if not messages or not messages[0].observed[i]]
    unobserved_r = [i for i in range(3) if not messages or not messages[0].observed[3 + i]]
    return {
        "rms_mm": float(np.sqrt(np.mean(np.square(err_t)))) if err_t else None,
        "rms_deg": float(np.sqrt(np.mean(np.square(err_r)))) if err_r else None,
        "max_abs_mm": float(np.max(np.abs(err_t))) if err_t else None,
        "n_estimates": len(messages),
        "unobserved": [f"t{'xyz'[i]}" for i in unobserved_t] + [f"r{'xyz'[i]}" for i in unobserved_r],
        "trace": rows,
    }


def _retrospective(raw_file: Path) -> np.ndarray:
    """Replay recorded raw data through ``cartesian-retro``: the navigators' poses interpolated to
    each readout undo its translation and in-plane rotation (:mod:`gadgets.retro_motion`)."""
    import gadgets

    header, acqs = gadgets.read_raw(raw_file)
    images = gadgets.run_chain(gadgets.load_chain("cartesian-retro"), header, acqs)
    return np.abs(np.asarray(images[0].data, dtype=np.float32)).squeeze()


def _plot(traces: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(traces)
    fig, axes = plt.subplots(5, len(names), figsize=(4.2 * len(names), 11.0), squeeze=False, sharex="col")
    for j, name in enumerate(names):
        motion, est_off, est_on = traces[name]["motion"], traces[name]["off"], traces[name]["on"]
        t = np.linspace(0, traces[name]["duration_s"], 400)
        poses = [motion.transform_at(v) for v in t]
        # (row label, column of the estimate in the trace rows, true values at t)
        panels = (
            ("tx (mm)", 1, [p.translation_mm[0] for p in poses]),
            ("ty (mm)", 2, [p.translation_mm[1] for p in poses]),
            ("tz (mm)", 3, [p.translation_mm[2] for p in poses]),
            ("rx (deg)", 7, [p.rotation_deg[0] for p in poses]),
            ("rz (deg)", 9, [p.rotation_deg[2] for p in poses]),
        )
        for i, (label, col, truth) in enumerate(panels):
            ax = axes[i, j]
            ax.plot(t, truth, "k-", label="true")
            for rows, style, lab in (
                (est_off, "o", "navigator (open loop)"),
                (est_on, "x", "navigator (closed loop)"),
            ):
                if rows:
                    a = np.asarray(rows)
                    ax.plot(a[:, 0], a[:, col], style, label=lab, markersize=3)
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(name)
            if i == len(panels) - 1:
                ax.set_xlabel("sequence time (s)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("unisono motion benchmark: true vs estimated head pose")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_benchmark(device: str = "auto", repeats: int = 5, **opts: Any) -> dict:
    """Run the motion benchmark; returns the JSON-ready result.

    Options (``--set KEY=VALUE``): the fields of :class:`BenchSettings` (matrix, tr_ms,
    flip_deg, dummy_scans, isochromats, site, navigator_every, navigator_type,
    navigator_flip_deg, navigator_through_plane_radius, rf_duration_ms, rf_dwell_us, seed,
    dead_band_mm, dead_band_deg, dead_band_persist, guard_slices),
    trajectories (comma-separated subset of drift,step,nod,turn), out (folder for scans and the
    PNG; a temporary one when absent), png (path of the traces figure), volume (on/off: the
    volume-to-volume image method's error over :data:`VOLUME_POSES`, about 30 s).

    ``repeats`` is not used: every scan is one live acquisition; latency statistics pool
    the feedback messages of all scans instead.
    """
    import torch

    import sequences
    from gadgets.feedback import FeedbackError
    from harmonize import auto_mask
    from recon.device import resolve_device
    from unisono.scan import ScannerFeedback, ScanRequest, run_scan

    known = set(BenchSettings.__dataclass_fields__) | {"trajectories", "out", "png", "volume"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(
            f"unknown motion benchmark option '{unknown[0]}'; allowed: {', '.join(sorted(known))}"
        )
    settings = BenchSettings(**{k: v for k, v in opts.items() if k in BenchSettings.__dataclass_fields__})
    names = opts.get("trajectories", ",".join(TRAJECTORIES))
    names = [n.strip() for n in str(names).split(",") if n.strip()]
    for n in names:
        if n not in TRAJECTORIES:
            raise ValueError(
                f"motion benchmark option 'trajectories' takes names from {TRAJECTORIES}, got {n!r}"
            )
    dev = str(resolve_device(device))
    out_root = Path(opts["out"]) if "out" in opts else Path(tempfile.mkdtemp(prefix="unisono-motion-"))
    out_root.mkdir(parents=True, exist_ok=True)
    png = Path(opts.get("png", out_root / "motion_traces.png"))
    t_start = time.perf_counter()

    dead_band = (settings.dead_band_mm, settings.dead_band_deg)
    built = sequences.build_protocol("gre2d", overrides=settings.overrides())
    # a navigator is complete with its last readout, the header's last segment
    last_nav_segment = int(built.header.encoding[0].encodingLimits.segment.maximum)

    def scan(tag: str, motion, feedback: bool, oracle: bool = False) -> tuple[Path, ScannerFeedback]:
        out = out_root / tag
        if out.exists():
            shutil.rmtree(out)  # the raw recording of an earlier run must not be picked up
        channel = (
            _oracle_channel(motion, ScannerFeedback, dead_band, last_nav_segment)
            if oracle
            else ScannerFeedback(
                feedback,
                min_change_mm=dead_band[0],
                min_change_deg=dead_band[1],
                sync_timeout_s=1.0,
                persist=settings.dead_band_persist,
            )
        )
        request = ScanRequest(
            protocol="gre2d",
            site=settings.site,
            out=out,
            overrides=settings.overrides(),
            chain="cartesian-motion",
            feedback=feedback,
            device=dev,
            isochromats_per_voxel=settings.isochromats,
            seed=settings.seed,
            extra_slices=settings.guard_slices,
        )
        run_scan(request, print_fn=lambda _: None, motion_trajectory=motion, feedback_channel=channel)
        if channel.errors:
            raise FeedbackError(f"the server sent malformed feedback: {channel.errors[0]}")
        return out, channel

    still_dir, _ = scan("still", None, False)
    reference = _image(still_dir)
    mask = np.asarray(auto_mask(reference))
    import json

    duration_s = float(json.loads((still_dir / "scan.json").read_text())["sequence_duration_s"])
    start_s = imaging_start_s(built)
    results: dict[str, Any] = {}
    traces: dict[str, dict[str, Any]] = {}
    round_trips: list[np.ndarray] = []
    processing: list[float] = []
    all_err_t: list[float] = []
    for name in names:
        motion = standard_trajectory(name, duration_s, start_s)
        off_dir, off = scan(f"{name}_off", motion, False)
        on_dir, on = scan(f"{name}_on", motion, True)
        oracle_dir, _ = scan(f"{name}_oracle", motion, True, oracle=True)
        raw = sorted((off_dir / "raw").glob("*.h5"))
        img_off, img_on, img_oracle = _image(off_dir), _image(on_dir), _image(oracle_dir)
        img_retro = _retrospective(raw[0])
        est_off = _estimation_errors(off.received, motion)
        est_on = _estimation_errors(on.received, motion)
        m_off, m_on, m_retro, m_oracle = (
            _metrics(i, reference, mask) for i in (img_off, img_on, img_retro, img_oracle)
        )
        lost = 1.0 - m_off["ssim"]
        results[name] = {
            "estimation_open_loop": {k: v for k, v in est_off.items() if k != "trace"},
            "estimation_closed_loop": {k: v for k, v in est_on.items() if k != "trace"},
            "image": {
                "no_correction": m_off,
                "prospective": m_on,
                "retrospective": m_retro,
                "prospective_true_pose": m_oracle,
            },
            "ssim_recovered_prospective": (m_on["ssim"] - m_off["ssim"]) / lost if lost > 1e-6 else None,
            "ssim_recovered_retrospective": (m_retro["ssim"] - m_off["ssim"]) / lost if lost > 1e-6 else None,
            "ssim_recovered_prospective_true_pose": (m_oracle["ssim"] - m_off["ssim"]) / lost
            if lost > 1e-6
            else None,
        }
        traces[name] = {
            "motion": motion,
            "off": est_off["trace"],
            "on": est_on["trace"],
            "duration_s": duration_s,
        }
        for ch in (off, on):
            round_trips.append(ch.round_trip_ms())
            processing.extend(fb.processing_ms for fb in ch.received if fb.processing_ms is not None)
        for fb in off.received:
            truth = np.subtract(motion.transform_at(fb.time_s).translation_mm,
                                motion.transform_at(fb.reference_time_s or 0.0).translation_mm)  # fmt: skip
            all_err_t.extend((np.asarray(fb.translation_mm) - truth)[np.asarray(fb.observed[:3])].tolist())
    _plot(traces, png)
    volume = _volume_estimation(dev) if opts.get("volume", "on") != "off" else None
    rt = np.concatenate(round_trips) if round_trips else np.zeros(0)
    recovered = [r["ssim_recovered_prospective"] for r in results.values() if r["ssim_recovered_prospective"]]

    def stat(a: np.ndarray | list[float], q: float) -> float | None:
        a = np.asarray(a, dtype=np.float64)
        return float(np.percentile(a, q)) if a.size else None

    return {
        "benchmark": "motion",
        "device": dev,
        "threads": torch.get_num_threads(),
        "settings": {
            **settings.__dict__,
            "protocol": "gre2d",
            "chain": "cartesian-motion",
            "sequence_duration_s": duration_s,
            "imaging_start_s": start_s,
        },  # fmt: skip
        "trajectories": results,
        "estimation_rms_mm_all": float(np.sqrt(np.mean(np.square(all_err_t)))) if all_err_t else None,
        "latency_ms": {
            "round_trip_median": stat(rt, 50),
            "round_trip_p95": stat(rt, 95),
            "estimator_median": stat(processing, 50),
            "estimator_p95": stat(processing, 95),
            "n": int(rt.size),
            "definition": "round trip = navigator readout flushed to the socket by the scanner -> its "
            "feedback decoded by the scanner (upper bound of server arrival -> feedback leaving); "
            "estimator = gadget's time from the navigator's arrival to sending its feedback",
        },
        "ssim_recovered_prospective_mean": float(np.mean(recovered)) if recovered else None,
        "estimation_image_volume": volume,
        "goals": {"rms_mm": 0.5, "rms_deg": 0.5, "latency_median_ms": 20.0, "ssim_recovered": 0.8},
        "traces_png": str(png),
        "out": str(out_root),
        "wall_s": time.perf_counter() - t_start,
        "note": "the in-plane navigators (navigator_type projection, orbital) do not observe through-plane "
        "motion (tz, rx, ry), nor the projection pair rz (reported in 'unobserved'); orbital3 observes "
        "all six; rms_deg is null when no rotation is estimated",
    }
