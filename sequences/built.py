"""The result of building a protocol: a pypulseq Sequence plus what describes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ismrmrd.xsd as mx
import numpy as np
import pypulseq as pp

from sequences.header import header_to_xml, header_xml_path
from sequences.systems import SystemProfile


@dataclass
class BuiltSequence:
    """A protocol built for one hardware profile.

    Attributes
    ----------
    seq : pypulseq.Sequence, starting with the noise prescan block.
    header : the MRD header describing its encoding.
    params : resolved protocol parameters in SI units (plus derived ``actual_*`` values).
    system : the profile it was built for.
    protocol : protocol name.
    trajectory_fn : for non-Cartesian protocols, a function returning the
        k-space trajectory per imaging ADC (see :meth:`trajectory`).
    """

    seq: pp.Sequence
    header: mx.ismrmrdHeader
    params: dict[str, Any]
    system: SystemProfile
    protocol: str
    trajectory_fn: Callable[[], list[np.ndarray]] | None = field(default=None, repr=False)

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``X.seq`` and the MRD header ``X.mrd.xml`` beside it; returns both paths."""
        path = Path(path)
        if path.suffix != ".seq":
            path = path.with_suffix(".seq")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.seq.write(str(path))
        xml = header_xml_path(path)
        xml.write_text(header_to_xml(self.header))
        return path, xml

    def report(self, pns: bool = True) -> dict:
        """Timing check, TE/TR measured from the blocks, k-space coverage, gradient and slew use
        against this profile and (optionally) PNS: see :func:`sequences.analysis.summarize`."""
        from sequences.analysis import summarize

        return summarize(self.seq, self.system, pns=pns)

    def trajectory(self) -> list[np.ndarray]:
        """k-space sample positions per imaging ADC, each (n_samples, 3) in 1/m (kx, ky, kz).

        Cartesian protocols compute it from the gradients (pypulseq's
        ``calculate_kspace``); non-Cartesian ones from their design, so the
        simulator can write it into each acquisition's ``traj``.
        """
        if self.trajectory_fn is not None:
            return self.trajectory_fn()
        from sequences.analysis import kspace_per_adc

        return [k for k, is_noise in zip(*kspace_per_adc(self.seq), strict=True) if not is_noise]


def achieved_params(
    p: dict[str, Any], *, te: float, tr: float, min_tr: float, dwell: float, z_pos: Any, **extra: Any
) -> dict[str, Any]:
    """The protocol's resolved parameters ``p`` plus what the built sequence achieved (SI units).

    ``actual_TE``/``actual_TR`` on the block raster, ``min_TR``, the readout dwell, the slice
    positions (m) and any builder-specific ``extra`` values.
    """
    params = dict(p)
    params.update(
        actual_TE=te,
        actual_TR=tr,
        min_TR=min_tr,
        readout_dwell=dwell,
        slice_positions=[float(z) for z in z_pos],
        **extra,
    )
    return params
