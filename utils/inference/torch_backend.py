"""The embedder of a checkpoint, for utils/inference/recognizer.py and the export (torch; no training code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import get_model
from utils.core.errors import CheckpointError
from utils.core.io import evaluation_weights, load_checkpoint

CARD_KEYS = ("input", "thresholds", "far_curve")


class NormalisedEmbedder(nn.Module):
    """The network as deployed: NCHW float input -> L2-normalised embedding (also the ONNX graph)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def load_network(path: Path) -> tuple[NormalisedEmbedder, dict]:
    """The evaluated weights of a checkpoint (its EMA when it has one) in eval mode, and the checkpoint."""
    state = load_checkpoint(path, mmap=True)  # only the evaluated weights are read: a faster cold start
    missing = [k for k in CARD_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(missing)} (it was trained before thresholds were "
                              f"calibrated); add them with python main.py test --model_name=... first.")
    p, card = state["params"], state["input"]
    try:  # every backbone get_model builds; the weights come from the checkpoint, never a download
        net = get_model(p.get("backbone_type", "resnet18"), p["embedding_dim"], p["stem"], in_channels=card["channels"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} names a network this code cannot build ({e}); use a checkpoint of "
                              f"this project's backbones.") from None
    try:
        net.load_state_dict(evaluation_weights(state)["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"the weights in {path} do not fit its own params ({str(e).splitlines()[0][:120]}); "
                              f"the file is damaged: use another checkpoint.") from None
    return NormalisedEmbedder(net).eval(), state


def load_torch_embedder(path: Path, device: str = "cpu") -> tuple:
    """(embedder: float32 NCHW numpy -> unit embeddings numpy, checkpoint state), fp32 on `device`."""
    net, state = load_network(path)
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev)

    @torch.inference_mode()
    def embedder(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return embedder, state
