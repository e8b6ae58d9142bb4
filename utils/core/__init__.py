"""The plumbing every layer uses: parameters and options, the data-set registry, errors, atomic files, progress
lines, devices and precision, torchrun, and what made a result (provenance).

Layer rule (may import: utils.core and the loss registry, losses.registry): tests/test_layout.py checks it.
"""
