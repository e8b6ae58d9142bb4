"""Column order of a convolution computed as one matrix product, side by side (issue 32).

    python -m bench.matmul_conv_order [--amp=bf16|off] [--reps=40]

With an NHWC (channels_last) weight, models/matmul_conv.py orders the unfolded columns as (kh, kw, C) so that
the weight matrix [C_out, kh*kw*C] is a view of the weight's memory. The baseline orders them as unfold gives
them, (C, kh, kw), which needs a copy of the weight (and of its gradient) every step. Both are timed here,
forward + backward, on layer4's shapes at 28 px (2x2 maps, batch 128), alternating, in one process.
Writes results/bench/matmul_conv_order.json naming the CPU, its kind, the precision and the commit.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.profile_step import _best
from models.matmul_conv import MatmulConv2d, to_matmul
from utils.core.io import write_json
from utils.core.options import Option, refuse_rest, run_script, split
from utils.core.provenance import code_identity, cpu_kind, cpu_model

SHAPES = ((512, 512, 1), (256, 512, 2))  # (C_in, C_out, stride) of layer4's 3x3 convolutions at 28 px


class UnfoldOrder(MatmulConv2d):
    """The baseline: columns in unfold's (C, kh, kw) order whatever the weight's memory layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ho, wo = (h + 2 - 3) // self.stride[0] + 1, (w + 2 - 3) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        cols = cols.transpose(1, 2).reshape(n * ho * wo, -1)
        out = cols @ self.weight.reshape(self.out_channels, -1).t()
        return out.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)


def fwd_bwd_ms(conv: nn.Module, x: torch.Tensor, dtype: torch.dtype | None, reps: int) -> float:
    """The fastest of `reps` forward + backward passes (bench.profile_step's timer), in ms."""
    def once() -> None:
        with torch.autocast("cpu", dtype or torch.bfloat16, enabled=dtype is not None):
            y = conv(x)
        y.float().sum().backward()
        conv.weight.grad, x.grad = None, None

    return _best(once, reps) * 1e3


OPTIONS = {"amp": Option("bf16", "precision: bf16 | off (fp32)"),
           "reps": Option("40", "timed passes per measurement", int),
           "out": Option("results/bench/matmul_conv_order.json", "JSON to write")}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.matmul_conv_order", rest, OPTIONS)
    dtype = torch.bfloat16 if opts["amp"] == "bf16" else None
    rows = []
    for cin, cout, stride in SHAPES:
        torch.manual_seed(0)
        lib = nn.Conv2d(cin, cout, 3, stride, 1, bias=False).to(memory_format=torch.channels_last)
        ours = to_matmul(lib)
        base = UnfoldOrder.__new__(UnfoldOrder)
        base.__dict__ = lib.__dict__.copy()
        side = 4 if stride == 2 else 2
        x = torch.randn(128, cin, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
        torch.testing.assert_close(ours(x), base(x), rtol=1e-4, atol=1e-4)  # the same convolution
        b, o = fwd_bwd_ms(base, x, dtype, opts["reps"]), fwd_bwd_ms(ours, x, dtype, opts["reps"])
        rows.append({"conv": f"{cin}->{cout} 3x3 stride {stride}", "map": f"{side}x{side}",
                     "unfold_order_ms": b, "weight_order_ms": o, "speedup": b / o})
        print(f"{rows[-1]['conv']} on {side}x{side}, batch 128, fwd+bwd: unfold order {b:.2f} ms, "
              f"weight order {o:.2f} ms: {b / o:.2f}x", flush=True)
    write_json(Path(opts["out"]), {"cpu": cpu_model(), "cpu_kind": cpu_kind(), "threads": torch.get_num_threads(),
                                   "precision": "bf16" if dtype else "fp32", "rows": rows, **code_identity()})
    print(f"wrote {opts['out']}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
