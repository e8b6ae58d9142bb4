"""Small convolutions as one matrix product (im2col), where the CPU library is slow.

At 28 px with the s2 stem, ResNet18's layer4 runs on 2x2 maps. oneDNN's convolution kernels are built
for larger maps: measured on a 2-core Xeon with AMX, the weight gradient of a 512->512 3x3 convolution on
a 2x2 map reached 4 % of the bf16 matrix-product peak, and the 1x1 stride-2 shortcuts 3-7 %
(bench/profile_step.py, results/bench/profile/).
Unfolded, the same convolution is one product of [N*H*W, C*k*k] by [C*k*k, C_out]; its two gradients are
two more products and a fold (col2im), all of which autograd derives. Same parameters and state_dict as
nn.Conv2d, so checkpoints move freely between the two; tests/test_models.py checks forward and both
gradients against the library convolution in float64.

Which convolutions take this path: utils/training/tuning.py (`tiny_convs`, from the per-convolution
tables), and whether at all on this machine (`tiny_conv=auto`, timed once and cached). It changes
rounding, hence numbers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MatmulConv2d(nn.Conv2d):
    """nn.Conv2d (no bias, groups=1) computed as unfold + one matrix product; output in NHWC memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if kh == kw == 1 and self.padding == (0, 0):  # a 1x1 convolution needs no unfolding, only a stride
            cols = x[:, :, ::self.stride[0], ::self.stride[1]].permute(0, 2, 3, 1).reshape(n * ho * wo, -1)
            weight = self.weight.reshape(self.out_channels, -1)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, C*k*k, L]
            if self.weight.is_contiguous(memory_format=torch.channels_last):
                # the weight's memory is [C_out, kh, kw, C]: order the columns alike, so the weight matrix is a
                # view. Reshaping it to [C_out, C*k*k] instead copied 9 MB per 512->512 layer forward and
                # backward (25 ms of a 260 ms AMX step, bench.profile_step)
                cols = cols.view(n, -1, kh * kw, cols.shape[-1]).permute(0, 3, 2, 1).reshape(n * ho * wo, -1)
                weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
            else:
                cols = cols.transpose(1, 2).reshape(n * ho * wo, -1)
                weight = self.weight.reshape(self.out_channels, -1)
        out = cols @ weight.t()  # [N*L, C_out]
        return out.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)  # NCHW shape, NHWC memory


def convertible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.bias is None and conv.groups == 1
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))


def to_matmul(conv: nn.Conv2d) -> MatmulConv2d:
    """The same convolution (shared parameters) computed by MatmulConv2d."""
    new = MatmulConv2d.__new__(MatmulConv2d)
    new.__dict__ = conv.__dict__.copy()  # the same Parameter objects: optimiser state and EMA stay valid
    return new


def swap(model: nn.Module, names: set[str]) -> int:
    """Replace the named nn.Conv2d modules of `model` by MatmulConv2d in place; returns how many."""
    done = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            full = next((n for n, m in model.named_modules() if m is child), None)
            if full in names and convertible(child):
                setattr(parent, child_name, to_matmul(child))
                done += 1
    return done
