"""Benchmarks of onfinish: each figure is measured next to a baseline in the same run.

`make bench` (python -m bench) runs them against a local stack of its own and writes
bench/results/latest.json and the table between the BENCH markers of README.md.
"""
