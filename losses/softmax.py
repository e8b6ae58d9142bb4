"""Plain softmax cross-entropy: a linear classifier (with bias) on the embedding.

    L = -log( exp(W_y x + b_y) / sum_j exp(W_j x + b_j) )

Same interface as the margin heads: `forward(emb, labels=None)` returns logits; the labels are
ignored because there is no margin to apply.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# read by losses/registry.py without running this file (ast.literal_eval): literals only
SPEC = {
    "name": "softmax", "head": "Softmax", "paper": "none (plain cross-entropy)",
    "formula": "W_y x + b_y",
    "color": "tab:orange", "grid": True,
    "toy": {"lr": 3e-3},
    "params": {},
}


class Softmax(nn.Module):
    def __init__(self, in_features: int, n_class: int) -> None:
        super().__init__()
        self.in_features, self.n_class = in_features, n_class
        self.fc = nn.Linear(in_features, n_class)

    @property
    def weight(self) -> torch.Tensor:
        return self.fc.weight

    def set_total_steps(self, n: int) -> None:
        """No schedule here; see CosineMarginHead.set_total_steps."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):  # logits in full precision
            return self.fc(embeddings.to(self.fc.weight.dtype))
