"""Sequence diagram and k-space trajectory figure for ``unisono sequence plot``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pypulseq as pp

from sequences.analysis import adc_events, kspace_per_adc, rf_events


def default_window(seq: pp.Sequence) -> tuple[float, float]:
    """First two TRs after the noise prescan (or the first 50 ms when there is no excitation)."""
    exc = [r.t_center for r in rf_events(seq)]
    if len(exc) >= 3:
        return max(0.0, exc[0] - 2e-3), exc[2] - 1e-3
    if exc:
        return max(0.0, exc[0] - 2e-3), exc[0] + 50e-3
    return 0.0, min(50e-3, float(seq.duration()[0]))


def plot_sequence(seq: pp.Sequence, out: str | Path, time_range=None) -> Path:
    """Write a PNG with RF/ADC, Gx, Gy, Gz over ``time_range`` [s] and the k-space sample positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0, t1 = time_range if time_range else default_window(seq)
    waves = seq.waveforms(append_RF=True, time_range=[t0, t1])
    gamma = seq.system.gamma
    fig = plt.figure(figsize=(12, 7), constrained_layout=True)
    grid = fig.add_gridspec(4, 2, width_ratios=[2.2, 1])
    names = ["Gx [mT/m]", "Gy [mT/m]", "Gz [mT/m]"]
    ax_rf = fig.add_subplot(grid[0, 0])
    if len(waves) > 3 and np.size(waves[3]):
        rf = np.asarray(waves[3])
        ax_rf.plot(rf[0].real * 1e3, np.abs(rf[1]), lw=0.8, label="|B1| [Hz]")
    for ev in adc_events(seq):
        ts = ev.sample_times()
        if ts[-1] >= t0 and ts[0] <= t1:
            ax_rf.axvspan(ts[0] * 1e3, ts[-1] * 1e3, color="tab:orange", alpha=0.3, lw=0)
    ax_rf.set_ylabel("RF |B1| [Hz], ADC")
    ax_rf.set_xlim(t0 * 1e3, t1 * 1e3)
    for i in range(3):
        ax = fig.add_subplot(grid[i + 1, 0], sharex=ax_rf)
        w = np.asarray(waves[i]) if i < len(waves) else np.zeros((2, 0))
        if w.size:
            ax.plot(w[0] * 1e3, w[1] / gamma * 1e3, lw=0.8)
        ax.set_ylabel(names[i])
    ax.set_xlabel("time [ms]")
    ax_k = fig.add_subplot(grid[:, 1])
    k, noise = kspace_per_adc(seq)
    for kk, nz in zip(k, noise, strict=True):
        if not nz:
            ax_k.plot(kk[:, 0], kk[:, 1], ".", ms=1)
    ax_k.set_aspect("equal")
    ax_k.set_xlabel("kx [1/m]")
    ax_k.set_ylabel("ky [1/m]")
    ax_k.set_title("k-space at ADC samples")
    name = seq.definitions.get("Name", Path(str(out)).stem)
    fig.suptitle(f"{name}: {float(seq.duration()[0]):.2f} s")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
