"""Runnable examples: `make demo` and its sample traffic (shipped in neither wheel nor image)."""
