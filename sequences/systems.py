"""Scanner hardware profiles (``sequences/systems/*.toml``) as :class:`SystemProfile`.

A profile is what differs between vendors for a Pulseq interpreter: field
strength, gradient strength and slew rate, the raster times of gradients, RF,
ADC and block durations, and the dead/ringdown times around RF and ADC events.
Builders only ever see these limits through :meth:`SystemProfile.to_opts`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pypulseq as pp

from sequences.protocol import ProtocolError, read_named_toml
from sequences.units import UNITS, from_si, to_si

SYSTEM_DIR = Path(__file__).resolve().parent / "systems"

#: hardware key -> (SI unit the value must convert to, lower bound, upper bound) in SI
_FIELDS: dict[str, tuple[str, float, float]] = {
    "B0": ("T", 0.05, 14.0),
    "gamma": ("Hz/T", 1e6, 1e8),
    "max_grad": ("T/m", 1e-3, 0.5),
    "max_slew": ("T/m/s", 1.0, 1000.0),
    "grad_raster_time": ("s", 1e-7, 1e-4),
    "rf_raster_time": ("s", 1e-8, 1e-4),
    "adc_raster_time": ("s", 1e-9, 1e-4),
    "block_duration_raster": ("s", 1e-7, 1e-4),
    "rf_dead_time": ("s", 0.0, 1e-3),
    "rf_ringdown_time": ("s", 0.0, 1e-3),
    "adc_dead_time": ("s", 0.0, 1e-3),
    "adc_samples_divisor": ("1", 1, 64),
}


@dataclass(frozen=True)
class SystemProfile:
    """Hardware limits of one scanner, all in SI units.

    Attributes: ``B0`` [T], ``gamma`` [Hz/T], ``max_grad`` [T/m], ``max_slew``
    [T/m/s], raster and dead times [s], ``adc_samples_divisor`` [1].
    """

    name: str
    description: str
    vendor_like: str
    B0: float
    gamma: float
    max_grad: float
    max_slew: float
    grad_raster_time: float
    rf_raster_time: float
    adc_raster_time: float
    block_duration_raster: float
    rf_dead_time: float
    rf_ringdown_time: float
    adc_dead_time: float
    adc_samples_divisor: int = 4

    @property
    def larmor_hz(self) -> float:
        """Proton resonance frequency gamma*B0 [Hz]."""
        return self.gamma * self.B0

    @property
    def max_grad_hz(self) -> float:
        """Maximum gradient in pypulseq's unit [Hz/m]."""
        return self.max_grad * self.gamma

    @property
    def max_slew_hz(self) -> float:
        """Maximum slew rate in pypulseq's unit [Hz/m/s]."""
        return self.max_slew * self.gamma

    def with_slew(self, max_slew: float) -> SystemProfile:
        """This profile with the slew rate capped at ``max_slew`` [T/m/s] (never raised)."""
        return replace(self, max_slew=min(self.max_slew, max_slew))

    def to_opts(self) -> pp.Opts:
        """The pypulseq system limits for this profile."""
        return pp.Opts(
            max_grad=self.max_grad * 1e3,
            grad_unit="mT/m",
            max_slew=self.max_slew,
            slew_unit="T/m/s",
            grad_raster_time=self.grad_raster_time,
            rf_raster_time=self.rf_raster_time,
            adc_raster_time=self.adc_raster_time,
            block_duration_raster=self.block_duration_raster,
            rf_dead_time=self.rf_dead_time,
            rf_ringdown_time=self.rf_ringdown_time,
            adc_dead_time=self.adc_dead_time,
            adc_samples_divisor=self.adc_samples_divisor,
            gamma=self.gamma,
            B0=self.B0,
        )

    def summary(self) -> dict[str, float | str]:
        """The profile in console units (mT/m, us, ...), for reports and docs."""
        d = asdict(self)
        out: dict[str, float | str] = {k: d[k] for k in ("name", "description", "vendor_like")}
        out["B0_T"] = self.B0
        out["max_grad_mT_per_m"] = from_si(self.max_grad, "mT/m")
        out["max_slew_T_per_m_per_s"] = self.max_slew
        for key in (
            "grad_raster_time",
            "rf_raster_time",
            "adc_raster_time",
            "block_duration_raster",
            "rf_dead_time",
            "rf_ringdown_time",
            "adc_dead_time",
        ):
            out[f"{key}_us"] = round(from_si(d[key], "us"), 6)
        return out


def list_systems() -> list[str]:
    """Names of the shipped hardware profiles."""
    return sorted(p.stem for p in SYSTEM_DIR.glob("*.toml"))


def load_system(name_or_path: str | Path | SystemProfile) -> SystemProfile:
    """Load a profile by name (``sequences/systems/NAME.toml``) or from a TOML path.

    Raises :class:`ProtocolError` naming the offending field for bad files.
    """
    if isinstance(name_or_path, SystemProfile):
        return name_or_path
    path, data = read_named_toml(name_or_path, SYSTEM_DIR, "system", list_systems)
    hw = data.get("hardware", {})
    values: dict[str, float] = {}
    for key, (si_unit, lo, hi) in _FIELDS.items():
        if key not in hw:
            raise ProtocolError(f"{path.name}: hardware.{key} is missing.")
        entry = hw[key]
        if not isinstance(entry, dict) or "value" not in entry or "unit" not in entry:
            raise ProtocolError(f"{path.name}: hardware.{key} must be {{ value = ..., unit = ... }}.")
        unit = entry["unit"]
        if unit not in UNITS or UNITS[unit][0] != si_unit:
            raise ProtocolError(f"{path.name}: hardware.{key}.unit = {unit!r} does not convert to {si_unit}.")
        v = to_si(entry["value"], unit, field=key)
        if not lo <= v <= hi:
            raise ProtocolError(
                f"{path.name}: hardware.{key} = {entry['value']} {unit} is outside the plausible range "
                f"{from_si(lo, unit):g} to {from_si(hi, unit):g} {unit}."
            )
        values[key] = v
    for raster in ("grad_raster_time", "rf_raster_time"):
        ratio = values["block_duration_raster"] / values[raster]
        if abs(ratio - round(ratio)) > 1e-6:
            raise ProtocolError(
                f"{path.name}: hardware.block_duration_raster must be a multiple of {raster}."
            )
    return SystemProfile(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        vendor_like=data.get("vendor_like", ""),
        adc_samples_divisor=int(values.pop("adc_samples_divisor")),
        **values,
    )
