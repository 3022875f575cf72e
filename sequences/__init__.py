"""sequences: a vendor-agnostic protocol library in pypulseq (see docs/sequences.md).

Protocols are physicist-editable TOML files (``sequences/protocols``), hardware
profiles likewise (``sequences/systems``); :func:`build_protocol` turns one
into a pypulseq sequence plus the MRD header that describes its encoding.
"""

from sequences.analysis import read_sequence
from sequences.built import BuiltSequence
from sequences.header import header_for_seq_file
from sequences.library import build_protocol, list_protocols
from sequences.protocol import ProtocolError, load_protocol
from sequences.systems import SystemProfile, list_systems, load_system

__all__ = [
    "BuiltSequence",
    "ProtocolError",
    "SystemProfile",
    "build_protocol",
    "header_for_seq_file",
    "list_protocols",
    "list_systems",
    "load_protocol",
    "load_system",
    "read_sequence",
]
