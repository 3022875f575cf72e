"""unisono command line: wires subcommands to sequences, simulator, recon, gadgets and harmonize."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unisono")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
