"""Traveling-subject studies on disk: every subject scanned at every site, with ground truth for evaluation.

A study folder holds ``study.json`` (format ``unisono.harmonization-study/1``:
sites, subjects, each scan's subject/site/repeat/atrophy and file, provenance)
and one ``.npz`` per scan with

    image  float32 (z, y, x)  reconstructed magnitude, scanner units
    mask   bool    (z, y, x)  auto_mask(image): what harmonization itself uses
    labels int8    (z, y, x)  ground-truth tissue (0 background, 1 CSF, 2 GM, 3 WM) — evaluation only

``repeat`` numbers rescans of one subject at one site (fresh noise): a rescan at
the target site is the honest "same-site" training pair for the learned model
(pairing a scan with itself would teach it to reproduce the noise). Repeat
``CLEAN_REPEAT`` (-1) is a noise-free twin of repeat 0: the same simulation (seed and
spin sampling) with its thermal noise off, reconstructed with repeat 0's noise
prewhitening, so it is that scan without its noise, in the same units — the "exact
pair" a learned model can be trained against. Evaluation never scores clean scans.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonize.mask import auto_mask
from harmonize.synthetic import SITES, synthetic_scan, synthetic_subject

FORMAT = "unisono.harmonization-study/1"
#: repeat index of a scan's noise-free twin (see the module docstring)
CLEAN_REPEAT = -1


@dataclass(frozen=True)
class StudyScan:
    """One scan: subject index, site name, repeat index, the subject's atrophy factor,
    image (z, y, x) float32, mask bool, labels int8 or None (no ground truth)."""

    subject: int
    site: str
    repeat: int
    atrophy: float
    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.subject, self.site, self.repeat)

    @property
    def clean(self) -> bool:
        """True for a noise-free twin (repeat CLEAN_REPEAT)."""
        return self.repeat == CLEAN_REPEAT

    @property
    def file_name(self) -> str:
        rep = "clean" if self.clean else f"rep-{self.repeat}"
        return f"sub-{self.subject:03d}_site-{self.site}_{rep}.npz"


@dataclass
class Study:
    """A set of scans plus where they came from (source: "simulator" or "synthetic")."""

    scans: list[StudyScan]
    source: str = "unknown"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = [s.key for s in self.scans]
        if len(set(keys)) != len(keys):
            raise ValueError("study has two scans with the same (subject, site, repeat)")

    @property
    def sites(self) -> list[str]:
        return sorted({s.site for s in self.scans})

    @property
    def subjects(self) -> list[int]:
        return sorted({s.subject for s in self.scans})

    def get(self, subject: int, site: str, repeat: int = 0) -> StudyScan:
        for s in self.scans:
            if s.key == (subject, site, repeat):
                return s
        raise ValueError(f"study has no scan of subject {subject} at site {site!r} (repeat {repeat})")

    def select(
        self,
        subjects: Iterable[int] | None = None,
        sites: Iterable[str] | None = None,
        repeat: int | None = 0,
    ) -> list[StudyScan]:
        """Scans of the given subjects and sites (None = all), of one repeat (None = all repeats
        that carry noise, i.e. every repeat but CLEAN_REPEAT; ask for CLEAN_REPEAT explicitly)."""
        subj = None if subjects is None else set(subjects)
        st = None if sites is None else set(sites)
        return [
            s
            for s in self.scans
            if (subj is None or s.subject in subj)
            and (st is None or s.site in st)
            and (s.repeat == repeat if repeat is not None else not s.clean)
        ]


def save_study(study: Study, folder: str | Path) -> Path:
    """Write ``study`` to ``folder`` (created); returns the path of study.json."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in study.scans:
        arrays = {"image": s.image.astype(np.float32), "mask": s.mask.astype(bool)}
        if s.labels is not None:
            arrays["labels"] = s.labels.astype(np.int8)
        np.savez_compressed(out / s.file_name, **arrays)
        entries.append(
            {
                "subject": s.subject,
                "site": s.site,
                "repeat": s.repeat,
                "atrophy": s.atrophy,
                "file": s.file_name,
            }
        )
    manifest = {
        "format": FORMAT,
        "source": study.source,
        "sites": study.sites,
        "subjects": study.subjects,
        "scans": entries,
        "provenance": study.provenance,
    }
    path = out / "study.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_study(folder: str | Path) -> Study:
    """Read a study folder written by save_study (or `unisono harmonize study`)."""
    root = Path(folder)
    path = root / "study.json" if root.is_dir() else root
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a harmonization study: no study.json")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format must be {FORMAT!r}, got {manifest.get('format')!r}")
    scans = []
    for e in manifest["scans"]:
        with np.load(path.parent / e["file"]) as z:
            scans.append(
                StudyScan(
                    int(e["subject"]),
                    str(e["site"]),
                    int(e.get("repeat", 0)),
                    float(e["atrophy"]),
                    z["image"],
                    z["mask"].astype(bool),
                    z["labels"] if "labels" in z.files else None,
                )
            )
    return Study(scans, manifest.get("source", "unknown"), manifest.get("provenance", {}))


def synthetic_study(
    subjects: Sequence[int],
    sites: Sequence[str] = ("A", "B", "C"),
    shape: tuple[int, int, int] = (1, 96, 96),
    rescan_site: str | None = None,
    rescan_subjects: Sequence[int] = (),
) -> Study:
    """A study from harmonize.synthetic (closed-form sites, see that module).

    rescan_site/rescan_subjects: also scan these subjects a second time (repeat 1,
    fresh noise) at that site.
    """
    for s in sites:
        if s not in SITES:
            raise ValueError(f"unknown synthetic site {s!r}; known: {sorted(SITES)}")
    scans = []
    for i in subjects:
        subj = synthetic_subject(i, shape)
        plan = [(site, 0) for site in sites]
        if rescan_site is not None and i in rescan_subjects:
            plan.append((rescan_site, 1))
        for site, rep in plan:
            img = synthetic_scan(subj, site, seed=rep)
            scans.append(StudyScan(i, site, rep, subj.atrophy, img, auto_mask(img), subj.labels.copy()))
    return Study(scans, "synthetic", {"shape": list(shape), "generator": "harmonize.synthetic"})
