"""Reconstruction library: pure functions on torch tensors, the same code on CPU and CUDA.

No MRD messages and no streams here (see docs/architecture.md); ``gadgets``
wraps these functions into stream stages.
"""

from recon import cartesian, coils, fft, finishing, noise, oversampling
from recon.device import resolve_device

__all__ = ["cartesian", "coils", "fft", "finishing", "noise", "oversampling", "resolve_device"]
