"""Benchmarks: each prints figures and ratios measured in the same run; tests never assert timings."""
