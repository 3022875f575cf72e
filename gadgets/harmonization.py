"""Harmonize gadget: apply a site harmonization profile to magnitude images."""

from __future__ import annotations

import logging
from typing import Any

import torch

from gadgets.buffers import ImageBuffer

__all__ = ["harmonize", "station_name"]

log = logging.getLogger(__name__)


def _load(profile: str) -> tuple[Any, Any] | None:
    """(harmonize module, profile) or None (logged) when either is unavailable."""
    try:
        import harmonize as hz  # lazily: the gadget works (as a no-op) without the package

        return hz, hz.load_profile(profile)
    except (ImportError, AttributeError) as exc:
        log.warning("harmonization skipped: the harmonize package is not usable (%s)", exc)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        log.warning("harmonization skipped: profile '%s' is not available (%s)", profile, exc)
    return None


def station_name(header: Any) -> str | None:
    """The scanner's ``acquisitionSystemInformation.stationName`` from an MRD header, or None."""
    asi = getattr(header, "acquisitionSystemInformation", None)
    name = getattr(asi, "stationName", None)
    return str(name) if name else None


def harmonize(
    connection: Any,
    *,
    profile: str = "default",
    enabled: bool = True,
    required: bool = False,
    keep_original: bool = False,
) -> None:
    """Harmonize each combined image with ``harmonize.apply_profile``.

    Params:
        profile: profile name or path for ``harmonize.load_profile``.
        enabled: False passes images through untouched.
        required: fail instead of skipping when the profile cannot be loaded.
        keep_original: also pass the unharmonized image on, as its own series (meta
            ``unisono.series = original``, one series index below the harmonized one), so
            a reader can compare both, as vendors export "original" and "normalized" series.

    Harmonized images get meta ``unisono.harmonization`` (profile name) and
    ``unisono.harmonization_sha256``. An image the profile refuses (``ValueError``: an empty
    slice with no foreground, a constant one) is passed on unchanged in its place, with meta
    ``unisono.harmonization_skipped`` giving the reason and no profile name. The scanner's
    ``stationName`` (MRD header) names the site for profiles with per-site contrast curves;
    ``unisono.harmonization_site`` records it when the profile holds a curve for it.
    """
    loaded = _load(profile) if enabled else None
    site = station_name(getattr(connection, "header", None))
    if enabled and loaded is None and required:
        raise ValueError(f"harmonization profile '{profile}' could not be loaded and required = true")
    for item in connection:
        if loaded is None or not isinstance(item, ImageBuffer):
            connection.send(item)
            continue
        hz, prof = loaded
        if keep_original:
            original_meta = {**item.meta, "unisono.series": "original", "unisono.series_offset": -1}
            connection.send(ImageBuffer(item.data, item.reference, item.encoding_index, original_meta))
        mag = item.data.abs().to(torch.float32)
        if mag.shape[0] != 1:
            raise ValueError(
                f"harmonization needs coil-combined images (1 channel), got {mag.shape[0]} channels"
            )
        try:
            # the harmonize package works on host memory
            out = hz.apply_profile(prof, mag[0].cpu(), site=site)
        except ValueError as exc:
            # an image the profile cannot harmonize (an empty slice: no foreground, no spread)
            # goes on unharmonized and says so, rather than ending the scan's reconstruction
            log.warning("image not harmonized: %s", exc)
            meta = {**item.meta, "unisono.series": "harmonized", "unisono.harmonization_skipped": str(exc)}
            connection.send(ImageBuffer(item.data, item.reference, item.encoding_index, meta))
            continue
        out = torch.as_tensor(out, dtype=torch.float32, device=mag.device)[None]
        meta = dict(item.meta)
        meta["unisono.harmonization"] = getattr(prof, "name", str(profile))
        meta["unisono.harmonization_sha256"] = getattr(prof, "sha256", "")
        if site is not None and site in prof.parameters.get("site_contrast", {}).get("sites", {}):
            meta["unisono.harmonization_site"] = site
        meta["unisono.series"] = "harmonized"
        connection.send(ImageBuffer(out, item.reference, item.encoding_index, meta))
