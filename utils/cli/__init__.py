"""The command-line front ends beyond a single run: the inference commands, the margin-loss grid, the seeds study
and the figures.

Layer rule (may import: everything in utils, losses and models (never the top-level scripts)):
tests/test_layout.py checks it.
"""
