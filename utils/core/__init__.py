"""The plumbing every layer uses: parameters and options, errors, atomic files, progress lines, devices and
precision, torchrun, and what made a result (provenance).

Layer rule (may import: utils.core, the registries (losses.registry, utils.data.registry)):
tests/test_layout.py checks it.
"""
