"""The virtual scanner at work: build a protocol, Bloch-simulate it live, stream it to a server.

Used by ``unisono scan``. The acquisitions leave the simulator as a generator
and go straight onto the MRD connection, so the server reconstructs while the
"scanner" is still scanning, as at a real console.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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
    feedback: bool = False  # apply the server's motion feedback prospectively
    #: phantom slices added on each side of the protocol's (tissue a nod moves in from)
    extra_slices: int = 0


#: default dead band of prospective updates (see ScannerFeedback)
DEAD_BAND_MM, DEAD_BAND_DEG = 0.2, 0.4


class ScannerFeedback:
    """The virtual scanner's end of the feedback channel.

    :meth:`on_item` runs in the MRD client's receiver thread for every item the server
    sends; :meth:`poll` is the simulator's ``feedback`` callable (once per block, in the
    scanning thread); :meth:`tag` wraps the acquisition stream, recording in each readout
    the pose it was acquired under and when it left for the server.

    Attributes:
        apply: hand decoded poses to the scanner (feedback on) or only count them (off).
        received: every decoded :class:`gadgets.feedback.MotionFeedback`, in arrival order.
        arrival_s: ``time.perf_counter()`` at each arrival (same order).
        sent_s: scan_counter -> ``perf_counter()`` when that readout was handed to the MRD client.
        errors: texts that claimed to be feedback but failed validation.
        update_at: per block, whether a new pose may take effect there (see :func:`excitation_blocks`).
        min_change_mm, min_change_deg: dead band: a received pose is applied only when it differs
            from the running one by more than this (PMC sequences use such thresholds: every update
            re-phases RF and receiver and disturbs what spoiling leaves coherent). The default,
            0.2 mm / 0.4 deg, is about three times the orbital navigator's noise (0.07 mm,
            0.13 deg RMS); 0.5 mm let a slow drift run uncorrected for seconds, and 0.2 deg let
            rotation noise through (``unisono bench motion``, drift recovered: 71 % with
            0.5 mm, 78 % with 0.2 deg, 88 % with 0.2 mm / 0.4 deg).
        persist: a pose inside the dead band is applied all the same when this many estimates
            in a row (0 = never) put one component more than half the band to the same side of
            the running pose: a wrong update made during a sudden move (a 0.44 deg turn read
            while the head stepped 3 mm) would otherwise stay for the rest of the scan, while
            noise and the alternating read-out after a frame turn change sides.
        sync_timeout_s: lockstep mode (reproducible runs): after a navigator, the next excitation
            waits at most this long (wall clock) for its estimate; None = apply whatever has arrived.
    """

    def __init__(
        self,
        apply: bool,
        update_at: list[bool] | None = None,
        min_change_mm: float = DEAD_BAND_MM,
        min_change_deg: float = DEAD_BAND_DEG,
        sync_timeout_s: float | None = None,
        persist: int = 0,
    ) -> None:
        if min_change_mm < 0 or min_change_deg < 0:
            raise ValueError("feedback dead band (min_change_mm, min_change_deg) must be >= 0")
        if not isinstance(persist, int) or persist < 0:
            raise ValueError(f"feedback dead band 'persist' must be an integer >= 0, got {persist!r}")
        if sync_timeout_s is not None and not sync_timeout_s > 0:
            raise ValueError(f"sync_timeout_s must be > 0 s or None, got {sync_timeout_s!r}")
        self.apply = apply
        #: per block (in playing order): may a new pose take effect there? None = every block
        self.update_at = update_at
        self.min_change_mm = min_change_mm
        self.min_change_deg = min_change_deg
        self.sync_timeout_s = sync_timeout_s
        self.persist = persist
        self._block = 0
        self.received: list[Any] = []
        self.arrival_s: list[float] = []
        self.sent_s: dict[int, float] = {}
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._latest: Any = None  # newest MotionFeedback received
        self._applied: Any = None  # the MotionFeedback the scanner is running with
        self._awaiting: int | None = None  # scan_counter of a navigator whose estimate is due

    def on_item(self, item: Any) -> None:
        """Decode feedback texts; anything else (images, logs) is not the scanner's business."""
        from gadgets.feedback import FeedbackError, decode, is_feedback

        if not is_feedback(item):
            return
        t = time.perf_counter()
        try:
            fb = decode(item)
        except FeedbackError as exc:
            self.errors.append(str(exc))
            log.warning("ignored a malformed feedback message: %s", exc)
            return
        with self._cond:
            self.received.append(fb)
            self.arrival_s.append(t)
            if self._latest is None or fb.seq > self._latest.seq:
                self._latest = fb
            self._cond.notify_all()

    def _wait_for_estimate(self) -> None:
        """Lockstep mode: wait (bounded) for the estimate of the navigator just sent.

        A real-time scanner gets it within the TR that follows the navigator; a simulator that
        runs at its own pace would apply it one or more TRs late, at random. Only once feedback
        flows (a first message came), so reference navigators cost no waiting.
        """
        if self.sync_timeout_s is None or self._awaiting is None or not self.received:
            return
        target, self._awaiting = self._awaiting, None
        with self._cond:
            self._cond.wait_for(
                lambda: self._latest is not None and self._latest.scan_counter >= target, self.sync_timeout_s
            )

    def _change(self, fb: Any) -> np.ndarray:
        """(6,) change of ``fb`` from the running pose: (tx, ty, tz) mm, (rx, ry, rz) deg."""
        cur = self._applied
        now = np.zeros(6) if cur is None else np.r_[cur.translation_mm, cur.rotation_deg]
        return np.r_[fb.translation_mm, fb.rotation_deg] - now

    def _worth_applying(self, fb: Any) -> bool:
        """Dead band: a pose within it of the running one is not applied (each update re-phases),
        unless the last ``persist`` estimates all lie beyond half the band on one side of the
        running pose in one component: an offset that lasts is the head's, not noise."""
        band = np.repeat([self.min_change_mm, self.min_change_deg], 3)
        if np.any(np.abs(self._change(fb)) > band):
            return True
        if self.persist < 1:
            return False
        since = -1 if self._applied is None else self._applied.seq
        newer = [f for f in self.received[-self.persist :] if f.seq > since]
        if len(newer) < self.persist:
            return False
        changes = np.array([self._change(f) for f in newer])
        return bool(np.any(np.all(changes > band / 2, axis=0) | np.all(changes < -band / 2, axis=0)))

    def poll(self):
        """The pose for the next block (``simulator.motion.RigidTransform``), or None before any feedback."""
        from simulator.motion import RigidTransform

        j = self._block
        self._block += 1
        # a scanner switches pose before an excitation, never between an excitation and its
        # readout: that would give one echo the RF phase of one pose and the receiver's of another
        if self.apply and (self.update_at is None or (j < len(self.update_at) and self.update_at[j])):
            self._wait_for_estimate()
            with self._cond:
                latest = self._latest
            if latest is not None and latest is not self._applied and self._worth_applying(latest):
                self._applied = latest
        if self._applied is None:
            return None
        return RigidTransform(self._applied.translation_mm, self._applied.rotation_deg)

    def tag(self, acquisitions: Iterable[Any]) -> Iterator[Any]:
        """Pass ``acquisitions`` on, each tagged with the pose it was acquired under."""
        import ismrmrd

        from gadgets.feedback import tag_applied_pose

        for acq in acquisitions:
            fb = self._applied  # set by poll() at the start of the block this readout belongs to
            if fb is None:
                tag_applied_pose(acq, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0)
            else:
                tag_applied_pose(acq, fb.translation_mm, fb.rotation_deg, fb.seq + 1)
            if acq.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA):
                self._awaiting = int(acq.scan_counter)
            # stamped as it is handed to the client (before serialization and flush), so the
            # round trip is an upper bound and never misses a fast reply
            self.sent_s[int(acq.scan_counter)] = time.perf_counter()
            yield acq

    def round_trip_ms(self) -> np.ndarray:
        """Per feedback: readout handed to the MRD client -> feedback decoded at the client (ms).

        An upper bound of the server-side latency (navigator arriving -> feedback leaving):
        it adds the loopback transfer both ways and the client's decode.
        """
        out = [
            (t - self.sent_s[fb.scan_counter]) * 1e3
            for fb, t in zip(self.received, self.arrival_s, strict=True)
            if fb.scan_counter in self.sent_s
        ]
        return np.asarray(out, dtype=np.float64)


