"""One run end to end: params -> data -> model -> fit -> evaluation of the best checkpoint -> the results files,
in run folders that are locked, staged and published whole.

Layer rule (may import: utils.core, utils.data, utils.scoring, utils.training, losses, models, utils.run):
tests/test_layout.py checks it.
"""
