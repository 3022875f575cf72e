"""Harmonization profiles: one file saying how to harmonize; `fit` writes it, `apply` and the gadget read it.

A profile is a JSON document (format ``unisono.harmonization-profile/1``)::

    {"format": ..., "name": "default", "method": "whitestripe",
     "parameters": {...},            # method parameters (JSON numbers/strings/lists)
     "weights": null | {"file": "x.pt", "sha256": "..."},   # learned methods only, file beside the JSON
     "target_site": "siteA" | null, "provenance": {...}, "unisono_version": "0.1.0",
     "description": "...", "sha256": "..."}

``sha256`` identifies the *transform*: it hashes the canonical JSON of method,
parameters and the weights' hash — not the name, provenance or version — so two
sites that harmonized with equal transforms record equal hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from harmonize._arrays import as_magnitude, check_mask
from harmonize.mask import auto_mask

FORMAT = "unisono.harmonization-profile/1"
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
#: methods a profile may name; the learned one is implemented in harmonize.learned
METHODS = ("zscore", "whitestripe", "nyul", "cdf", "unet")


def package_version() -> str:
    """unisono's installed version (read from package metadata: harmonize may not import unisono)."""
    try:
        return version("unisono")
    except PackageNotFoundError:
        return "0.0.0+source"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass
class HarmonizationProfile:
    """How to harmonize an image, with where the parameters came from.

    name: short identifier recorded in image meta. method: one of METHODS.
    parameters: JSON-serialisable method parameters. weights_file/weights_sha256: a
    learned model's weights, a file name relative to the profile's folder.
    target_site: site whose appearance the output matches (None for per-image methods).
    provenance: training sites, subjects, images, command, date. source_dir: folder
    the profile was loaded from (resolves weights_file; not saved).
    """

    name: str
    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
    target_site: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    unisono_version: str = field(default_factory=package_version)
    description: str = ""
    weights_file: str | None = None
    weights_sha256: str | None = None
    source_dir: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"profile method must be one of {METHODS}, got {self.method!r}")
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"profile name must be a non-empty string, got {self.name!r}")
        _canonical(self.parameters)  # fail early on parameters JSON cannot hold (NaN, arrays)
        if "site_contrast" in self.parameters:
            from harmonize.site_contrast import SiteContrast

            SiteContrast.from_dict(self.parameters["site_contrast"])  # one clear error at load
        if "site_noise" in self.parameters:
            from harmonize.site_noise import SiteNoise

            SiteNoise.from_dict(self.parameters["site_noise"])  # one clear error at load
        if "output_shading" in self.parameters or "target_shading" in self.parameters:
            from harmonize.learned import output_shading
            from harmonize.target_shading import TargetShading

            shading = output_shading(self.parameters)  # one clear error at load
            table = self.parameters.get("target_shading")
            if (shading == "target") != (table is not None):
                held = "given" if table is not None else "absent"
                raise ValueError(
                    "output_shading 'target' and a target_shading table go together (output_shading "
                    f"{shading!r}, target_shading {held}); calibrate the profile with --shading target"
                )
            if table is not None:
                site = TargetShading.from_dict(table).site
                if self.target_site is not None and site != self.target_site:
                    raise ValueError(
                        f"target_shading.site {site!r} is not the profile's target site {self.target_site!r}"
                    )

    @property
    def sha256(self) -> str:
        """Hash of the transform: method, parameters and weights hash (hex, 64 chars)."""
        payload = {
            "method": self.method,
            "parameters": self.parameters,
            "weights_sha256": self.weights_sha256,
        }
        return hashlib.sha256(_canonical(payload).encode()).hexdigest()

    def weights_path(self) -> Path:
        """Absolute path of the weights file (learned methods)."""
        if self.weights_file is None:
            raise ValueError(f"profile {self.name!r} (method {self.method}) has no weights file")
        base = self.source_dir if self.source_dir is not None else Path.cwd()
        return (base / self.weights_file).resolve()

    def to_dict(self) -> dict[str, Any]:
        weights = None
        if self.weights_file is not None:
            weights = {"file": self.weights_file, "sha256": self.weights_sha256}
        return {
            "format": FORMAT,
            "name": self.name,
            "method": self.method,
            "parameters": self.parameters,
            "weights": weights,
            "target_site": self.target_site,
            "provenance": self.provenance,
            "unisono_version": self.unisono_version,
            "description": self.description,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source_dir: Path | None = None) -> HarmonizationProfile:
        if d.get("format") != FORMAT:
            raise ValueError(f"profile format must be {FORMAT!r}, got {d.get('format')!r}")
        for key in ("name", "method"):
            if key not in d:
                raise ValueError(f"profile is missing required field {key!r}")
        weights = d.get("weights") or {}
        prof = cls(
            name=d["name"],
            method=d["method"],
            parameters=dict(d.get("parameters") or {}),
            target_site=d.get("target_site"),
            provenance=dict(d.get("provenance") or {}),
            unisono_version=str(d.get("unisono_version", "unknown")),
            description=str(d.get("description", "")),
            weights_file=weights.get("file"),
            weights_sha256=weights.get("sha256"),
            source_dir=source_dir,
        )
        if "sha256" in d and d["sha256"] != prof.sha256:
            raise ValueError(
                f"profile {prof.name!r} sha256 field {d['sha256']} does not match its content "
                f"({prof.sha256}); "
                "the file was edited without re-fitting"
            )
        return prof


