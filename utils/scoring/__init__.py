"""Scoring and drawing: streamed 1-NN and verification metrics, calibrated thresholds, the seeds study's
statistics, DET/loss curves and the papers' figures. No training, no files of runs.

Layer rule (may import: utils.core, losses.registry, utils.scoring): tests/test_layout.py checks it.
"""
