"""Benchmarks and their peers, as `python -m benchmarks.NAME`: each prints
what it measured as JSON (docs/performance.md, docs/serving.md)."""
