"""Exponential moving average (EMA) of the weights, as in Polyak averaging / timm's ModelEmaV2.

After every optimiser step:  w_ema <- d_t * w_ema + (1 - d_t) * w,   d_t = min(decay, (1 + t) / (10 + t)),
where t counts the updates. The warm-up term keeps the first few thousand steps from being
dominated by the random initialisation (with decay 0.999 the plain average would remember the
initial weights for ~1000 steps). Floating-point buffers (BatchNorm running statistics) are
averaged the same way; integer buffers (num_batches_tracked) are copied.

The EMA never feeds back into training: the raw weights follow exactly the trajectory they would
without it, so validation, the best checkpoint and evaluation can use the averaged weights at no
cost to the optimisation. A smoothed model matters most while the learning rate is still high.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class WeightEMA:
    """Averaged copies of (model, head); `update()` after each optimiser step."""

    def __init__(self, model: nn.Module, head: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.model, self.head = copy.deepcopy(model).eval(), copy.deepcopy(head).eval()
        for p in [*self.model.parameters(), *self.head.parameters()]:
            p.requires_grad_(False)
        # state_dict tensors share storage with the modules: in-place updates below update them, and a
        # later load_state_dict into the source copies in place, so these lists stay valid.
        self._src = [*model.state_dict().values(), *head.state_dict().values()]
        self._dst = [*self.model.state_dict().values(), *self.head.state_dict().values()]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        self.updates += 1
        for dst, src in zip(self._dst, self._src, strict=True):
            if dst.is_floating_point():
                dst.lerp_(src.detach(), 1.0 - d)
            else:
                dst.copy_(src)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "head": self.head.state_dict(), "updates": self.updates,
                "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.updates = state["updates"]
