"""Learned harmonization: a small U-Net trained on traveling-subject pairs (same subject, two sites).

Intensity convention. The network sees each slice divided by its image's
in-mask 99th percentile (removing the arbitrary receive gain, which no
network should have to learn), with the mask as a second channel, and predicts
the target site's image of the same subject in the same units (target image
divided by its own in-mask 99th percentile). The output is therefore
dimensionless, with the target site's contrast: bright white matter ≈ 1.

Generalization to sites never seen in training comes from *site augmentation*:
during training each source slice also gets a random monotone contrast exponent,
a smooth multiplicative bias field and extra Rician noise — the ways sites
differ — so the network learns to undo distortions of that family rather than
the training sites' particular ones.

The smooth-field variants (``UNetConfig(output="gain" | "fields")``, fit methods
``unet-gain`` / ``unet-fields``) train the same way, but the network only predicts smooth
fields that define a per-pixel monotone intensity map (see harmonize.unet), so anatomy
and texture are the input's; their profiles then set the output's parenchyma level to the
training targets' (``parameters["output_scale"]``, one gain, see ``scale_output``), so that
every image's CSF share stays in its absolute intensities and a pooled analysis sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from harmonize._arrays import as_magnitude, check_mask
from harmonize.unet import UNet2D, UNetConfig, pad_to_multiple
from harmonize.volumes import field_corrected_values, parenchyma_level

log = logging.getLogger(__name__)

#: in-mask percentile that defines each image's intensity unit
REFERENCE_PERCENTILE = 99.0
#: what a smooth-field profile's output keeps of the smooth shading (parameters["output_shading"])
#: kept: the network's own; removed: divided out (bias-corrected); target: divided out, then the
#: target scanner's calibrated shading multiplied in (harmonize.target_shading)
OUTPUT_SHADINGS = ("kept", "removed", "target")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings. iterations: Adam steps (0: the untrained network, which its
    zero-initialised head makes the identity map -- the baseline that says what training adds);
    batch_size: slices per step;
    lr: initial learning rate (cosine decay to 5 %); augment: site augmentation on/off;
    gamma_range, bias_amplitude, noise_sigma: augmentation strengths (dimensionless, noise
    relative to the p99 unit); seed: torch/numpy seed; threads: torch CPU threads."""

    iterations: int = 3000
    batch_size: int = 8
    lr: float = 3e-3
    augment: bool = True
    gamma_range: tuple[float, float] = (0.7, 1.45)
    #: peak |log| of the augmentation's smooth field: 0.5 (×0.6–1.65) spans the receive shading
    #: the simulated sites show across a 22 cm head (0.6–2.4 of the mean at siteC)
    bias_amplitude: float = 0.5
    noise_sigma: float = 0.02
    seed: int = 0
    threads: int = 1
    unet: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"iterations must be >= 0, batch_size and lr positive, got {asdict(self)}")
        if not 0 < self.gamma_range[0] <= self.gamma_range[1]:
            raise ValueError(f"gamma_range must be 0 < low <= high, got {self.gamma_range}")


def intensity_unit(image: np.ndarray, mask: np.ndarray) -> float:
    """The image's intensity unit: its in-mask 99th percentile (image units)."""
    unit = float(np.percentile(image[mask], REFERENCE_PERCENTILE))
    if unit <= 0:
        raise ValueError("image has no positive intensity inside the mask")
    return unit