def excitation_blocks(seq) -> list[bool]:
    """Per block of a pypulseq sequence (playing order): True where it holds an RF pulse."""
    return [int(ids[1]) != 0 for ids in seq.block_events.values()]


def parse_server(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with one clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--server must be HOST:PORT with a port in 1..65535, got {address!r}")
    return host, int(port)


def make_phantom(kind: str, built, site, subject: int, extra_slices: int = 0):
    """The phantom named on the command line, on the protocol's grid and at the site's field.

    extra_slices: phantom slices added on each side of the protocol's slices, so that tissue
    moving through the slice plane (a nod) is replaced by tissue, not by nothing.
    """
    from simulator.phantom_spec import phantom_from_spec, stack_placement

    matrix = int(built.params.get("matrix", 128))
    gap, z_offset = stack_placement(built.seq)
    geometry = dict(
        fov_m=float(built.params["fov"]),
        matrix=matrix,
        slice_thickness_m=float(built.params.get("slice_thickness", 0.005)),
        n_slices=int(built.params.get("n_slices", 1)) + 2 * extra_slices,
        slice_gap_m=gap,
    )
    phantom = phantom_from_spec(kind, field_T=site.field_T, subject=subject, **geometry)
    if not kind.endswith((".h5", ".hdf5")):  # a user's phantom keeps its own geometry
        phantom.offset_m = (0.0, 0.0, z_offset)
    return phantom


def run_scan(
    request: ScanRequest,
    print_fn: Callable[[str], None] = print,
    motion_trajectory: Any = None,
    feedback_channel: ScannerFeedback | None = None,
) -> dict:
    """Build, simulate while streaming, collect the images; returns (and writes) ``scan.json``.

    Args:
        request: what to scan.
        print_fn: progress lines.
        motion_trajectory: a :class:`simulator.motion.MotionTrajectory` used instead of
            ``request.motion`` (library callers such as the motion benchmark).
        feedback_channel: the :class:`ScannerFeedback` to use (a fresh one when None), so a
            caller can read every feedback message and its timing afterwards.
    """
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
    phantom = make_phantom(request.phantom, built, site, request.subject, request.extra_slices)
    duration_s = float(built.seq.duration()[0])
    motion = parse_motion(request.motion, duration_s) if request.motion else None
    if motion_trajectory is not None:
        motion = motion_trajectory
    print_fn(
        f"scanning {request.protocol} ({duration_s:.1f} s of sequence) on {site.name} "
        f"({site.field_T:g} T, {site.n_coils} coils){' in real time' if request.realtime else ''}"
    )

    stats: dict = {}
    fb_channel = feedback_channel or ScannerFeedback(apply=request.feedback)
    fb_channel.apply = request.feedback
    fb_channel.update_at = excitation_blocks(built.seq)
    acquisitions = simulator.simulate(
        built.seq,
        phantom,
        site,
        header=header,
        device=request.device,
        isochromats_per_voxel=request.isochromats_per_voxel,
        seed=request.seed,
        motion=motion,
        feedback=fb_channel.poll if request.feedback else None,
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
        received = gadgets.send_stream(
            header,
            fb_channel.tag(acquisitions),
            host=host,
            port=port,
            chain=request.chain,
            on_item=fb_channel.on_item,
            flush_each=True,  # each readout reaches the server now: the feedback loop is live
        )
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
        "feedback": _feedback_report(fb_channel),
    }
    (out / "scan.json").write_text(json.dumps(report, indent=2))
    print_fn(f"{len(images)} images in {wall:.1f} s -> {image_file}")
    return report


def _feedback_report(channel: ScannerFeedback) -> dict:
    """What the feedback channel saw: counts, last pose, client-side round trip (ms)."""
    rt = channel.round_trip_ms()
    last = channel.received[-1] if channel.received else None
    return {
        "applied": channel.apply,
        "messages": len(channel.received),
        "malformed": len(channel.errors),
        "last_translation_mm": list(last.translation_mm) if last else None,
        "last_rotation_deg": list(last.rotation_deg) if last else None,
        "round_trip_ms_median": float(np.median(rt)) if rt.size else None,
        "round_trip_ms_p95": float(np.percentile(rt, 95)) if rt.size else None,
    }
