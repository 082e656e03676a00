"""Benchmarks: time, memory and quality measurements; results are written up in BENCHMARKS.md."""
