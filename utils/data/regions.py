"""The scipy.ndimage operations that reading an image needs, in numpy: a box mean, 4-connected parts,
flat grey dilation and erosion, and the distance to the background.

Why not scipy: importing scipy.ndimage costs ~0.3 s on a 2-core CPU (it imports scipy's array-API layer
and parses the docstrings of its functions), more than half of what a cold `verify` spends beyond
`import torch` (docs/en/performance.md). Everything a checkpoint or ONNX model needs to read an image with
`fit` or `mnist` or `mnist_stroke` normalisation and to test its ink statistics is here; the wild set's generated
pens still use scipy, and so do images of over a megapixel (SCIPY_ABOVE), where scipy's speed pays for its
import.

Each gives scipy's result (tests/test_regions.py compares them): `box_mean` is `uniform_filter(a, size)`
(mode "reflect", each pass rounded to float32 as scipy does), `label` is `label(mask)` with its default
cross-shaped structure (parts numbered in raster order of their first pixel), `window_extreme` is
`grey_dilation` / `grey_erosion` / `maximum_filter` with a symmetric flat footprint (mode "reflect"), and
`distance_to_background` is `distance_transform_edt` (exact: the square root of an integer).
"""

from __future__ import annotations

from functools import cache

import numpy as np

# above this many pixels scipy's C loops save more than its import costs (numpy's box mean takes ~5x
# scipy's time, ~0.3 s more at a megapixel on the AVX2 EPYC): a large photo is handed to scipy
SCIPY_ABOVE = 1 << 20


