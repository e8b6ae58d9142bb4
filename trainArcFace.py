"""ResNet18 + ArcFace head (the original's `trainArcFace.py`): parameters and entry point.

Edit a default below to change `python main.py` with flag = 'flag1', or override any field on the
command line: `python main.py arcface --margin=0.3 --scale=64`.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.core.config import TrainParams


@dataclass
class TrainArcFaceParams(TrainParams):
    model_name: str = "resnet18_arcface"
    loss_fuc_type: str = "arcface"
    # s: radius of the hypersphere the logits live on. 16, not the paper's 64: chosen on validation
    # (python -m bench.recipe, results/bench/recipe/): tighter classes and a lower EER on MNIST.
    # Both values are ArcFace's: with --loss_fuc_type=cosface (etc.) that loss's own defaults apply.
    scale: float = 16.0
    margin: float = 0.5  # m: additive angular margin in radians (ArcFace paper: 0.5)


def trainArcFaceMain(params: TrainArcFaceParams | None = None, train: bool = True) -> dict:  # noqa: N802
    """Train (unless train=False) and evaluate ResNet18 + ArcFace; returns the metrics dict."""
    from utils.run.experiment import run  # here: importing the params must not load torch

    return run(params if params is not None else TrainArcFaceParams(), train=train)
