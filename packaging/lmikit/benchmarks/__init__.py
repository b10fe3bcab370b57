"""Benchmarks of lmikit's host-side code, run as `python -m lmikit.benchmarks.<name>`."""
