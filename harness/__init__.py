"""Helpers shared by the soak run and the benchmarks (not shipped)."""