def _slices(images: Sequence[object], masks: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (z, y, x) images into normalized (n, y, x) float32 slices and their masks."""
    xs, ms = [], []
    for img_in, m_in in zip(images, masks, strict=True):
        img = as_magnitude(img_in)
        m = check_mask(m_in, img.shape)
        if img.ndim == 2:
            img, m = img[None], m[None]
        xs.append((img / intensity_unit(img, m)).astype(np.float32))
        ms.append(m)
    return np.concatenate(xs), np.concatenate(ms)


def _smooth_fields(n: int, shape: tuple[int, int], amplitude: float, gen: torch.Generator) -> torch.Tensor:
    """n random smooth multiplicative fields exp(quadratic polynomial), peak |log| = amplitude."""
    h, w = shape
    y = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    x = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    basis = torch.stack([x, y, x * y, x * x, y * y])  # (5, h, w)
    c = torch.randn(n, 5, 1, 1, generator=gen)
    poly = (c * basis).sum(1)
    poly = poly / poly.flatten(1).abs().amax(1).clamp_min(1e-6)[:, None, None]
    amp = amplitude * torch.rand(n, 1, 1, generator=gen)
    return torch.exp(amp * poly)


def _augment(x: torch.Tensor, m: torch.Tensor, cfg: TrainingConfig, gen: torch.Generator) -> torch.Tensor:
    """Random site distortion of normalized source slices x (n, h, w) inside masks m."""
    n = x.shape[0]
    lo, hi = cfg.gamma_range
    gamma = lo + (hi - lo) * torch.rand(n, 1, 1, generator=gen)
    y = x.clamp_min(0) ** gamma * _smooth_fields(n, x.shape[-2:], cfg.bias_amplitude, gen)
    sd = cfg.noise_sigma * torch.rand(n, 1, 1, generator=gen)
    noisy = torch.sqrt(
        (y + sd * torch.randn(y.shape, generator=gen)) ** 2 + (sd * torch.randn(y.shape, generator=gen)) ** 2
    )
    noisy = noisy * m
    # re-normalize: the network always sees images in p99 units
    unit = torch.stack([torch.quantile(noisy[i][m[i]], REFERENCE_PERCENTILE / 100) for i in range(n)])
    return noisy / unit.clamp_min(1e-6)[:, None, None]


def train_unet(
    sources: Sequence[object],
    targets: Sequence[object],
    source_masks: Sequence[object],
    target_masks: Sequence[object],
    config: TrainingConfig = TrainingConfig(),
) -> tuple[UNet2D, dict[str, Any]]:
    """Train a U-Net mapping each source image onto its paired target-site image.

    sources/targets: paired magnitude images (z, y, x) of the same subject (pairs may
    repeat a target, e.g. one target per subject and one source per site, including the
    target site itself); masks: their bool foreground masks. All slices must share one
    (y, x) size. Returns (model in eval mode, history with loss curve and timing).
    """
    if len(sources) != len(targets) or not sources:
        raise ValueError(f"need equally many (>0) sources and targets, got {len(sources)} and {len(targets)}")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        xs, ms = _slices(sources, source_masks)
        ys, mt = _slices(targets, target_masks)
        if xs.shape != ys.shape:
            raise ValueError(f"source and target slices differ in shape: {xs.shape} vs {ys.shape}")
        X, Y = torch.from_numpy(xs), torch.from_numpy(ys)
        MS = torch.from_numpy(ms)
        MW = torch.from_numpy(ms & mt).float()  # loss only where both images have tissue
        model = UNet2D(config.unet)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        # T_max >= 1: with 0 iterations the schedule is built but never stepped
        t_max = max(config.iterations, 1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, t_max, eta_min=0.05 * config.lr)
        losses: list[float] = []
        t0 = time.perf_counter()
        model.train()
        for it in range(config.iterations):
            idx = torch.randint(0, X.shape[0], (config.batch_size,), generator=gen)
            x, y, m, w = X[idx], Y[idx], MS[idx], MW[idx]
            if config.augment:
                # half of each batch sees a random site, half the real source site
                aug = torch.rand(config.batch_size, generator=gen) < 0.5
                if aug.any():
                    x = x.clone()
                    x[aug] = _augment(x[aug], m[aug], config, gen)
                if torch.rand(1, generator=gen) < 0.5:  # left-right flip: anatomy is near-symmetric
                    x, y, m, w = x.flip(-1), y.flip(-1), m.flip(-1), w.flip(-1)
            inp, _ = pad_to_multiple(torch.stack([x, m.float()], 1), config.unet.multiple)
            pred = model(inp)[:, 0, : x.shape[-2], : x.shape[-1]]
            loss = (F.l1_loss(pred, y, reduction="none") * w).sum() / w.sum().clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if it % 100 == 0:
                log.info("unet iteration %d/%d loss %.4f", it, config.iterations, losses[-1])
        model.eval()
        history = {
            "loss": losses[:: max(1, len(losses) // 200)],
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "train_seconds": time.perf_counter() - t0,
            "n_slices": int(X.shape[0]),
            "slice_shape": list(X.shape[1:]),
            "n_parameters": sum(p.numel() for p in model.parameters()),
        }
        return model, history
    finally:
        torch.set_num_threads(prev_threads)


def save_weights(model: UNet2D, path: str | Path) -> Path:
    """Write the model's architecture and float32 weights to a torch file (.pt)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).cpu() for k, v in model.state_dict().items()}
    torch.save({"format": "unisono.unet/1", "unet": asdict(model.config), "state_dict": state}, p)
    return p


def load_weights(path: str | Path) -> UNet2D:
    """Read a model written by save_weights (weights_only: a profile file cannot run code)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "unisono.unet/1":
        raise ValueError(f"{path} is not a unisono U-Net weights file (format unisono.unet/1)")
    model = UNet2D(UNetConfig(**blob["unet"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()


_MODEL_CACHE: dict[str, UNet2D] = {}


def _model_for(profile: Any) -> UNet2D:
    """The profile's model, loaded once per weights hash (the gadget applies it per image)."""
    key = str(profile.weights_sha256)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_weights(profile.weights_path())
    return _MODEL_CACHE[key]


@torch.no_grad()
def predict(model: UNet2D, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run ``model`` slice by slice on ``image`` (z, y, x) inside ``mask``; float32, background 0."""
    img = as_magnitude(image)
    m = check_mask(mask, img.shape)
    vol, mv = (img[None], m[None]) if img.ndim == 2 else (img, m)
    x = torch.from_numpy((vol / intensity_unit(vol, mv)).astype(np.float32))
    mt = torch.from_numpy(mv)
    inp, (h, w) = pad_to_multiple(torch.stack([x, mt.float()], 1), model.config.multiple)
    out = model(inp)[:, 0, :h, :w] * mt
    res = out.numpy().astype(np.float32)
    return res[0] if img.ndim == 2 else res


def output_level(out: np.ndarray, mask: np.ndarray, statistic: str) -> float:
    """The in-mask level an output scale pins: statistic "parenchyma"
    (harmonize.volumes.parenchyma_level, what ``fit`` writes) or "median" (older smooth-field
    profiles, still loadable)."""
    if statistic == "parenchyma":
        return parenchyma_level(out, mask)
    if statistic == "median":
        return float(np.median(out[check_mask(mask, out.shape)]))
    raise ValueError(f"output_scale statistic must be 'parenchyma' or 'median', got {statistic!r}")


def scale_output(out: np.ndarray, mask: np.ndarray, scale: dict[str, Any]) -> np.ndarray:
    """Multiply ``out`` by one gain so that its ``output_level`` (statistic ``scale["statistic"]``)
    is ``scale["value"]``."""
    m = check_mask(mask, out.shape)
    if not m.any():
        return out
    level = output_level(out, m, str(scale.get("statistic")))
    if level <= 0:
        return out
    return (out * (float(scale["value"]) / level)).astype(np.float32)


def output_shading(parameters: dict[str, Any]) -> str:
    """The profile's ``output_shading`` (one of OUTPUT_SHADINGS; profiles without it: "kept")."""
    shading = str(parameters.get("output_shading", "kept"))
    if shading not in OUTPUT_SHADINGS:
        raise ValueError(f"output_shading must be one of {OUTPUT_SHADINGS}, got {shading!r}")
    return shading


def remove_shading(out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``out`` (z, y, x) with its smooth field (harmonize.volumes.log_field, geometric mean 1
    in ``mask``) divided out, 0 outside ``mask``, float32. The field is scale-free, so the
    output anchor's level is kept."""
    m = check_mask(mask, out.shape)
    flat = np.zeros(out.shape, dtype=np.float32)
    flat[m] = field_corrected_values(out, m)
    return flat


def apply_learned(profile: Any, image: np.ndarray, mask: np.ndarray, site: str | None = None) -> np.ndarray:
    """apply_profile's learned branch: the profile's U-Net on ``image`` (z, y, x) inside ``mask``.

    A profile with parameters["output_cdf"] (a CdfReference dict, target-site units) then
    warps the network's output histogram onto that reference (the "unet+cdf" variant). One
    with parameters["output_scale"] ({"statistic": "parenchyma" | "median", "value": v}) then
    multiplies the output by one gain so that that level is v (the smooth-field variants). One with
    parameters["output_shading"] = "removed" then divides out the output's smooth field
    (``remove_shading``: a bias-corrected output, whose intensities are tissue levels rather
    than tissue times where the head sat under the coils); "target" does the same and, after
    the curves and the noise step, multiplies in the target scanner's own calibrated shading
    (parameters["target_shading"], harmonize.target_shading). One with
    parameters["site_contrast"] (harmonize.site_contrast) then maps the output through the
    curve of ``site`` (the scanner the image comes from; unknown sites pass unchanged) and
    re-applies the anchor, so that the level stays pinned whatever the curve. One with
    parameters["site_noise"] (harmonize.site_noise) brings the noise of a site noisier than
    the target down to the target's: before the curves (placement "before_curves", what
    ``calibrate`` writes) or after them (tables older than the field).
    """
    out = predict(_model_for(profile), image, mask)
    scale = profile.parameters.get("output_scale")
    if scale:
        out = scale_output(out, mask, scale)
    if output_shading(profile.parameters) in ("removed", "target"):
        out = remove_shading(out, mask)
    noise = profile.parameters.get("site_noise")
    if noise:
        from harmonize.site_noise import SiteNoise, apply_site_noise

        noise_table = SiteNoise.from_dict(noise)
        # the anchor pins the parenchyma level (a flattened output keeps it): no need to measure it
        level = float(scale["value"]) if scale and scale.get("statistic") == "parenchyma" else None
        if noise_table.placement == "before_curves":
            out = apply_site_noise(out, mask, noise_table, site, level)
    contrast = profile.parameters.get("site_contrast")
    if contrast:
        from harmonize.site_contrast import SiteContrast, apply_site_contrast

        out = apply_site_contrast(out, mask, SiteContrast.from_dict(contrast), site)
        if scale:
            out = scale_output(out, mask, scale)
    if noise and noise_table.placement == "after_curves":
        out = apply_site_noise(out, mask, noise_table, site, level)
    shading = profile.parameters.get("target_shading")
    if shading and output_shading(profile.parameters) == "target":
        from harmonize.target_shading import TargetShading, apply_target_shading

        out = apply_target_shading(out, mask, TargetShading.from_dict(shading))
    ref = profile.parameters.get("output_cdf")
    if ref:
        from harmonize.cdf import CdfReference, cdf_align

        out = cdf_align(out, CdfReference.from_dict(ref), mask)
    return out
