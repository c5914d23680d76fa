"""Benchmarks with targets: `python -m bench` (see bench/README in RESULTS.md)."""
