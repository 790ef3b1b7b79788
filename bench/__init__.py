"""Benchmarks: each module runs standalone (`python -m bench.<name>`) and prints its figures."""
