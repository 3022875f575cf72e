"""simulator: the Bloch-simulated virtual scanner (see docs/simulator.md, docs/architecture.md).

Run any Pulseq sequence on a digital phantom at a virtual site and get MRD acquisitions::

    from simulator import brain_phantom, load_site, simulate, write_raw
    site = load_site("siteA")
    phantom = brain_phantom(field_T=site.field_T, matrix=128)
    write_raw("raw.h5", header, simulate("gre.seq", phantom, site, header=header))
"""

from simulator.brain import brain_phantom
from simulator.events import SequenceError
from simulator.motion import MotionTrajectory, RigidTransform
from simulator.mrd import minimal_header, with_site, write_raw
from simulator.phantom import Phantom, load_phantom, save_phantom, shepp_logan_phantom
from simulator.scanner import simulate
from simulator.site import Site, list_sites, load_site

__all__ = [
    "MotionTrajectory",
    "Phantom",
    "RigidTransform",
    "SequenceError",
    "Site",
    "brain_phantom",
    "list_sites",
    "load_phantom",
    "load_site",
    "minimal_header",
    "save_phantom",
    "shepp_logan_phantom",
    "simulate",
    "with_site",
    "write_raw",
]
