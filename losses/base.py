"""Shared machinery of the cosine-margin heads.

Every margin loss of the family computes
    logits_j = s * cos(theta_j)            for j != y
    logits_y = s * psi(theta_y)            for the true class y
with cos(theta_j) = <x / |x|, W_j / |W_j|>, and is then trained with plain cross-entropy.
Subclasses only define psi (`target_logit`, acting on cos(theta_y)); normalisation, the cosine
matrix, scattering the target logit back and scaling live here once.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CosineMarginHead(nn.Module):
    """Base head: `forward(emb, labels)` -> margin logits; `forward(emb)` -> s * cos (no margin)."""

    def __init__(self, in_features: int, n_class: int, scale: float) -> None:
        super().__init__()
        self.in_features, self.n_class, self.scale = in_features, n_class, float(scale)
        self.weight = nn.Parameter(torch.empty(n_class, in_features))
        nn.init.xavier_uniform_(self.weight)

    def set_total_steps(self, n: int) -> None:
        """The engine announces the run's length; heads with a schedule (SphereFace) use it."""

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        """psi(theta_y) written as a function of cos(theta_y); identity = NormFace."""
        return cos_y

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):  # margins need fp32 (or fp64)
            return self._logits(embeddings.to(self.weight.dtype), labels)

    def _logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        cos = self.cosine(embeddings)
        if labels is None:
            return self.scale * cos
        idx = labels.view(-1, 1)
        cos_y = cos.gather(1, idx)
        # scatter (not in-place on a tensor autograd needs) keeps gradients exact for both parts
        logits = cos.scatter(1, idx, self.target_logit(cos_y))
        return self.scale * logits

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_class={self.n_class}, scale={self.scale}"
