"""harmonize package (see docs/architecture.md)."""