@cache
def _mirrored(n: int, half: int) -> np.ndarray:
    """Indices -half .. n+half-1 of an axis of length n, mirrored into it (d c b a | a b c d | d c ...)."""
    i = np.arange(-half, n + half) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """The mean over a size x size window around each pixel of a 2-D array (odd size), the border
    mirrored (d c b a | a b c d); float32 like scipy's uniform_filter on float32 input."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"box size must be odd and >= 1, got {size}")
    out = np.asarray(a, dtype=np.float32)
    if out.size > SCIPY_ABOVE:
        from scipy import ndimage

        return ndimage.uniform_filter(out, size=size)
    for axis in (0, 1):  # one axis after the other, each pass rounded to float32 like scipy's output
        x = out if axis == 0 else out.T
        n = len(x)
        # windows are a few pixels (a ~1 % of the sheet): summing the shifted rows in float64 beats a
        # running sum (numpy's cumsum is slow along an axis) and rounds no worse
        p = x[_mirrored(n, size // 2)].astype(np.float64)
        acc = p[:n].copy()
        for k in range(1, size):
            acc += p[k:k + n]
        x = (acc / size).astype(np.float32)
        out = x if axis == 0 else x.T
    return np.ascontiguousarray(out)


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 4-connected parts of a 2-D boolean mask: (int32 labels, 0 off the mask and 1..n on it, n).

    Works on runs (the horizontal stretches of each row): each run is linked to the runs it touches in
    the next row, then the links are merged in rounds (about log of the number of runs), all in whole-array
    operations."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"label takes a 2-D mask, got {m.ndim} dimensions")
    if m.size > SCIPY_ABOVE:
        from scipy import ndimage

        return ndimage.label(m)
    first = m.copy()
    first[:, 1:] &= ~m[:, :-1]  # the first pixel of each run
    run = np.cumsum(first.ravel(), dtype=np.int64).reshape(m.shape) - 1  # run index of every mask pixel
    n = int(run[-1, -1]) + 1 if m.size else 0
    if n == 0:
        return np.zeros(m.shape, dtype=np.int32), 0
    # a run touches a run of the next row where both have a pixel in one column; one link per stretch
    both = m[:-1] & m[1:]
    link = both.copy()
    link[:, 1:] &= ~both[:, :-1]
    a, b = run[:-1][link], run[1:][link]
    root = np.arange(n)
    while True:  # hook the larger root of every link onto the smaller, then flatten every chain
        ra, rb = root[a], root[b]
        if np.array_equal(ra, rb):
            break
        low = np.minimum(ra, rb)
        np.minimum.at(root, ra, low)
        np.minimum.at(root, rb, low)
        while True:
            nxt = root[root]
            if np.array_equal(nxt, root):
                break
            root = nxt
    # a part's root is its first run in raster order, so numbering the roots in order is scipy's numbering
    number = np.cumsum(root == np.arange(n), dtype=np.int32)
    out = np.where(m, number[root][run], 0).astype(np.int32)
    return out, int(number[-1])


def count_parts(masks: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The number of 4-connected parts in each of N masks [N, H, W], as `label` counts them one by one, but
    labelled at once: the masks stacked into one tall image with an empty row after each, so that no part
    crosses from one to the next; parts are numbered in raster order, so each mask's count is its largest
    number less the largest before it."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"count_parts takes masks [N, H, W], got {m.ndim} dimensions")
    counts = np.zeros(len(m), dtype=np.int64)
    for s in range(0, len(m), chunk):
        part = m[s:s + chunk]
        tall = np.zeros((len(part), m.shape[1] + 1, m.shape[2]), dtype=bool)
        tall[:, :-1] = part
        numbers = label(tall.reshape(-1, m.shape[2]))[0].reshape(len(part), -1)
        top = np.maximum.accumulate(numbers.max(1, initial=0))
        counts[s:s + chunk] = np.diff(top, prepend=0)
    return counts


def disk(r: int) -> np.ndarray:
    """A round footprint of radius r (a (2r + 1)-pixel square, True inside the circle)."""
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def window_extreme(a: np.ndarray, footprint: np.ndarray, largest: bool) -> np.ndarray:
    """The largest (grey dilation) or smallest (grey erosion) value of a 2-D array under a flat footprint
    centred on each pixel (odd sides, symmetric about its centre row), the border mirrored as scipy's mode
    "reflect". Each footprint row is one horizontal run, so the row-wise extremes over runs of every
    half-width are built once, growing by one pixel each side (2r passes), and each row of the
    footprint then costs one pass: 4r + 1 passes instead of one per footprint pixel."""
    fp = np.asarray(footprint, dtype=bool)
    if fp.ndim != 2 or fp.shape[0] % 2 == 0 or fp.shape[1] % 2 == 0:
        raise ValueError(f"footprint must be 2-D with odd sides, got shape {fp.shape}")
    ry, rx = fp.shape[0] // 2, fp.shape[1] // 2
    halves = [int(row.sum()) // 2 for row in fp]  # each row: 2k + 1 pixels centred on the middle column
    rows = list(zip(fp, halves, strict=True))
    if any(row.any() and (row.sum() % 2 == 0 or not row[rx - k:rx + k + 1].all()) for row, k in rows):
        raise ValueError("footprint rows must be runs centred on the middle column (a disk, a square)")
    pick = np.maximum if largest else np.minimum
    h, w = np.shape(a)
    p = np.pad(np.asarray(a), ((ry, ry), (rx, rx)), mode="symmetric")
    runs = [p]  # runs[k][:, x] = extreme of p[:, x-k .. x+k] (valid where x-k >= 0 and x+k < width)
    for k in range(1, rx + 1):
        prev = runs[-1]
        grown = prev.copy()
        pick(grown[:, k:-k], p[:, :-2 * k], out=grown[:, k:-k])
        pick(grown[:, k:-k], p[:, 2 * k:], out=grown[:, k:-k])
        runs.append(grown)
    out = None
    for dy, (row, k) in enumerate(rows):
        if not row.any():
            continue
        view = runs[k][dy:dy + h, rx:rx + w]
        out = view.copy() if out is None else pick(out, view, out=out)
    return np.asarray(a).copy() if out is None else out


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (float64) of each pixel of a 2-D mask to the nearest pixel off it (0 off the
    mask), exactly: the squared distances are integers, minimised before the one square root.

    Along each column the distance to the background is found first; a pixel's answer then comes from
    the column x' minimising col[x']^2 + (x - x')^2, and |x - x'| cannot exceed the pixel's distance to
    the background along its own row or column, so only that many columns either side are tried."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape

    def along(axis: int) -> np.ndarray:
        n = m.shape[axis]
        idx = np.arange(n).reshape((-1, 1) if axis == 0 else (1, -1))
        before = np.maximum.accumulate(np.where(m, -2 * (h + w), idx), axis=axis)
        after = np.flip(np.minimum.accumulate(np.flip(np.where(m, 3 * (h + w), idx), axis), axis=axis), axis)
        return np.minimum(idx - before, after - idx).astype(np.int64)

    col, row = along(0), along(1)
    reach = int(np.minimum(col, row)[m].max(initial=0))
    far = (h + w) ** 2 * 4
    padded = np.pad(col * col, ((0, 0), (reach, reach)), constant_values=far)
    best = col * col
    for dx in range(1, min(reach, w) + 1):
        best = np.minimum(best, np.minimum(padded[:, reach - dx:reach - dx + w], padded[:, reach + dx:reach + dx + w])
                          + dx * dx)
    return np.sqrt(best.astype(np.float64)) * m
