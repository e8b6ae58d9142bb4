"""Binning and counting a chunk of scores in one read, on the CPU (numba), for metrics.score_statistics.

With torch's own kernels every score is touched five times after the matrix product that made it (floor,
float->int copy, add, clamp, bincount), and on two cores those passes cost 0.2-0.3x of the product
(docs/en/performance.md). Here one compiled loop per thread reads each score once: it bins a row into a small
buffer that stays in cache (a loop the compiler vectorises), then counts the buffer into the thread's own
histogram, genuine pairs (one contiguous column block per row, since both sides are sorted by label) into the
upper half; where 1-NN is asked for, it then finds the row's maximum while the row is still in cache
(torch.max read all 200 MB of a chunk from memory a second time): the highest bin first, as an integer maximum
the compiler vectorises, then the exact float maximum among that bin's few scores. The bins are exactly
metrics.py's: a score s, already in bin units, lands in floor(s) + bins/2 clamped to [0, bins], genuine pairs
offset by bins + 1, and NaN in bin 0 (what the float->int copy gives on x86). Clamping the float before the
floor is the same rule: both sides of the range are integers, so floor(clamp(s)) = clamp(floor(s)).

Counts accumulate per thread in int32 (half the cache of int64) and are added into the int64 total before
any bin could overflow.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

INT32_MAX = 2**31 - 1


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _bin_and_count(scores: np.ndarray, g0: np.ndarray, g1: np.ndarray, half: int, hist: np.ndarray,
                   buf: np.ndarray, nearest: bool, best: np.ndarray,
                   arg: np.ndarray) -> None:  # pragma: no cover - compiled; tested through ChunkCounter
    rows, m = scores.shape
    parts = hist.shape[0]
    per = (rows + parts - 1) // parts
    top = 2 * half + 1  # genuine pairs count in the upper half
    lim = np.float32(half)
    for t in numba.prange(parts):
        h, k = hist[t], buf[t]
        for r in range(t * per, min(rows, (t + 1) * per)):
            row = scores[r]
            for j in range(m):
                v = row[j]
                v = v if v == v else -lim
                k[j] = np.int32(math.floor(min(max(v, -lim), lim))) + half
            a, b = g0[r], g1[r]
            for j in range(a):
                h[k[j]] += 1
            for j in range(a, b):
                h[k[j] + top] += 1
            for j in range(b, m):
                h[k[j]] += 1
            if nearest:  # the row is still in this core's cache: its maximum costs no second read from memory
                km = k[0]
                for j in range(m):  # the top bin: a vectorised integer maximum (a float one would not be)
                    km = max(km, k[j])
                mx, at = row[0], -1
                for j in range(m):  # the exact maximum lies in the top bin; the first one wins a tie
                    if k[j] == km and (at < 0 or row[j] > mx):
                        mx, at = row[j], j
                best[r], arg[r] = mx, at


class ChunkCounter:
    """Genuine and impostor histograms (2 * (bins + 1) int64 counts, metrics.py's layout) of score chunks
    of at most `rows` x `cols`, counted on torch's intra-op thread count."""

    def __init__(self, bins: int, rows: int, cols: int) -> None:
        self.half = bins // 2
        self.parts = max(1, min(torch.get_num_threads(), rows))  # rows split in parts, one histogram each
        self.partial = np.zeros((self.parts, 2 * (bins + 1)), np.int32)
        self.buf = np.empty((self.parts, cols), np.int32)
        self.total = np.zeros(2 * (bins + 1), np.int64)
        self.pending = 0  # scores in `partial` not yet added to `total`
        self.no_best, self.no_arg = np.empty(0, np.float32), np.empty(0, np.int64)  # when no maximum is asked

    def add(self, scores: torch.Tensor, genuine: list[tuple[int, int, int, int]],
            nearest: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Count one chunk of scores in bin units (float32, rows x cols, C-contiguous); `genuine` lists
        (first row, rows, first column, end column) blocks of genuine pairs. With `nearest` = (values,
        indices), one float32 and one int64 tensor of `rows`, also write each row's maximum and its column
        there, as torch.max(scores, dim=1) would, in the same pass: for scores without NaN (which lands in
        bin 0, where torch.max would return it)."""
        rows, cols = scores.shape
        if self.pending + rows * cols > INT32_MAX:
            self.flush()
        g0, g1 = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
        for r0, cnt, c0, c1 in genuine:
            g0[r0:r0 + cnt], g1[r0:r0 + cnt] = c0, c1
        numba.set_num_threads(min(self.parts, numba.config.NUMBA_NUM_THREADS))  # numba's pool: the CPUs
        best, arg = (x.numpy() for x in nearest) if nearest is not None else (self.no_best, self.no_arg)
        _bin_and_count(scores.numpy(), g0, g1, self.half, self.partial, self.buf, nearest is not None, best, arg)
        self.pending += rows * cols

    def flush(self) -> None:
        self.total += self.partial.sum(0, dtype=np.int64)
        self.partial[:] = 0
        self.pending = 0

    def result(self) -> torch.Tensor:
        self.flush()
        return torch.from_numpy(self.total)
