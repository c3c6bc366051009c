"""Latency and accuracy benchmarks of exported bundles."""
