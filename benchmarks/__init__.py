"""`make bench`: ingestion and purge measured against their ceilings and the naive way.

Every section works in databases, topics and consumer groups of its own, named
after the run (``bench_<run>_*``, ``bench.<run>.*``), and removes them at the end.
Figures are ratios measured side by side in one run; nothing here asserts a time.
"""
