"""Benchmarks, run by ``make bench``; results are appended to ``bench/RESULTS.md``."""
