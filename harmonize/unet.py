"""A small 2-D U-Net (Ronneberger et al., MICCAI 2015) for image-to-image harmonization.

Sized for CPU training in minutes: ``depth`` resolution levels (each halves the
matrix and doubles the channels from ``base_channels``), two 3x3 convolutions per
level with GroupNorm (batch statistics are unreliable at the small batches CPU
training affords) and SiLU, bilinear upsampling (no checkerboard artefacts of
transposed convolutions) and skip connections. The network predicts a residual
added to its first input channel, so an untrained or unsure network starts from
the identity: harmonization changes intensities, it must not invent anatomy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture: in_channels (image [+ mask]), base_channels at full resolution, depth levels."""

    in_channels: int = 2
    base_channels: int = 8
    depth: int = 3

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.base_channels < 2 or not 1 <= self.depth <= 5:
            raise ValueError(
                f"UNetConfig needs in_channels >= 1, base_channels >= 2, 1 <= depth <= 5; got {asdict(self)}"
            )

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (2**depth) — inputs are padded to it."""
        return 2**self.depth


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = 4 if c_out % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class UNet2D(nn.Module):
    """x: (batch, in_channels, H, W) with H, W multiples of 2**depth -> (batch, 1, H, W)."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        ch = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([_block(config.in_channels, ch[0])])
        self.down.extend(_block(ch[i], ch[i + 1]) for i in range(config.depth))
        self.up = nn.ModuleList(_block(ch[i + 1] + ch[i], ch[i]) for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(ch[0], 1, 1)
        nn.init.zeros_(self.head.weight)  # start as the identity map (residual = 0)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.avg_pool2d(h, 2))
            skips.append(h)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return x[:, :1] + self.head(h)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two dims of ``x`` up to multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)), (h, w)
