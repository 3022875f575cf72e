"""Turn Pulseq blocks into the simulator's timeline: free intervals, RF pulses and ADC windows.

Gradients in Pulseq are piecewise linear (trapezoids, extended trapezoids and arbitrary shapes
sampled at the gradient raster and interpolated linearly), so their integral is exact in closed
form between any two instants. A block becomes an ordered list of events:

* :class:`Free`: a duration and its gradient moment (cycles/m); precession over it is exact.
* :class:`Pulse`: an RF pulse as hard-pulse steps at the RF raster with the gradient at each step.
* :class:`Readout`: ADC sample times and the moment from the window start to each sample.

Site gradient delays shift each axis's waveform later in time inside its block.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

#: Pulseq label names that are counters (SET/INC) and flags (SET to 0/1)
COUNTERS = ("SLC", "SEG", "REP", "AVG", "SET", "ECO", "PHS", "LIN", "PAR", "ACQ", "TRID")
FLAGS = ("NAV", "REV", "SMS", "REF", "IMA", "NOISE", "PMC", "NOROT", "NOPOS", "NOSCL", "ONCE")


#: block fields the simulator understands; triggers/outputs do not change the physics and soft
#: delays run at the duration written in the file
_KNOWN_BLOCK_FIELDS = {
    "block_duration",
    "rf",
    "gx",
    "gy",
    "gz",
    "adc",
    "label",
    "trig",
    "trigger",
    "output",
    "soft_delay",
}


class SequenceError(ValueError):
    """A Pulseq feature the simulator cannot run; the message names the block and the feature."""


@dataclass
class Free:
    """Free precession: ``duration`` (s) with gradient moment ``moment`` (3,) in cycles/m."""

    duration: float
    moment: np.ndarray


@dataclass
class Pulse:
    """An RF pulse as S hard-pulse steps.

    Attributes:
        amplitude: (S,) complex B1 in Hz (gamma-bar B1) per step, before phase offset and B1 map.
        dt: (S,) step durations (s).
        grad: (S, 3) gradient (Hz/m) at each step's midpoint, or (1, 3) when constant.
        freq_hz: RF frequency offset (Hz), phase referenced at the pulse start.
        phase_rad: RF phase offset (rad).
        duration: total duration (s).
        centre: time of the pulse centre from its start (s).
        use: Pulseq 'use' (excitation, refocusing, inversion, ...).
        key: hashable identity of everything but the phase offset (for the rotation cache).
    """

    amplitude: np.ndarray
    dt: np.ndarray
    grad: np.ndarray
    freq_hz: float
    phase_rad: float
    duration: float
    centre: float
    use: str
    key: tuple


@dataclass
class Readout:
    """ADC samples: ``tau`` (K,) s and ``kmom`` (3, K) cycles/m from the window start.

    The state advance over the whole window is a separate :class:`Free` event that follows.
    """

    tau: np.ndarray
    kmom: np.ndarray
    dwell: float
    freq_hz: float
    phase_rad: float
    phase_modulation: np.ndarray | None
    block: int
    labels: dict[str, int]
    grad_dir: np.ndarray
    time_in_block: float
    linear: bool


@dataclass
class BlockInfo:
    """What the scanner loop needs from a block besides its events."""

    index: int
    duration: float
    events: list = field(default_factory=list)


class _PWL:
    """One gradient axis as a piecewise-linear function on [0, duration] (Hz/m)."""

    def __init__(self, t: np.ndarray, g: np.ndarray, shift: float, duration: float):
        self.t = np.asarray(t, dtype=np.float64)
        self.g = np.asarray(g, dtype=np.float64)
        self.shift = shift
        self.duration = duration
        seg = np.diff(self.t) * 0.5 * (self.g[1:] + self.g[:-1])
        self.cum = np.concatenate([[0.0], np.cumsum(seg)])

    def _local(self, t: np.ndarray) -> np.ndarray:
        # the delayed waveform keeps its shape; what a delay pushes past the block end is lost
        return np.minimum(np.maximum(np.asarray(t, dtype=np.float64) - self.shift, 0.0), self.duration)

    def value(self, t: np.ndarray) -> np.ndarray:
        if self.t.size == 0:
            return np.zeros_like(np.asarray(t, dtype=np.float64))
        return np.interp(self._local(t), self.t, self.g, left=0.0, right=0.0)

    def integral(self, t: np.ndarray) -> np.ndarray:
        """Integral from 0 to t (cycles/m), exact for the piecewise-linear waveform."""
        tl = self._local(t)
        if self.t.size < 2:
            return np.zeros_like(tl)
        i = np.minimum(np.maximum(np.searchsorted(self.t, tl, side="right") - 1, 0), self.t.size - 2)
        t0 = self.t[i]
        g0 = self.g[i]
        span = self.t[i + 1] - t0
        safe = np.where(span > 0, span, 1.0)
        slope = np.where(span > 0, (self.g[i + 1] - g0) / safe, 0.0)
        dt = np.minimum(np.maximum(tl - t0, 0.0), span)
        inside = self.cum[i] + g0 * dt + 0.5 * slope * dt * dt
        return np.where(tl <= self.t[0], 0.0, np.where(tl >= self.t[-1], self.cum[-1], inside))


class Gradients:
    """The three gradient axes of one block (logical axes, before any rotation)."""

    def __init__(self, block: SimpleNamespace, index: int, grad_delay_s: tuple[float, float, float]):
        duration = float(block.block_duration)
        self.axes = []
        for axis, delay in zip(("gx", "gy", "gz"), grad_delay_s, strict=True):
            t, g = _grad_pwl(getattr(block, axis, None), index, axis)
            self.axes.append(_PWL(t, g, delay, duration))
        self.total = self.integral(np.array([duration]))[:, 0]

    def integral(self, times: np.ndarray) -> np.ndarray:
        """Moments (3, T) from the block start to ``times`` (T,) s."""
        return np.stack([a.integral(times) for a in self.axes])

    def value(self, times: np.ndarray) -> np.ndarray:
        """Gradient (T, 3) in Hz/m at ``times``."""
        return np.stack([a.value(times) for a in self.axes], axis=1)


def _grad_pwl(grad: SimpleNamespace | None, block: int, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertex times (s from block start) and amplitudes (Hz/m) of one gradient event."""
    if grad is None:
        return np.zeros(0), np.zeros(0)
    if grad.type == "trap":
        d, r, f, fa = float(grad.delay), float(grad.rise_time), float(grad.flat_time), float(grad.fall_time)
        a = float(grad.amplitude)
        return np.array([d, d + r, d + r + f, d + r + f + fa]), np.array([0.0, a, a, 0.0])
    if grad.type == "grad":
        tt = np.asarray(grad.tt, dtype=np.float64)
        wf = np.asarray(grad.waveform, dtype=np.float64)
        if tt.size != wf.size or tt.size == 0:
            raise SequenceError(f"block {block}: gradient {axis} has {wf.size} samples but {tt.size} times")
        dur = float(getattr(grad, "shape_dur", tt[-1]))
        first = float(getattr(grad, "first", wf[0]))
        last = float(getattr(grad, "last", wf[-1]))
        t = tt
        g = wf
        if tt[0] > 1e-12:
            t = np.concatenate([[0.0], t])
            g = np.concatenate([[first], g])
        if dur - t[-1] > 1e-12:
            t = np.concatenate([t, [dur]])
            g = np.concatenate([g, [last]])
        return t + float(grad.delay), g
    raise SequenceError(f"block {block}: gradient {axis} of type '{grad.type}' is not supported")


