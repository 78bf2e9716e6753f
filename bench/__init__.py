"""The performance and reliability benchmarks that `divcfg bench` runs (BENCHMARKS.md). May import every room below it.
"""
