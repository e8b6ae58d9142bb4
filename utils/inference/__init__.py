"""Using a trained model: the Recognizer (embed, verify, enrol, search), galleries, the checkpoint embedder and
the ONNX export with its parity check. Never imports the training code.

Layer rule (may import: utils.core, utils.data, utils.scoring, models, utils.inference): tests/test_layout.py
checks it.
"""
