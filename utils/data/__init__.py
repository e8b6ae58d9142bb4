"""Images in: the data sets as tensors (splits, loaders, augmentation) and new images from disk or the wild
(paper and ink, MNIST's own normalisation), shared by training and inference.

Layer rule (may import: utils.core, utils.data): tests/test_layout.py checks it.
"""