def _rf_steps(rf: SimpleNamespace, raster: float, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RF as hard-pulse steps: (amplitude (S,) complex Hz, step edges (S+1,) s from pulse start).

    Shapes sampled at the centres of equal intervals are piecewise constant and used as they
    are; shapes given at other times (e.g. block pulses as two corner points) are linear between
    their points and are resampled at the RF raster.
    """
    sig = np.asarray(rf.signal, dtype=np.complex128)
    t = np.asarray(rf.t, dtype=np.float64)
    dur = float(rf.shape_dur)
    if sig.size == 0 or sig.size != t.size:
        raise SequenceError(f"block {block}: RF shape has {sig.size} samples and {t.size} times")
    if dur <= 0:
        raise SequenceError(f"block {block}: RF shape duration {dur} s must be > 0")
    dts = np.diff(t)
    step = dts[0] if sig.size > 1 else dur
    uniform = sig.size == 1 or np.allclose(dts, step, rtol=1e-6, atol=1e-12)
    if uniform and abs(t[0] - step / 2) < 1e-9 and abs(sig.size * step - dur) <= step + 1e-9:
        # samples at the centres of equal intervals (the Pulseq default, at the RF raster or at a
        # coarser dwell): piecewise constant, used as they are. (pypulseq may report shape_dur
        # as the last sample time rather than the end of the last interval: within one step.)
        edges = np.arange(sig.size + 1) * step
        return sig, edges, t
    n = max(1, int(round(dur / raster)))
    edges = np.linspace(0.0, dur, n + 1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    if sig.size == 1:
        amp = np.full(n, sig[0])
    else:
        amp = np.interp(mid, t, sig.real) + 1j * np.interp(mid, t, sig.imag)
    return amp, edges, mid


def compile_block(
    block: SimpleNamespace,
    index: int,
    labels: dict[str, int],
    rf_raster: float,
    grad_delay_s: tuple[float, float, float],
    larmor_hz: float,
    rotation: np.ndarray | None = None,
    grad_cache: dict | None = None,
    grad_key: tuple | None = None,
) -> BlockInfo:
    """Events of one block in time order; ``labels`` is the label state valid for its ADC.

    ``rotation`` (3, 3) maps the sequence's logical gradient axes to the scanner's (prospective
    motion correction); gradients are linear, so moments and waveforms rotate exactly.
    ``grad_cache``/``grad_key`` reuse the parsed gradients of blocks with the same gradient events.
    """
    for name, value in vars(block).items():
        if value is not None and name not in _KNOWN_BLOCK_FIELDS:
            raise SequenceError(f"block {index}: '{name}' events are not supported by the simulator")
    duration = float(block.block_duration)
    info = BlockInfo(index=index, duration=duration)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    grads = None if grad_cache is None or grad_key is None else grad_cache.get(grad_key)
    if grads is None:
        grads = Gradients(block, index, grad_delay_s)
        if grad_cache is not None and grad_key is not None:
            grad_cache[grad_key] = grads
    rf = getattr(block, "rf", None)
    adc = getattr(block, "adc", None)
    if rf is None and adc is None:
        # the common case (spoilers, phase encodes, delays): one exact free-precession step
        info.events.append(Free(duration, rot @ grads.total))
        return info

    edge_moments: dict[float, np.ndarray] = {}

    def moment(t0: float, t1: float) -> np.ndarray:
        return rot @ (edge_moments[t1] - edge_moments[t0])

    windows: list[tuple[float, float, str]] = []
    pulse = None
    readout = None
    if rf is not None:
        if float(getattr(rf, "phase_ppm", 0.0) or 0.0) != 0.0:
            raise SequenceError(f"block {index}: RF phase_ppm is not supported")
        amp, edges, _ = _rf_steps(rf, rf_raster, index)
        start = float(rf.delay)
        mids = start + 0.5 * (edges[1:] + edges[:-1])
        grad = grads.value(mids) @ rot.T
        if np.ptp(grad, axis=0).max() <= 1e-9 * (1.0 + np.abs(grad).max()):
            grad = grad[:1]
        freq = float(rf.freq_offset) + float(getattr(rf, "freq_ppm", 0.0) or 0.0) * 1e-6 * larmor_hz
        dt = np.diff(edges)
        digest = hashlib.sha1(amp.tobytes() + dt.tobytes() + grad.tobytes()).hexdigest()
        pulse = Pulse(
            amplitude=amp,
            dt=dt,
            grad=grad,
            freq_hz=freq,
            phase_rad=float(rf.phase_offset),
            duration=float(edges[-1]),
            centre=float(getattr(rf, "center", edges[-1] / 2)),
            use=str(getattr(rf, "use", "undefined")),
            key=(digest, round(freq, 6)),
        )
        windows.append((start, start + pulse.duration, "rf"))
    if adc is not None:
        n = int(adc.num_samples)
        dwell = float(adc.dwell)
        if n <= 0 or dwell <= 0:
            raise SequenceError(f"block {index}: ADC with {n} samples and dwell {dwell} s is invalid")
        if float(getattr(adc, "phase_ppm", 0.0) or 0.0) != 0.0:
            raise SequenceError(f"block {index}: ADC phase_ppm is not supported")
        start = float(adc.delay)
        ts = start + (np.arange(n) + 0.5) * dwell
        m = grads.integral(np.concatenate([[start], ts]))
        kmom = rot @ (m[:, 1:] - m[:, :1])
        d2 = np.diff(kmom, n=2, axis=1) if n > 2 else np.zeros((3, 0))
        linear = bool(np.all(np.abs(d2) <= 1e-6 * (1.0 + np.abs(kmom).max())))
        gmid = rot @ grads.value(np.array([start + n * dwell / 2]))[0]
        pm = getattr(adc, "phase_modulation", None)
        pm = np.zeros(0) if pm is None else np.asarray(pm, dtype=np.float64).ravel()
        if pm.size not in (0, n):
            raise SequenceError(f"block {index}: ADC phase modulation has {pm.size} values for {n} samples")
        freq = float(adc.freq_offset) + float(getattr(adc, "freq_ppm", 0.0) or 0.0) * 1e-6 * larmor_hz
        readout = Readout(
            tau=ts - start,
            kmom=kmom,
            dwell=dwell,
            freq_hz=freq,
            phase_rad=float(adc.phase_offset),
            phase_modulation=pm if pm.size else None,
            block=index,
            labels=dict(labels),
            grad_dir=gmid,
            time_in_block=start,
            linear=linear,
        )
        windows.append((start, start + n * dwell, "adc"))
    windows.sort()
    # moments at every window edge in one vectorised evaluation per axis
    edges = sorted({0.0, duration, *(w[0] for w in windows), *(w[1] for w in windows)})
    m_edges = grads.integral(np.array(edges))
    edge_moments.update({e: m_edges[:, j] for j, e in enumerate(edges)})
    for (_, a1, _), (b0, _, _) in zip(windows, windows[1:], strict=False):
        if b0 < a1 - 1e-9:
            raise SequenceError(f"block {index}: RF and ADC overlap in time, which is not supported")
    t = 0.0
    for w0, w1, kind in windows:
        if w1 > duration + 1e-9:
            raise SequenceError(
                f"block {index}: {kind} ends at {w1:.6g} s, after the block ({duration:.6g} s)"
            )
        if w0 > t:
            info.events.append(Free(w0 - t, moment(t, w0)))
        if kind == "rf":
            info.events.append(pulse)
        else:
            info.events.append(readout)
            info.events.append(Free(w1 - w0, moment(w0, w1)))
        t = w1
    if duration > t:
        info.events.append(Free(duration - t, moment(t, duration)))
    return info


def apply_labels(block: SimpleNamespace, index: int, state: dict[str, int]) -> None:
    """Update ``state`` with the block's label events (SET / INC, in the order they appear)."""
    labels = getattr(block, "label", None)
    if not labels:
        return
    for lab in labels.values():
        name = str(lab.label)
        if name not in COUNTERS and name not in FLAGS:
            raise SequenceError(f"block {index}: label '{name}' is not supported")
        if lab.type == "labelset":
            state[name] = int(lab.value)
        elif lab.type == "labelinc":
            state[name] = state.get(name, 0) + int(lab.value)
        else:
            raise SequenceError(f"block {index}: label event type '{lab.type}' is not supported")
