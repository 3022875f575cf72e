"""The one device switch: ``auto`` picks CUDA when torch sees a GPU."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` (or a torch.device) to a torch.device.

    Raises:
        ValueError: when CUDA is asked for but torch sees no GPU, or the name is unknown.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' was asked for but torch sees no CUDA GPU; use auto or cpu")
        return torch.device(name)
    raise ValueError(f"device must be auto, cpu or cuda[:N], got '{device}'")
