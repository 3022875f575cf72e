"""recon package (see docs/architecture.md)."""
