"""Measurements on a built or read Pulseq sequence: k-space per ADC, TE, TR, gradient use, PNS.

These work on any :class:`pypulseq.Sequence` (also files written by other
tools); tests use them to check builders against the protocol, and
``unisono sequence info`` to summarise files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pypulseq as pp


@dataclass(frozen=True)
class AdcEvent:
    """One ADC in a sequence: start time of its first sample interval and sampling."""

    block: int
    t_block: float  # s, block start
    delay: float  # s, ADC delay within the block
    dwell: float  # s
    n_samples: int
    labels: dict[str, int]

    def sample_times(self) -> np.ndarray:
        """Absolute sample times [s]; pypulseq samples at the middle of each dwell interval."""
        return self.t_block + self.delay + (np.arange(self.n_samples) + 0.5) * self.dwell

    @property
    def is_noise(self) -> bool:
        return bool(self.labels.get("NOISE", 0))


def adc_events(seq: pp.Sequence) -> list[AdcEvent]:
    """Every ADC in block order with the label values in force at it."""
    out: list[AdcEvent] = []
    t = 0.0
    state: dict[str, int] = {}
    for block_id in seq.block_events:
        block = seq.get_block(block_id)
        if block.label is not None:
            for lab in block.label.values():
                if lab.type == "labelinc":
                    state[lab.label] = state.get(lab.label, 0) + lab.value
                else:
                    state[lab.label] = lab.value
        if block.adc is not None:
            a = block.adc
            out.append(AdcEvent(block_id, t, float(a.delay), float(a.dwell), int(a.num_samples), dict(state)))
        t += seq.block_durations[block_id]
    return out


def kspace_per_adc(seq: pp.Sequence) -> tuple[list[np.ndarray], list[bool]]:
    """k-space positions [1/m] of every ADC sample, one (n_samples, 3) array per ADC, and noise flags."""
    k_adc, _, _, _, _ = seq.calculate_kspace()
    events = adc_events(seq)
    out: list[np.ndarray] = []
    start = 0
    for ev in events:
        out.append(np.asarray(k_adc[:, start : start + ev.n_samples]).T)
        start += ev.n_samples
    return out, [ev.is_noise for ev in events]


@dataclass(frozen=True)
class RfEvent:
    """One RF pulse: absolute centre time [s], nominal flip [rad], use and frequency offset [Hz]."""

    block: int
    t_center: float
    flip: float
    use: str
    freq_offset: float = 0.0


def rf_events(seq: pp.Sequence) -> list[RfEvent]:
    """Every RF pulse, with its flip angle integrated from the waveform (|sum B1 dt| * 2 pi)."""
    out: list[RfEvent] = []
    t = 0.0
    for block_id in seq.block_events:
        block = seq.get_block(block_id)
        if block.rf is not None:
            rf = block.rf
            center, _ = pp.calc_rf_center(rf)
            tt = np.asarray(rf.t)
            dt = np.diff(np.concatenate([[0.0], tt])) if len(tt) > 1 else np.array([rf.shape_dur])
            flip = float(abs(np.sum(np.asarray(rf.signal) * dt)) * 2 * np.pi)
            use = getattr(rf, "use", "undefined")
            out.append(RfEvent(block_id, t + rf.delay + center, flip, use, float(rf.freq_offset)))
        t += seq.block_durations[block_id]
    return out


def excitations(seq: pp.Sequence) -> list[RfEvent]:
    """Excitation pulses: ``use == 'excitation'``, or (files without use) pulses below 120 degrees."""
    rfs = rf_events(seq)
    marked = [r for r in rfs if r.use == "excitation"]
    if marked:
        return marked
    return [r for r in rfs if r.use in ("undefined", "", "other") and r.flip < np.radians(120)]


def measure_tr(seq: pp.Sequence) -> float:
    """Median time [s] between consecutive excitations of the same slice (NaN with fewer than two).

    Excitations are grouped by RF frequency offset (one per slice), so that
    interleaved multi-slice sequences report their TR, not the slice spacing.
    Navigator excitations (a different, smaller flip) are left out.
    """
    exc = excitations(seq)
    if len(exc) < 2:
        return float("nan")
    main_flip = float(np.median([r.flip for r in exc]))
    diffs: list[float] = []
    groups: dict[float, list[float]] = {}
    for r in exc:
        if abs(r.flip - main_flip) <= 1e-3 * max(main_flip, 1e-6):
            groups.setdefault(round(r.freq_offset, 1), []).append(r.t_center)
    for times in groups.values():
        diffs.extend(np.diff(times))
    return float(np.median(diffs)) if diffs else float("nan")


def measure_ti(seq: pp.Sequence) -> float:
    """Median time [s] from an inversion pulse centre to the next excitation centre (NaN if none)."""
    rfs = rf_events(seq)
    out = []
    last_inv = None
    for r in rfs:
        if r.use == "inversion":
            last_inv = r.t_center
        elif r.use == "excitation" and last_inv is not None:
            out.append(r.t_center - last_inv)
            last_inv = None
    return float(np.median(out)) if out else float("nan")


def measure_te(seq: pp.Sequence, kspace: list[np.ndarray] | None = None) -> float:
    """Time [s] from the excitation centre to the imaging sample nearest k = 0 (NaN if none)."""
    events = adc_events(seq)
    if kspace is None:
        kspace, _ = kspace_per_adc(seq)
    best = (np.inf, None, 0)
    for ev, k in zip(events, kspace, strict=True):
        if ev.is_noise or ev.labels.get("NAV", 0) or ev.labels.get("REF", 0) or len(k) == 0:
            continue
        r = np.linalg.norm(k, axis=1)
        i = int(np.argmin(r))
        if r[i] < best[0] - 1e-9:
            best = (r[i], ev, i)
    if best[1] is None:
        return float("nan")
    t_echo = best[1].sample_times()[best[2]]
    before = [r.t_center for r in excitations(seq) if r.t_center < t_echo]
    return float(t_echo - before[-1]) if before else float("nan")


#: Pulseq definitions that carry the rasters a file was written for -> pypulseq Opts attribute
_RASTER_DEFINITIONS = {
    "GradientRasterTime": "grad_raster_time",
    "RadiofrequencyRasterTime": "rf_raster_time",
    "AdcRasterTime": "adc_raster_time",
    "BlockDurationRaster": "block_duration_raster",
}


def read_sequence(path: str, system: pp.Opts | None = None) -> pp.Sequence:
    """Read a ``.seq`` file with the rasters (and B0) its definitions declare.

    pypulseq's reader keeps its default 10 us rasters, so a file written for a
    4 us gradient raster would fail ``check_timing`` after reading; this puts
    the declared rasters back. ``system`` (optional) supplies dead times and
    limits, which files do not carry.
    """
    seq = pp.Sequence(system=copy.deepcopy(system) if system is not None else pp.Opts())
    seq.read(str(path))
    for key, attr in _RASTER_DEFINITIONS.items():
        if key in seq.definitions:
            value = float(np.atleast_1d(seq.definitions[key])[0])
            setattr(seq.system, attr, value)  # check_timing reads these
            setattr(seq, attr, value)  # waveform/k-space code reads these
    if "B0" in seq.definitions:
        seq.system.B0 = float(np.atleast_1d(seq.definitions["B0"])[0])
    return seq


def gradient_usage(seq: pp.Sequence, system=None) -> dict:
    """Peak gradient [mT/m] and slew [T/m/s] over all axes, and their share of ``system``'s limits.

    Per-axis peaks, as scanners limit each axis; trapezoid ramps and
    arbitrary waveforms both count.
    """
    gamma = system.gamma if system is not None else seq.system.gamma
    g_max, s_max = 0.0, 0.0
    for block_id in seq.block_events:
        block = seq.get_block(block_id)
        for ch in ("gx", "gy", "gz"):
            g = getattr(block, ch, None)
            if g is None:
                continue
            if g.type == "trap":
                a = abs(g.amplitude)
                g_max = max(g_max, a)
                for ramp in (g.rise_time, g.fall_time):
                    if ramp > 0:
                        s_max = max(s_max, a / ramp)
            else:
                w, tt = np.asarray(g.waveform, dtype=float), np.asarray(g.tt, dtype=float)
                g_max = max(g_max, float(np.max(np.abs(w))) if w.size else 0.0)
                # the slew between samples is what the coil sees
                if w.size > 1:
                    s_max = max(s_max, float(np.max(np.abs(np.diff(w) / np.diff(tt)))))
                if w.size and getattr(g, "first", None) is not None and w.size and tt[0] > 0:
                    s_max = max(s_max, abs(w[0] - g.first) / tt[0])
    out = {"max_grad_mT_per_m": g_max / gamma * 1e3, "max_slew_T_per_m_per_s": s_max / gamma}
    if system is not None:
        out.update(
            system=system.name,
            grad_use_percent=100 * g_max / system.max_grad_hz,
            slew_use_percent=100 * s_max / system.max_slew_hz,
        )
    return out


def pns_report(seq: pp.Sequence, full_up_to: float = 4.0, window: float = 1.0) -> dict:
    """Peripheral nerve stimulation by the SAFE model (pypulseq ``calculate_pns``), in % of threshold.

    The hardware model is pypulseq's SAFE example ("not a real scanner"): no
    vendor publishes its coil model openly, so the figure compares sequences
    with each other rather than certifying them for a product.

    Sequences up to ``full_up_to`` s are evaluated whole. Longer ones are
    evaluated over ``window``-second windows (the SAFE filters forget within a
    few ms, so a window that contains the steepest ramp and the densest
    gradient activity gives the peak): one centred on the steepest gradient
    ramp and three at 25/50/75 % of the sequence; ``windows_s`` says which.
    """
    import warnings

    from pypulseq.utils.safe_pns_prediction import safe_example_hw

    total = float(seq.duration()[0])
    if total <= full_up_to:
        ranges = [None]
    else:
        t_steep = _steepest_ramp_time(seq)
        centres = [t_steep, 0.25 * total, 0.5 * total, 0.75 * total]
        ranges = [[max(0.0, c - window / 2), min(total, max(0.0, c - window / 2) + window)] for c in centres]
    peak, per_axis, ok_all = 0.0, [0.0, 0.0, 0.0], True
    for time_range in ranges:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ok, pns_norm, pns_comp, _ = seq.calculate_pns(
                    safe_example_hw(), time_range=time_range, do_plots=False
                )
            except ValueError:  # pypulseq: no gradient at all inside this window
                continue
        ok_all &= bool(ok)
        if np.size(pns_norm):
            peak = max(peak, float(np.max(pns_norm)) * 100)
            comp = np.asarray(pns_comp)
            for i in range(min(3, comp.shape[1])):
                per_axis[i] = max(per_axis[i], float(np.max(comp[:, i])) * 100)
    return {
        "ok": ok_all,
        "peak_percent": peak,
        "per_axis_percent": per_axis,
        "windows_s": None if ranges == [None] else [[round(a, 4), round(b, 4)] for a, b in ranges],
        "model": "SAFE example hardware (pypulseq safe_example_hw)",
    }


def _steepest_ramp_time(seq: pp.Sequence) -> float:
    """Start time [s] of the block holding the steepest trapezoid ramp (the likely PNS peak)."""
    t, best, t_best = 0.0, -1.0, 0.0
    for block_id in seq.block_events:
        block = seq.get_block(block_id)
        for ch in ("gx", "gy", "gz"):
            g = getattr(block, ch, None)
            if g is not None and g.type == "trap":
                ramp = (
                    min(x for x in (g.rise_time, g.fall_time) if x > 0) if g.rise_time or g.fall_time else 0
                )
                slew = abs(g.amplitude) / ramp if ramp else 0.0
                if slew > best:
                    best, t_best = slew, t
        t += seq.block_durations[block_id]
    return t_best


def _definitions_for_json(seq: pp.Sequence) -> dict:
    out = {}
    for key, value in seq.definitions.items():
        if isinstance(value, np.ndarray):
            out[key] = [float(v) for v in value.ravel()]
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def _range(v: np.ndarray) -> list[float]:
    return [round(float(np.min(v)), 3), round(float(np.max(v)), 3)] if v.size else [0.0, 0.0]


def kspace_coverage(k_img: np.ndarray, fov: list[float] | None) -> dict:
    """Coverage of imaging samples ``k_img`` (n, 3) [1/m].

    Reports distinct ky/kz positions, the smallest ky step (1/step is the
    phase FOV), the resolution implied by the extent (1/(2 k_max)) and the
    fraction of the Cartesian grid inside the sampled extent (cell 1/FOV,
    from ``fov`` when given, else from the smallest steps) that holds a sample.
    """
    if k_img.size == 0:
        return {}

    tol = max(1e-3, 1e-3 * float(np.max(np.abs(k_img))))  # float noise, not a k-space step

    def distinct(v):
        """Cluster centres of sorted values, a new cluster where the gap exceeds ``tol``."""
        v = np.sort(v)
        starts = np.concatenate([[0], np.nonzero(np.diff(v) > tol)[0] + 1])
        return np.array([v[a:b].mean() for a, b in zip(starts, [*starts[1:], len(v)], strict=True)])

    ky, kz = distinct(k_img[:, 1]), distinct(k_img[:, 2])
    dky = float(np.min(np.diff(ky))) if ky.size > 1 else 0.0
    kmax = np.max(np.abs(k_img), axis=0)
    used = kmax > max(1e-3, 1e-2 * float(np.max(kmax)))  # axes that are encoded, not float noise
    res = [float(1 / (2 * m)) if u else None for m, u in zip(kmax, used, strict=True)]
    cell = []
    for axis in range(3):
        f = fov[axis] if fov and len(fov) > axis and fov[axis] > 0 else None
        cell.append(1.0 / f if f else None)
    fill = None
    dims = [a for a in range(3) if cell[a] and used[a]]
    if dims:
        idx = np.round(k_img[:, dims] / np.array([cell[a] for a in dims])).astype(np.int64)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        n_cells = int(np.prod(hi - lo + 1))
        if n_cells < 50_000_000:
            hit = np.unique(idx - lo, axis=0).shape[0]
            fill = round(hit / n_cells, 4)
    return {
        "distinct_ky": int(ky.size),
        "distinct_kz": int(kz.size),
        "min_ky_step_per_m": round(dky, 4),
        "fov_from_ky_step_m": round(1 / dky, 5) if dky > 0 else None,
        "resolution_m": [round(r, 6) if r else None for r in res],
        "grid_fill_fraction": fill,
    }


def summarize(seq: pp.Sequence, system=None, pns: bool = True) -> dict:
    """Everything ``unisono sequence info`` reports, as a JSON-ready dict.

    Definitions, duration, RF/ADC counts, TE/TR defined vs measured [ms],
    k-space extent and coverage, labels used, timing check, gradient/slew
    use (against ``system`` when given) and PNS (optional: it is the slow part).
    """
    events = adc_events(seq)
    k_adc, noise = kspace_per_adc(seq) if events else ([], [])
    img = [
        k for k, nz, ev in zip(k_adc, noise, events, strict=True) if not nz and not ev.labels.get("NAV", 0)
    ]
    k_img = np.concatenate(img) if img else np.zeros((0, 3))
    rfs = rf_events(seq)
    ok, errors = seq.check_timing()
    defs = _definitions_for_json(seq)
    fov = defs.get("FOV")
    fov = [float(f) for f in (fov if isinstance(fov, list) else [fov])] if fov is not None else None

    def defined_ms(key):
        v = defs.get(key)
        if v is None:
            return None
        v = v if isinstance(v, list) else [v]
        return [round(float(x) * 1e3, 4) for x in v]

    te = measure_te(seq, k_adc) if events else float("nan")
    tr = measure_tr(seq)
    used_labels = sorted(
        {name for ev in events for name, val in ev.labels.items() if val or name in ev.labels}
    )
    report = {
        "definitions": defs,
        "duration_s": float(seq.duration()[0]),
        "n_blocks": len(seq.block_events),
        "n_rf": len(rfs),
        "n_excitations": len(excitations(seq)),
        "n_adc": len(events),
        "n_noise_adc": int(sum(noise)),
        "n_samples": int(sum(ev.n_samples for ev in events)),
        "TE_ms": {"defined": defined_ms("TE"), "measured": None if np.isnan(te) else round(te * 1e3, 4)},
        "TR_ms": {"defined": defined_ms("TR"), "measured": None if np.isnan(tr) else round(tr * 1e3, 4)},
        "kspace": {
            "kx_range": _range(k_img[:, 0]),
            "ky_range": _range(k_img[:, 1]),
            "kz_range": _range(k_img[:, 2]),
            "coverage": kspace_coverage(k_img, fov),
        },
        "labels": used_labels,
        "timing": {
            "ok": bool(ok),
            "n_errors": len(errors),
            "first_errors": [f"block {int(e.block)}: {e.event}.{e.field} {e.error_type}" for e in errors[:5]],
        },
        "gradients": gradient_usage(seq, system),
    }
    if pns:
        report["pns"] = pns_report(seq)
    return report
