"""Angles between unit embeddings, class centres and class weights: how tight and how far apart the
classes are (figures' angles.png, and the ArcFace paper's Table 3 statistics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def angle_stats(emb: torch.Tensor, y: torch.Tensor, centres: torch.Tensor, weights: torch.Tensor) -> dict:
    """Angles (degrees) of unit embeddings to their class centre / nearest other centre, and Table 3's
    W-EC (to the class weight), W-Inter (weights' nearest neighbour), Intra (to the feature centre),
    Inter (feature centres' nearest neighbour), all means over images or classes."""
    def deg(cos: torch.Tensor) -> torch.Tensor:
        return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))

    e, c, w = F.normalize(emb, dim=1), F.normalize(centres, dim=1), F.normalize(weights, dim=1)
    to_c = e @ c.T
    own = deg(to_c.gather(1, y.view(-1, 1)).squeeze(1))
    other = deg(to_c.scatter(1, y.view(-1, 1), -2.0).amax(1))
    eye = torch.eye(len(c), dtype=torch.bool)
    return {"own": own, "other": other,
            "table3": {"W-EC": float(deg((e * w[y]).sum(1)).mean()),
                       "W-Inter": float(deg((w @ w.T).masked_fill(eye, -2).amax(1)).mean()),
                       "Intra": float(own.mean()), "Inter": float(deg((c @ c.T).masked_fill(eye, -2).amax(1)).mean())}}
