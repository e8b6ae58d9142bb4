"""The training loss, with the outlier term when a run trains with generated non-digits (label -1).

With `outliers=off` it is exactly the cross-entropy every run used before (same call, same numbers).
Otherwise the batch mixes known images (label >= 0, logits with the head's margin) and outliers
(label -1, the head's plain logits: scaled cosines, or the linear layer's output for softmax), and

    L = CE(known) + w * T(outliers)

  uniform  (outlier exposure, Hendrycks et al., ICLR 2019): the cross-entropy of an outlier's logits to
           the uniform distribution over the C classes, T = -1/C * sum_c log softmax(z)_c;
  energy   (Liu et al., NeurIPS 2020): with the energy E(z) = -logsumexp(z), squared hinges that push
           known images below m_in and outliers above m_out,
           T = mean_known relu(E - m_in)^2 + mean_outliers relu(m_out - E)^2.

Means are over the rows of each kind in the batch (a batch with none of a kind adds nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.core.config import TrainParams


def _mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def training_loss(logits: torch.Tensor, y: torch.Tensor, params: TrainParams) -> torch.Tensor:
    """The step's loss for logits [B, C] and labels [B] (-1 = a generated non-digit)."""
    if params.outliers == "off":
        return F.cross_entropy(logits, y, label_smoothing=params.label_smoothing)
    z = logits.float()
    known = (y >= 0).float()
    ce = F.cross_entropy(z, y.clamp(min=0), reduction="none", label_smoothing=params.label_smoothing)
    if params.outliers == "uniform":
        term = _mean(-F.log_softmax(z, dim=1).mean(dim=1), 1 - known)
    else:
        energy = -torch.logsumexp(z, dim=1)
        term = _mean(F.relu(energy - params.energy_in) ** 2, known) + \
            _mean(F.relu(params.energy_out - energy) ** 2, 1 - known)
    return _mean(ce, known) + params.outlier_weight * term
