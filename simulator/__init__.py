"""simulator package (see docs/architecture.md)."""
