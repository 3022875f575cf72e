"""gadgets package (see docs/architecture.md)."""
