"""Training: the step-level engine (one epoch, validation, embedding), fit, the weight EMA and the optional
TensorBoard log.

Layer rule (may import: utils.core, utils.data, utils.scoring, models, utils.training): tests/test_layout.py
checks it.
"""
