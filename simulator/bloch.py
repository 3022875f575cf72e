"""The isochromat Bloch engine (torch, float32; the same code on CPU and CUDA).

Conventions: Mxy = Mx + i My; free precession turns Mxy clockwise, Mxy(t) = Mxy(0) e^{-i 2 pi f t},
so that the signal of a gradient echo is s(k) = sum rho e^{-i 2 pi k.r} and an inverse DFT gives
the image. RF follows the Bloch equation dM/dt = gamma M x B: a pulse of phase 0 tips +z towards
+y (Mxy = i after 90 deg) and a phase offset phi rotates the B1 axis by phi.

Free precession and relaxation are exact over any interval (the gradient moment is integrated
in closed form by :mod:`simulator.events`), so intervals between RF and ADC are merged and applied
as one update. RF is integrated as hard-pulse steps at the RF raster using Cayley-Klein
parameters; relaxation during a pulse is applied half before and half after the rotation
(symmetric splitting, error O(T_pulse^2 / T1,2^2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from simulator.events import Pulse, Readout

TWO_PI = 2.0 * math.pi
#: distinct RF pulses whose per-spin rotations are kept (5 complex values per spin each)
RF_CACHE_SIZE = 16


@dataclass
class SpinFields:
    """What the engine needs per spin (N,) and per isochromat (G,), on its device.

    Spins: pos (N, 3) float32 m; pos64 (N, 3) float64 m (phases of long moments need float64);
    df off-resonance (Hz) = tissue + site B0, equal for the m spins of an isochromat; b1 relative
    B1+; r1, r2 (1/s). Isochromats: g_pos64 (G, 3) float64 m; g_df, g_r2 (G,); sens_m0 (C, G)
    complex64 coil sensitivity x equilibrium magnetisation of one spin. ``m`` spins per
    isochromat (spin g*m+s belongs to isochromat g) differ only along ``spread_dir`` (unit, 3)
    by at most ``spread_m`` (m).
    """

    pos: torch.Tensor
    pos64: torch.Tensor
    df: torch.Tensor
    b1: torch.Tensor
    r1: torch.Tensor
    r2: torch.Tensor
    g_pos64: torch.Tensor
    g_df: torch.Tensor
    g_r2: torch.Tensor
    sens_m0: torch.Tensor
    m: int = 1
    spread_dir: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    spread_m: float = 0.0


class BlochEngine:
    """Magnetisation state of N isochromats and the operations of a sequence on it."""

    def __init__(self, fields: SpinFields, rf_chunk: int | None = None):
        self.f = fields
        n = fields.df.shape[0]
        dev = fields.df.device
        # RF steps evaluated together: small chunks stay in the CPU cache (measured fastest at 2
        # for 2e5 spins); on a GPU larger chunks amortise kernel launches
        if rf_chunk is None:
            rf_chunk = 2 if dev.type == "cpu" else 64
        self.mxy = torch.zeros(n, dtype=torch.complex64, device=dev)
        self.mz = torch.ones(n, dtype=torch.float32, device=dev)
        self._pending_t = 0.0  # precession and relaxation time not yet applied (s)
        self._pending_relax = 0.0  # relaxation-only time not yet applied (s), from RF splitting
        self._pending_m = np.zeros(3)
        self._rf_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._decay_cache: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rf_chunk = rf_chunk
        self.spin_steps = 0

    @property
    def n(self) -> int:
        return int(self.mz.shape[0])

    def set_fields(self, fields: SpinFields) -> None:
        """Replace spin positions/fields (motion); flushes pending precession and the RF cache."""
        self.flush()
        self.f = fields
        self._rf_cache.clear()

    # -- free precession ----------------------------------------------------------------------
    def free(self, duration: float, moment: np.ndarray) -> None:
        """Queue free precession over ``duration`` s with gradient moment ``moment`` (cycles/m)."""
        self._pending_t += duration
        self._pending_m = self._pending_m + moment

    def _decays(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(exp(-t R1), exp(-t R2)) per spin, cached: a sequence repeats the same intervals."""
        key = round(t, 12)
        hit = self._decay_cache.get(key)
        if hit is None:
            if len(self._decay_cache) > 64:
                self._decay_cache.clear()
            hit = (torch.exp(-t * self.f.r1), torch.exp(-t * self.f.r2))
            self._decay_cache[key] = hit
        return hit

    def flush(self) -> None:
        """Apply the queued free precession and relaxation exactly."""
        t = self._pending_t
        relax = t + self._pending_relax
        if relax <= 0 and not np.any(self._pending_m):
            return
        f = self.f
        e1, e2 = self._decays(relax)
        if t > 0 or np.any(self._pending_m):
            # float32 suffices here: |r.m| stays below ~1e3 cycles per interval (spoilers,
            # phase encodes), i.e. < 1e-4 cycles of rounding, and it does not accumulate in M
            m = torch.as_tensor(self._pending_m, dtype=torch.float32, device=f.pos.device)
            cycles = torch.addmv(f.df * t, f.pos, m)
            phase = TWO_PI * torch.remainder(cycles, 1.0)
            self.mxy = self.mxy * _polar(e2, -phase)
        else:
            self.mxy = self.mxy * e2
        self.mz = torch.addcmul(1.0 - e1, self.mz, e1)
        self.spin_steps += self.n
        self._pending_t = 0.0
        self._pending_relax = 0.0
        self._pending_m = np.zeros(3)

    # -- RF -----------------------------------------------------------------------------------
    def _rotation(self, pulse: Pulse) -> tuple[torch.Tensor, ...]:
        """Coefficients of ``pulse`` at phase offset 0 per spin, cached (see :meth:`rf`).

        From the Cayley-Klein parameters (alpha, beta) of the whole pulse:
        Mxy+ = c1 Mxy + c2 conj(Mxy) + c3 Mz and Mz+ = d1 Mz - Re(d2 conj(Mxy)), with
        c1 = conj(alpha)^2, c2 = -beta^2, c3 = 2 conj(alpha) beta, d1 = |alpha|^2 - |beta|^2,
        d2 = 2 alpha beta.
        """
        hit = self._rf_cache.get(pulse.key)
        if hit is not None:
            return hit
        f = self.f
        dev = f.df.device
        # off-resonance in the frame rotating at the RF frequency (Hz)
        w0 = f.df - pulse.freq_hz
        amp = torch.as_tensor(pulse.amplitude, dtype=torch.complex64, device=dev)
        dts = torch.as_tensor(pulse.dt, dtype=torch.float32, device=dev)
        grad = torch.as_tensor(pulse.grad, dtype=torch.float32, device=dev)
        const_grad = grad.shape[0] == 1
        if const_grad:
            wz_const = w0 + f.pos @ grad[0]
        alpha = torch.ones_like(self.mxy)
        beta = torch.zeros_like(self.mxy)
        b1_map = f.b1
        b1_sq = b1_map * b1_map
        amp_sq = (amp.real**2 + amp.imag**2).to(torch.float32)
        if const_grad:
            wz_sq = (wz_const * wz_const)[None, :]
        n_steps = amp.shape[0]
        for c0 in range(0, n_steps, self.rf_chunk):
            c1 = min(n_steps, c0 + self.rf_chunk)
            # per-step rotation parameters for a chunk of steps at once: (S, N). With B = (b1 a, wz)
            # and phi = -2 pi |B| dt: alpha_j = cos(phi/2) - i wz/|B| sin(phi/2),
            # beta_j = -i (b1 a)/|B| sin(phi/2)
            if const_grad:
                wz = wz_const[None, :]
                bmag2 = torch.addcmul(wz_sq, amp_sq[c0:c1, None], b1_sq[None, :])
            else:
                wz = w0[None, :] + grad[c0:c1] @ f.pos.T
                bmag2 = torch.addcmul(wz * wz, amp_sq[c0:c1, None], b1_sq[None, :])
            bmag = torch.sqrt(bmag2)
            half = bmag * (-math.pi * dts[c0:c1, None])
            # sin(half)/|B|; |B| = 0 only when there is nothing to rotate, then sin(half) = 0 too
            s_over = torch.sin(half) / bmag.clamp_min(1e-30)
            a_step = torch.complex(torch.cos(half), -(wz * s_over))
            bs = b1_map[None, :] * s_over
            # -i (ar + i ai) bs = (ai - i ar) bs
            b_step = torch.complex(amp[c0:c1, None].imag * bs, -(amp[c0:c1, None].real * bs))
            # compose the chunk's rotations pairwise (a log-depth tree of vectorised products)
            while a_step.shape[0] > 1:
                if a_step.shape[0] % 2:
                    a_step = torch.cat([a_step, torch.ones_like(a_step[:1])])
                    b_step = torch.cat([b_step, torch.zeros_like(b_step[:1])])
                p_a, p_b, q_a, q_b = a_step[0::2], b_step[0::2], a_step[1::2], b_step[1::2]
                a_step, b_step = q_a * p_a - q_b.conj() * p_b, q_b * p_a + q_a.conj() * p_b
            aj, bj = a_step[0], b_step[0]
            alpha, beta = aj * alpha - bj.conj() * beta, bj * alpha + aj.conj() * beta
        # back from the RF frame to the reference frame: the RF phase advanced by f * T
        psi = -TWO_PI * pulse.freq_hz * pulse.duration
        az = complex(math.cos(psi / 2), -math.sin(psi / 2))
        alpha = alpha * az
        beta = beta * az.conjugate()
        self.spin_steps += self.n * n_steps
        ac = alpha.conj()
        coeffs = (
            ac * ac,
            -(beta * beta),
            2.0 * ac * beta,
            alpha.abs() ** 2 - beta.abs() ** 2,
            2.0 * alpha * beta,
        )
        if len(self._rf_cache) >= RF_CACHE_SIZE:
            # e.g. variable flip-angle trains: keep memory bounded, drop the oldest pulse
            self._rf_cache.pop(next(iter(self._rf_cache)))
        self._rf_cache[pulse.key] = coeffs
        return coeffs

    def rf(self, pulse: Pulse) -> None:
        """Apply ``pulse``; relaxation during it is split, half before and half after the rotation.

        A phase offset phi turns the B1 axis: R_phi = Rz(phi) R_0 Rz(-phi), so the cached
        phase-0 rotation is applied to Mxy e^{-i phi} and the result turned back by e^{i phi}.
        """
        self._pending_relax += pulse.duration / 2
        self.flush()
        c1, c2, c3, d1, d2 = self._rotation(pulse)
        mxy = self.mxy
        if pulse.phase_rad:
            mxy = mxy * complex(math.cos(pulse.phase_rad), -math.sin(pulse.phase_rad))
        mz = self.mz
        new_mxy = c1 * mxy + c2 * mxy.conj() + c3 * mz
        self.mz = d1 * mz - (d2 * mxy.conj()).real
        if pulse.phase_rad:
            new_mxy = new_mxy * complex(math.cos(pulse.phase_rad), math.sin(pulse.phase_rad))
        self.mxy = new_mxy
        self._pending_relax += pulse.duration / 2

    # -- ADC ----------------------------------------------------------------------------------
    def readout(self, ro: Readout, block: int = 64) -> torch.Tensor:
        """Noise-free coil signals (C, K) complex64 of the ADC samples in ``ro``.

        The state must be at the window start (pending precession is flushed). For the usual
        constant-gradient readout the per-sample factor is a per-spin geometric series, so the
        signal is a few matrix products (C x N) @ (N x B) with no per-sample exponentials.
        """
        self.flush()
        f = self.f
        dev = f.df.device
        k = ro.tau.size
        kmom = torch.as_tensor(ro.kmom, dtype=torch.float64, device=dev)
        tau = torch.as_tensor(ro.tau, dtype=torch.float64, device=dev)
        # the m spins of an isochromat differ only along spread_dir: with no k-space motion
        # along it during the window their signals are identical in phase, so sum them first.
        # Tolerance 2e-3 cycles (phase error < 0.8 deg, amplitude error < 1e-4): a head tilted by
        # a fraction of a degree keeps the fast path.
        along = np.abs(f.spread_dir @ ro.kmom).max() * f.spread_m if k else 0.0
        if f.m == 1 or along < 2e-3:
            mxy = self.mxy.reshape(-1, f.m).sum(dim=1) if f.m > 1 else self.mxy
            pos64, df, r2, sens_m0 = f.g_pos64, f.g_df, f.g_r2, f.sens_m0
        else:
            mxy = self.mxy
            pos64, df, r2 = f.pos64, f.df, f.r2
            sens_m0 = f.sens_m0.repeat_interleave(f.m, dim=1)
        n_sig = mxy.shape[0]
        a = sens_m0 * mxy[None, :]  # (C, n_sig)
        if ro.linear and k > 1:
            dk = (kmom[:, -1] - kmom[:, 0]) / (k - 1)
            dtau = float(ro.tau[1] - ro.tau[0])
            first = _decay_phase(pos64, df, r2, kmom[:, 0], float(ro.tau[0]))
            step = _decay_phase(pos64, df, r2, dk, dtau)
            # block length: a power of two, so that step^b falls out of the doubling below
            b = 1 << min(int(math.log2(block)), (k - 1).bit_length())
            # powers step^0 .. step^(b-1) by doubling (N, b); ``sq`` holds step^width
            powers = torch.empty(n_sig, b, dtype=torch.complex64, device=dev)
            powers[:, 0] = 1.0
            sq = step
            width = 1
            while width < b:
                torch.mul(powers[:, :width], sq[:, None], out=powers[:, width : 2 * width])
                sq = sq * sq
                width *= 2
            n_blocks = math.ceil(k / b)
            weights = [first]
            for _ in range(n_blocks - 1):
                weights.append(weights[-1] * sq)
            w = torch.stack(weights)  # (n_blocks, N)
            a_all = (a[None, :, :] * w[:, None, :]).reshape(n_blocks * a.shape[0], -1)
            sig = (a_all @ powers).reshape(n_blocks, a.shape[0], b)
            sig = sig.permute(1, 0, 2).reshape(a.shape[0], n_blocks * b)[:, :k]
        else:
            sig = torch.empty(a.shape[0], k, dtype=torch.complex64, device=dev)
            for s0 in range(0, k, block):
                s1 = min(k, s0 + block)
                cycles = pos64 @ kmom[:, s0:s1] + df.to(torch.float64)[:, None] * tau[None, s0:s1]
                phase = (TWO_PI * torch.remainder(cycles, 1.0)).to(torch.float32)
                decay = torch.exp(-r2[:, None] * tau[None, s0:s1].to(torch.float32))
                sig[:, s0:s1] = a @ _polar(decay, -phase)
        # receiver demodulation: phase offset and frequency offset referenced to the window start
        demod = ro.phase_rad - TWO_PI * ro.freq_hz * ro.tau
        if ro.phase_modulation is not None:
            demod = demod + ro.phase_modulation
        sig = sig * torch.as_tensor(np.exp(-1j * demod), dtype=torch.complex64, device=dev)[None, :]
        self.spin_steps += n_sig * k
        return sig


def _decay_phase(pos64: torch.Tensor, df: torch.Tensor, r2: torch.Tensor, kmom: torch.Tensor, tau: float):
    """exp(-i 2 pi (r.k + df tau) - tau R2) per spin or isochromat (complex64)."""
    cycles = pos64 @ kmom + df.to(torch.float64) * tau
    phase = (TWO_PI * torch.remainder(cycles, 1.0)).to(torch.float32)
    return _polar(torch.exp(-tau * r2), -phase)


def _polar(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """magnitude * exp(i phase); torch.polar is several times slower on the CPU."""
    return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
