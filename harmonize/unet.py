"""A small 2-D U-Net (Ronneberger et al., MICCAI 2015) for image-to-image harmonization.

Sized for CPU training in minutes: ``depth`` resolution levels (each halves the
matrix and doubles the channels from ``base_channels``), two 3x3 convolutions per
level with GroupNorm (batch statistics are unreliable at the small batches CPU
training affords) and SiLU, bilinear upsampling (no checkerboard artefacts of
transposed convolutions) and skip connections. The network predicts a residual
added to its first input channel, so an untrained or unsure network starts from
the identity: harmonization changes intensities, it must not invent anatomy.

``output="fields"`` turns the same backbone into a *structure-preserving* model: it
predicts a few smooth spatial fields instead of a residual, and the output is a
spatially varying, monotone intensity map of the input,

    log y(r) = a(r) + sum_j s_j(r) * clamp(u(r) - t_j, 0, t_{j+1} - t_j),   u = log x(r),

a piecewise-linear map of log intensity with knots t_j = log(knots) (the first and last
segments extend to -inf / +inf) whose offset a and segment slopes s_j > 0 (softplus)
vary smoothly over the image. Each field is a least-squares polynomial of degree
``field_degree`` in (x, y) over the mask (or, with degree 0, averaged over the mask on a
coarse ``field_grid`` x ``field_grid`` grid and bilinearly interpolated; background voxels
never enter either), so no field can carry anatomy, and
every voxel's output is a strictly increasing function of that voxel's input: edges,
texture and the ordering of tissues are kept, as a global monotone map (Nyúl) keeps
them, while shading (a), contrast exponents and tissue-specific contrast (s_j) can
change across the image. The zero-initialised head gives a = 0 and s_j = 1: the
identity, as for the residual output. ``output="gain"`` keeps the offset field only:
log y = a(r) + log x, a smooth gain (the shipped ``unet-gain``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

#: output kinds: free-form residual; smooth monotone map (offset + slope fields); smooth gain only
OUTPUTS = ("residual", "fields", "gain")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture: in_channels (image [+ mask]), base_channels at full resolution, depth levels.

    output: "residual" (input + free-form residual), "gain" (input x a smooth gain field) or
    "fields" (smooth monotone intensity map, see the module docstring); "gain" and "fields"
    need the mask as second input channel. field_degree: the fields are least-squares
    polynomials of this degree in (x, y) over the mask (the shipped variants: 2); 0 instead
    averages them on a field_grid x field_grid grid (slope_grid > 0: the slopes on a grid of
    their own). knots: the monotone map's knots in input units (p99 units: 1 = the image's
    in-mask 99th percentile).
    """

    in_channels: int = 2
    base_channels: int = 8
    depth: int = 3
    output: str = "residual"
    field_grid: int = 8
    knots: tuple[float, ...] = (0.25, 0.5, 0.75)
    slope_grid: int = 0
    field_degree: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "knots", tuple(float(k) for k in self.knots))  # JSON gives lists
        if self.in_channels < 1 or self.base_channels < 2 or not 1 <= self.depth <= 5:
            raise ValueError(
                f"UNetConfig needs in_channels >= 1, base_channels >= 2, 1 <= depth <= 5; got {asdict(self)}"
            )
        if self.output not in OUTPUTS:
            raise ValueError(f"UNetConfig.output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output in ("fields", "gain"):
            if self.in_channels < 2:
                raise ValueError(
                    f"output={self.output!r} needs the mask as second input channel (in_channels >= 2)"
                )
            if not 0 <= self.field_degree <= 4:
                raise ValueError(f"field_degree must be 0 (grid) to 4, got {self.field_degree}")
            if self.field_grid < 1 or self.slope_grid < 0:
                raise ValueError(
                    f"field_grid must be >= 1 and slope_grid >= 0, got {self.field_grid}, {self.slope_grid}"
                )
            k = self.knots
            if any(v <= 0 for v in k) or any(b <= a for a, b in zip(k, k[1:], strict=False)):
                raise ValueError(f"knots must be positive and increasing, got {k}")

    @property
    def n_fields(self) -> int:
        """Output channels of the head: 1 (residual, gain) or offset + one slope per segment (fields)."""
        return len(self.knots) + 2 if self.output == "fields" else 1

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
        self.head = nn.Conv2d(ch[0], config.n_fields, 1)
        nn.init.zeros_(self.head.weight)  # start as the identity map (residual = 0; a = 0, s = 1)
        nn.init.zeros_(self.head.bias)
        # not a state_dict entry: weights files of the residual U-Net (no knots) keep loading
        self.register_buffer(
            "log_knots", torch.log(torch.tensor(config.knots, dtype=torch.float32)), persistent=False
        )

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
        if self.config.output != "residual":
            return self.apply_fields(x[:, :1], self.fields(self.head(h), x[:, 1:2]))
        return x[:, :1] + self.head(h)

    def fields(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Smooth fields (batch, n_fields, H, W) from the head's raw maps: channel 0 the log offset
        a, channels 1.. the segment slopes s_j > 0 (softplus, 1 at a zero raw value)."""
        if self.config.field_degree:
            smooth = poly_field(raw, mask, self.config.field_degree)
        else:
            smooth = smooth_field(raw, mask, self.config.field_grid)
        if self.config.output == "gain":
            return smooth
        if self.config.slope_grid:
            smooth = torch.cat([smooth[:, :1], smooth_field(raw[:, 1:], mask, self.config.slope_grid)], dim=1)
        slopes = F.softplus(smooth[:, 1:] + _SOFTPLUS_ONE)
        return torch.cat([smooth[:, :1], slopes], dim=1)

    def apply_fields(self, image: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """The monotone map of ``image`` (batch, 1, H, W; p99 units) given ``fields`` from fields()."""
        if self.config.output == "gain":
            return image * torch.exp(fields[:, :1].clamp(-5.0, 5.0))
        return monotone_map(image, fields, self.log_knots)


#: softplus(_SOFTPLUS_ONE) == 1: a zero head output is slope 1 (the identity)
_SOFTPLUS_ONE = math.log(math.e - 1.0)
#: log-intensity floor of the fields model (inputs below e^-9 of the p99 unit are treated as e^-9)
_LOG_FLOOR = -9.0


def smooth_field(raw: torch.Tensor, mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Masked average of ``raw`` (batch, c, H, W) on a grid x grid grid, bilinearly interpolated back.

    Normalized convolution: each cell averages in-mask voxels only, and the interpolation
    weighs cells by their mask coverage, so voxels outside the mask never shape a field and
    a cell without tissue takes its neighbours' values. The result is continuous and
    varies on the scale of H / grid.
    """
    h, w = raw.shape[-2:]
    m = mask.to(raw.dtype)
    cover = F.adaptive_avg_pool2d(m, (grid, grid))
    cells = F.adaptive_avg_pool2d(raw * m, (grid, grid)) / cover.clamp_min(1e-6)
    up_w = F.interpolate(cover, size=(h, w), mode="bilinear", align_corners=False)
    up = F.interpolate(cells * cover, size=(h, w), mode="bilinear", align_corners=False)
    # far from any tissue (padding) the weight is 0: fall back to the image-wide mean
    mean = (raw * m).sum((-2, -1), keepdim=True) / m.sum((-2, -1), keepdim=True).clamp_min(1.0)
    return torch.where(up_w > 1e-6, up / up_w.clamp_min(1e-6), mean)


def poly_basis(h: int, w: int, degree: int, device=None) -> torch.Tensor:
    """Monomials x^i y^j (i + j <= degree) on [-1, 1]^2 over an h x w grid: (n_basis, h, w)."""
    y = torch.linspace(-1, 1, h, device=device)[:, None].expand(h, w)
    x = torch.linspace(-1, 1, w, device=device)[None, :].expand(h, w)
    return torch.stack([x**i * y**j for d in range(degree + 1) for i in range(d + 1) for j in [d - i]])


def poly_field(raw: torch.Tensor, mask: torch.Tensor, degree: int) -> torch.Tensor:
    """Least-squares fit of a polynomial of ``degree`` in (x, y) to ``raw`` (batch, c, H, W) over
    ``mask``, evaluated everywhere: each field is a smooth polynomial by construction (a quadratic
    log-gain is exactly the shading family the atrophy read-out divides out)."""
    b, c, h, w = raw.shape
    basis = poly_basis(h, w, degree, raw.device).reshape(-1, h * w)  # (k, hw)
    m = mask.reshape(b, 1, h * w).to(raw.dtype)
    gram = torch.einsum("kn,bn,ln->bkl", basis, m[:, 0], basis)
    ridge = 1e-4 * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
    gram = gram + ridge * torch.eye(basis.shape[0], device=raw.device)
    rhs = torch.einsum("kn,bcn->bck", basis, raw.reshape(b, c, h * w) * m)
    coef = torch.linalg.solve(gram[:, None], rhs.unsqueeze(-1)).squeeze(-1)  # (b, c, k)
    return torch.einsum("bck,kn->bcn", coef, basis).reshape(b, c, h, w)


def monotone_map(image: torch.Tensor, fields: torch.Tensor, log_knots: torch.Tensor) -> torch.Tensor:
    """exp(a + sum_j s_j clamp(u - t_j, 0, t_{j+1} - t_j)) with u = log image, segments around
    the knots t (the first segment extends to -inf, the last to +inf). Strictly increasing in
    the image at every voxel where the slopes are positive."""
    u = torch.log(image.clamp_min(math.exp(_LOG_FLOOR)))
    t = log_knots
    n = t.numel()
    a, s = fields[:, :1], fields[:, 1:]
    # segment 0: (-inf, t0]: s0 min(u - t0, 0); segment j = 1..n-1: [t_{j-1}, t_j]; n: [t_{n-1}, inf)
    out = a + s[:, :1] * (u - t[0]).clamp_max(0.0)
    for j in range(1, n):
        out = out + s[:, j : j + 1] * (u - t[j - 1]).clamp(0.0, float(t[j] - t[j - 1]))
    out = out + s[:, n : n + 1] * (u - t[n - 1]).clamp_min(0.0)
    # with a = 0 and every s_j = 1 the sum telescopes to u - t0: adding t0 makes that the identity
    # (a is the log gain at the first knot)
    return torch.exp((out + t[0]).clamp(_LOG_FLOOR, 5.0))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two dims of ``x`` up to multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)), (h, w)
