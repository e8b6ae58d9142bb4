"""A digit-ness score read off the pixels (the reject score "pixels"): a small CNN on the network's input.

Every other score of utils/inference/reject.py reads the embedding, which was trained on digits alone: it places
many letters, symbols and scribbles where digits lie, so no score read off it can take them apart (the learned
score, fitted to do exactly that on the embedding, still passes about a sixth of them: docs/en/wild.md, rounds
six and seven). This one looks at what the embedding was computed from, the prepared 28 x 28 image (uint8, as
`Recognizer.load` makes it), with a network of its own, fitted by `python main.py wild` like "learned" to tell
digits from generated outliers (outlier exposure, Hendrycks et al., ICLR 2019, on a separate detector):

    s(x) = w4 . relu(W3 flat(pool(relu(conv2(pool(relu(conv1(x / 255)))))))) + b4

conv1: 3 x 3, 1 -> C1 channels, conv2: 3 x 3, C1 -> C2 (both padded by 1), pool: 2 x 2 max, W3: [HIDDEN, C2 S^2 / 16].
Fitted with torch (AdamW, the class-balanced logistic loss of learned_reject.py, EPOCHS passes, seeded); scored in
numpy from the stored float16 weights, so calibration, the checkpoint path and an ONNX export give the same
numbers and the torch-free path needs no torch. The digit model itself is not touched: its 1-NN and EER stay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from utils.core.io import pack, unpack

if TYPE_CHECKING:  # fitting only: scoring needs numpy alone
    import torch

C1, C2, HIDDEN = 32, 64, 64
EPOCHS, BATCH, LR, WEIGHT_DECAY = 10, 128, 1e-3, 1e-4
SCORE_BATCH = 512  # images per numpy pass: the second layer's patches take ~60 MB at 28 px


def _network(size: int) -> torch.nn.Sequential:
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(1, C1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(C1, C2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(C2 * (size // 4) ** 2, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def fit_pixels(digit_groups: list[np.ndarray], outliers: np.ndarray, epochs: int | None = None,
               seed: int = 0) -> dict:
    """The detector of digits, uint8 [N_g, S, S] per group, against outliers [M, S, S] (EPOCHS passes unless
    given), as stored in reject.json. Every group weighs the same: a few thousand degraded or pen-written digits
    count as much as 50,000 of MNIST's, so that the threshold set on MNIST's digits does not turn them away."""
    import torch
    import torch.nn.functional as F

    groups = [g for g in digit_groups if len(g)]
    size, epochs = groups[0].shape[1], EPOCHS if epochs is None else epochs
    torch.manual_seed(seed)
    net = _network(size)
    x = torch.from_numpy(np.concatenate([*groups, outliers])).float()[:, None] / 255.0
    n_digits = sum(len(g) for g in groups)
    y = torch.cat([torch.ones(n_digits), torch.zeros(len(outliers))])
    # digits and outliers count half each; within the digits each group the same; scaled to a mean weight of 1
    w = torch.cat([torch.full((len(g),), 0.5 / len(groups) / len(g)) for g in groups] +
                  [torch.full((len(outliers),), 0.5 / len(outliers))]) * len(y)
    opt = torch.optim.AdamW(net.parameters(), LR, weight_decay=WEIGHT_DECAY)
    order = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for a in range(0, len(x) - BATCH + 1, BATCH):
            i = perm[a:a + BATCH]
            loss = (F.binary_cross_entropy_with_logits(net(x[i])[:, 0], y[i], reduction="none") * w[i]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    p = [t.detach().double().numpy() for t in net.parameters()]
    return {"size": size, "conv1": pack(p[0]), "b1": pack(p[1]), "conv2": pack(p[2]), "b2": pack(p[3]),
            "w3": pack(p[4]), "b3": pack(p[5]), "w4": pack(p[6]), "b4": float(p[7][0]),
            "fitted_on": {"digits": n_digits, "digit_groups": [len(g) for g in groups], "outliers": len(outliers),
                          "epochs": epochs, "seed": seed,
                          "last_batch_loss": loss.item()}}


def _conv_relu_pool(a: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[B, H, W, Cin] -> relu(3 x 3 convolution, padded by 1) max-pooled 2 x 2 -> [B, H // 2, W // 2, Cout]."""
    b, h, w, _ = a.shape
    patches = sliding_window_view(np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
    # patches [B, H, W, Cin, 3, 3] meet the weight [Cout, Cin, 3, 3] in the same (Cin, kh, kw) order
    out = np.maximum(patches.reshape(b * h * w, -1) @ weight.reshape(len(weight), -1).T + bias, 0.0)
    out = out.reshape(b, h, w, -1)[:, :h // 2 * 2, :w // 2 * 2]
    return out.reshape(b, h // 2, 2, w // 2, 2, -1).max(axis=(2, 4))


def pixel_scores(x: np.ndarray, entry: dict) -> np.ndarray:
    """s(x) of prepared images uint8 [N, S, S] under a stored `fit_pixels` entry: higher = more digit-like."""
    c1, c2 = unpack(entry["conv1"]).astype(np.float32), unpack(entry["conv2"]).astype(np.float32)
    b1, b2 = unpack(entry["b1"]).astype(np.float32), unpack(entry["b2"]).astype(np.float32)
    w3, b3 = unpack(entry["w3"]).astype(np.float32), unpack(entry["b3"]).astype(np.float32)
    w4 = unpack(entry["w4"]).astype(np.float32)
    out = []
    for a in range(0, len(x), SCORE_BATCH):
        h = _conv_relu_pool(x[a:a + SCORE_BATCH, :, :, None].astype(np.float32) / 255.0, c1, b1)
        h = _conv_relu_pool(h, c2, b2)
        flat = h.transpose(0, 3, 1, 2).reshape(len(h), -1)  # torch's Flatten of [B, C, H, W]
        out.append(np.maximum(flat @ w3.T + b3, 0.0) @ w4[0] + entry["b4"])
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
