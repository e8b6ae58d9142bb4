"""ResNet18 + softmax classifier (the original's `trainResnet.py`): parameters and entry point.

Same backbone and embedding as the ArcFace model; only the head (a plain linear layer) and the
loss (cross-entropy on its logits) differ. `python main.py softmax --lr=1e-3` overrides a field.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.core.config import TrainParams


@dataclass
class TrainResnetParams(TrainParams):
    model_name: str = "resnet18_softmax"
    loss_fuc_type: str = "softmax"
    lr: float = 2e-3  # chosen on validation (docs/en/defaults.md): lowers the EER
    weight_decay: float = 5e-2


def trainResnetSoftmaxMain(params: TrainResnetParams | None = None, train: bool = True) -> dict:  # noqa: N802
    """Train (unless train=False) and evaluate ResNet18 + softmax; returns the metrics dict."""
    from utils.run.experiment import run  # here: importing the params must not load torch

    return run(params if params is not None else TrainResnetParams(), train=train)
