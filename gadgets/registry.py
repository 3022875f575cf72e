"""Names of the shipped gadgets and where they live.

Chains received from a network client may name gadgets only through this
table, so a client can never make the server import a module of its choosing.
Modules are imported lazily, when a chain that uses them is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["GADGETS", "resolve_gadget", "gadget_target"]

#: registered name -> (module, target)
GADGETS: dict[str, tuple[str, str]] = {
    "NoiseAdjust": ("gadgets.prewhiten", "noise_adjust"),
    "RemoveReadoutOversampling": ("gadgets.readout", "remove_oversampling"),
    "Accumulate": ("gadgets.accumulate", "accumulate"),
    "CartesianFFT": ("gadgets.fft_recon", "cartesian_fft"),
    "GRAPPA": ("gadgets.parallel", "grappa_gadget"),
    "SENSE": ("gadgets.parallel", "sense_gadget"),
    "PartialFourier": ("gadgets.pf", "partial_fourier"),
    "AccumulateTrajectory": ("gadgets.noncart", "accumulate_trajectory"),
    "NUFFT": ("gadgets.noncart", "nufft_recon"),
    "EPICorrection": ("gadgets.epi", "epi_correction"),
    "CoilCombine": ("gadgets.combine", "coil_combine"),
    "Harmonize": ("gadgets.harmonization", "harmonize"),
    "ImageFinish": ("gadgets.finishing", "image_finish"),
    "PassThrough": ("gadgets.passthrough", "pass_through"),
    "MotionEstimation": ("gadgets.motion", "motion_estimation"),
    "RetrospectiveMotion": ("gadgets.retro_motion", "retrospective_motion"),
}


def gadget_target(name: str) -> tuple[str, str]:
    """(module, target) of a registered gadget name, or a ValueError listing the known names."""
    try:
        return GADGETS[name]
    except KeyError:
        known = ", ".join(sorted(GADGETS))
        raise ValueError(f"unknown gadget '{name}'; registered gadgets are: {known}") from None


def resolve_gadget(module: str, target: str) -> Callable[..., Any]:
    """Import ``module`` and return its callable ``target``."""
    mod = importlib.import_module(module)
    fn = getattr(mod, target, None)
    if fn is None or not callable(fn):
        raise ValueError(f"gadget target '{target}' is not a callable in module '{module}'")
    return fn