def save_profile(profile: HarmonizationProfile, path: str | Path) -> Path:
    """Write ``profile`` as JSON to ``path`` (".json" appended if missing).

    A learned profile's weights file must already sit in the same folder (its hash is checked).
    """
    p = Path(path)
    if p.suffix != ".json":
        p = p.with_name(p.name + ".json")
    p.parent.mkdir(parents=True, exist_ok=True)
    if profile.weights_file is not None:
        wpath = (p.parent / profile.weights_file).resolve()
        if not wpath.is_file():
            raise FileNotFoundError(f"weights file {wpath} named by profile {profile.name!r} does not exist")
        actual = file_sha256(wpath)
        if profile.weights_sha256 not in (None, actual):
            raise ValueError(
                f"weights file {wpath} has sha256 {actual}, profile says {profile.weights_sha256}"
            )
        profile.weights_sha256 = actual
    p.write_text(json.dumps(profile.to_dict(), indent=2, allow_nan=False) + "\n")
    profile.source_dir = p.parent.resolve()
    return p


def list_profiles() -> list[str]:
    """Names of the profiles shipped in harmonize/profiles/."""
    return sorted(f.stem for f in PROFILE_DIR.glob("*.json"))


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A shipped profile name -> harmonize/profiles/<name>.json; otherwise a file path."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists() or len(p.parts) > 1:
        if not p.is_file():
            raise FileNotFoundError(f"profile file {p} does not exist")
        return p
    shipped = PROFILE_DIR / f"{name_or_path}.json"
    if not shipped.is_file():
        raise ValueError(
            f"unknown profile {str(name_or_path)!r}: give a .json path or one of {list_profiles()}"
        )
    return shipped


def load_profile(name_or_path: str | Path) -> HarmonizationProfile:
    """Load a shipped profile by name or a profile file by path; verifies hashes."""
    p = resolve_profile_path(name_or_path)
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile file {p} is not valid JSON: {exc}") from exc
    prof = HarmonizationProfile.from_dict(data, source_dir=p.parent.resolve())
    if prof.weights_file is not None:
        wpath = prof.weights_path()
        if not wpath.is_file():
            raise FileNotFoundError(f"weights file {wpath} named by profile {p} does not exist")
        if file_sha256(wpath) != prof.weights_sha256:
            raise ValueError(f"weights file {wpath} does not match the sha256 recorded in {p}")
    return prof


def apply_profile(
    profile: HarmonizationProfile, image: object, mask: object | None = None, site: str | None = None
) -> np.ndarray:
    """Harmonize ``image`` (z, y, x) magnitude with ``profile``; returns float32 (z, y, x).

    mask: bool foreground (z, y, x); auto_mask(image) if None. Outside the mask the
    output is exactly 0. site: the scanner the image comes from (the MRD header's
    stationName), used by learned profiles with per-site contrast curves
    (harmonize.site_contrast) or noise levels (harmonize.site_noise); the other methods
    ignore it.
    """
    img = as_magnitude(image)
    m = check_mask(auto_mask(img) if mask is None else mask, img.shape)
    p = profile.parameters
    method = profile.method
    if method == "zscore":
        from harmonize.zscore import zscore

        return zscore(img, m)
    if method == "whitestripe":
        from harmonize.whitestripe import whitestripe

        return whitestripe(img, m, tau=float(p.get("tau", 0.05)), contrast=str(p.get("contrast", "T1")))
    if method == "nyul":
        from harmonize.nyul import NyulScale, apply_nyul

        return apply_nyul(img, NyulScale.from_dict(p), m)
    if method == "cdf":
        from harmonize.cdf import CdfReference, cdf_align

        return cdf_align(img, CdfReference.from_dict(p), m)
    from harmonize.learned import apply_learned

    return apply_learned(profile, img, m, site)
