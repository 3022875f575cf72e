"""Streaming runtime and gadgets: MRD v1 server/client, chain executor, MRD/NIfTI/DICOM IO.

    from gadgets import load_chain, run_chain, MRDServer, send_file, read_raw, write_images

See docs/architecture.md (contract) and docs/gadgetron.md (running gadgets under Gadgetron).
"""

from gadgets.buffers import ImageBuffer, KSpaceBuffer
from gadgets.chain import Chain, list_chains, load_chain, parse_chain
from gadgets.client import RemoteChainError, send_file, send_stream
from gadgets.mrdfile import read_header, read_images, read_raw, write_images, write_raw
from gadgets.runtime import ChainError, Connection, RunningChain, run_chain
from gadgets.server import MRDServer

__all__ = [
    "Chain",
    "ChainError",
    "Connection",
    "ImageBuffer",
    "KSpaceBuffer",
    "MRDServer",
    "RemoteChainError",
    "RunningChain",
    "list_chains",
    "load_chain",
    "parse_chain",
    "read_header",
    "read_images",
    "read_raw",
    "run_chain",
    "send_file",
    "send_stream",
    "write_images",
    "write_raw",
]
