"""Benchmark harness for `dspkg bench`: network emulation and workloads."""
