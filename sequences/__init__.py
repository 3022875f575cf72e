"""sequences package (see docs/architecture.md)."""
