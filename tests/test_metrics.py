"""Streamed metrics against sklearn's exact ROC and brute-force nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from bench.reference import exact_eer
from utils.scoring.metrics import evaluate_embeddings, identification_accuracy, score_statistics, verification_metrics


def clusters(n: int, d: int, c: int, noise: float, seed: int, centers: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    if centers is None:
        centers = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + noise * torch.randn(n, d, generator=g), y, centers


def exact(q, ql, g, gl):
    s = (F.normalize(q, dim=1) @ F.normalize(g, dim=1).T).flatten().double().numpy()
    lab = (ql[:, None] == gl[None, :]).flatten().numpy()
    eer, fpr, tpr = exact_eer(s, lab)
    return eer, roc_auc_score(lab, s), fpr, tpr, s, lab


@pytest.mark.parametrize("noise,seed", [(0.5, 0), (1.5, 1), (3.0, 2)])
def test_verification_matches_sklearn(noise: float, seed: int) -> None:
    q, ql, cen = clusters(300, 16, 5, noise, seed)
    g, gl, _ = clusters(1500, 16, 5, noise, seed + 100, cen)
    m = verification_metrics(q, ql, g, gl, chunk=64)  # several chunks
    eer, auc, fpr, tpr, s, lab = exact(q, ql, g, gl)
    n_pairs = len(s)
    # histogram resolution: a 2**20-bin bin holds at most a handful of the 450k pairs here
    assert m["eer"] == pytest.approx(eer, abs=20 / n_pairs)
    assert m["auc"] == pytest.approx(auc, abs=1e-4)
    assert m["n_genuine"] == int(lab.sum()) and m["n_impostor"] == int((~lab).sum())
    for key, tar in m["tar_at_far"].items():
        f = float(key)
        want = tpr[fpr <= f].max()  # best TAR among exact operating points within the FAR target
        assert tar == pytest.approx(want, abs=5e-3), key
    # the thinned curve is monotone: FAR falls, FRR rises
    assert np.all(np.diff(m["far"]) <= 1e-12) and np.all(np.diff(m["frr"]) >= -1e-12)


def test_eer_threshold_separates_rates() -> None:
    q, ql, cen = clusters(200, 8, 4, 1.0, 5)
    g, gl, _ = clusters(800, 8, 4, 1.0, 6, cen)
    m = verification_metrics(q, ql, g, gl)
    s = (F.normalize(q, dim=1) @ F.normalize(g, dim=1).T)
    gen = ql[:, None] == gl[None, :]
    far = float((s[~gen] >= m["eer_threshold"]).float().mean())
    frr = float((s[gen] < m["eer_threshold"]).float().mean())
    assert far == pytest.approx(m["eer"], abs=2e-3) and frr == pytest.approx(m["eer"], abs=2e-3)


def test_identification_matches_brute_force() -> None:
    q, ql, cen = clusters(257, 12, 6, 2.0, 3)
    g, gl, _ = clusters(999, 12, 6, 2.0, 4, cen)
    correct = 0
    for i in range(len(q)):
        best = max(range(len(g)), key=lambda j: float(F.cosine_similarity(q[i], g[j], dim=0)))
        correct += int(gl[best] == ql[i])
    assert identification_accuracy(q, ql, g, gl, chunk=50) == pytest.approx(correct / len(q))


def test_one_pass_equals_separate_functions() -> None:
    q, ql, cen = clusters(100, 8, 3, 1.0, 7)
    g, gl, _ = clusters(400, 8, 3, 1.0, 8, cen)
    both = evaluate_embeddings(q, ql, g, gl, chunk=33)
    assert both["acc_1nn"] == identification_accuracy(q, ql, g, gl)
    assert both["eer"] == verification_metrics(q, ql, g, gl)["eer"]


def test_perfect_separation_gives_zero_eer() -> None:
    y = torch.arange(4).repeat(10)
    x = F.one_hot(y, 4).float()
    m = verification_metrics(x, y, x, y)
    assert m["eer"] == pytest.approx(0.0, abs=1e-9) and m["auc"] == pytest.approx(1.0)
    assert identification_accuracy(x, y, x, y) == 1.0


@pytest.mark.parametrize("bins", [1 << 10, 1 << 20, 1 << 24])
def test_histogram_bins_are_exact_and_duplicates_fit(bins: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, 32, generator=g), dim=1)
    q, g_ = torch.cat([x, x[:2]]), torch.cat([x, x[:3]])  # exact duplicates: scores of 1 (or a hair above)
    ql, gl = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1]), torch.tensor([1, 0, 0, 1, 2, 2, 0, 0, 1])
    st = score_statistics(q, ql, g_, gl, bins=bins, chunk=3, identification=False)
    assert int(st["genuine_hist"].sum() + st["impostor_hist"].sum()) == len(q) * len(g_)
    s = F.normalize(q, dim=1) @ F.normalize(g_, dim=1).T  # float32, as the streamed pass computes them
    want = ((s.double() * (bins // 2)).floor() + bins // 2).clamp(0, bins - 1).long()
    genuine = ql[:, None] == gl[None, :]
    for hist, mask in ((st["genuine_hist"], genuine), (st["impostor_hist"], ~genuine)):
        ref = torch.bincount(want[mask], minlength=bins)
        # the product order may differ from the reference matmul by an ulp: compare at one-bin tolerance
        nz = torch.nonzero(hist).flatten()
        assert int(hist.sum()) == int(mask.sum())
        assert all(int(ref[max(0, b - 1):b + 2].sum()) >= 1 for b in nz.tolist())
    # the identical vectors of different labels are impostors at the top bin, never genuine ones
    assert int(st["impostor_hist"][bins - 1]) >= 2


@pytest.mark.parametrize("threads", [1, 3])
def test_the_cpu_one_pass_count_equals_torchs_kernels(threads: int) -> None:
    """The CPU bins and counts each score in one compiled pass (histogram.py), CUDA with torch's kernels
    (count_torch): the same histogram, at the range's edges, a hair outside it, on NaN and on genuine
    blocks that touch either end of a row, whatever the number of threads counting."""
    from utils.scoring.histogram import ChunkCounter
    from utils.scoring.metrics import TorchCounter, count_torch

    bins, rows, cols = 1 << 10, 7, 41
    half = bins // 2
    gen = torch.Generator().manual_seed(3)
    s = (torch.rand(rows, cols, generator=gen) * 2 - 1) * half
    s[0, :8] = torch.tensor([half, -half, half + 0.5, -half - 3.0, half - 1e-3, -half + 1e-3, 0.0, -0.0])
    s[1, :4] = torch.tensor([float("nan"), float(half) + 2.0**-10, -1.0, -(2.0**-20)])
    s[2] = s[2].round()  # integer scores: the floor of an exact bin edge
    genuine = [(0, 2, 0, 5), (2, 3, 36, 41), (5, 2, 10, 20)]
    want = torch.zeros(2 * (bins + 1), dtype=torch.int64)
    count_torch(s.clone(), torch.empty(rows, cols, dtype=torch.int32), genuine, bins, want)
    was = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        counter = ChunkCounter(bins, rows, cols)
        counter.add(s, genuine)
        counter.add(s[:3].contiguous(), genuine[:1])  # a shorter last chunk
    finally:
        torch.set_num_threads(was)
    count_torch(s[:3].clone(), torch.empty(3, cols, dtype=torch.int32), genuine[:1], bins, want)
    assert counter.parts == min(threads, rows)
    assert torch.equal(counter.result(), want)
    on_torch = TorchCounter(bins, rows, cols, torch.device("cpu"))  # CUDA's counter, run here on the CPU
    on_torch.add(s.clone(), genuine)
    on_torch.add(s[:3].clone(), genuine[:1])
    assert torch.equal(on_torch.result(), want)


def test_the_int32_counts_are_added_into_the_total_before_they_could_overflow() -> None:
    from utils.scoring import histogram

    counter = histogram.ChunkCounter(1 << 4, 2, 3)
    s = torch.zeros(2, 3)
    counter.add(s, [])
    counter.pending = histogram.INT32_MAX - 5  # as if 2**31 scores had been counted since the last flush
    counter.partial[0, 8] += 7
    counter.add(s, [])  # 6 more would pass the limit: flushed first
    assert counter.pending == 6 and int(counter.total[8]) == 6 + 7
    assert int(counter.result()[8]) == 12 + 7


@pytest.mark.parametrize("threads", [1, 3])
def test_the_cpu_pass_finds_each_rows_maximum_as_torch_max_does(threads: int) -> None:
    """The compiled pass also finds each row's maximum (1-NN) while it counts: the same values and columns
    as torch.max(dim=1), ties to the first column, -0.0 equal to 0.0, scores beyond the binned range
    told apart, and the histogram it counts unchanged by being asked for them."""
    from utils.scoring.histogram import ChunkCounter

    bins, rows, cols = 1 << 8, 9, 23
    gen = torch.Generator().manual_seed(5)
    s = ((torch.rand(rows, cols, generator=gen) * 2 - 1) * (bins // 2)).round()  # rounded: many ties
    s[0] = 7.0  # every column ties
    s[1, [3, 11, 20]] = bins // 2  # a tie at the top, not in column 0
    s[2, [4, 9]] = bins + 0.5  # both beyond the range, in the same clamped bin as the larger one
    s[2, 6] = bins + 0.75
    s[3, :2] = torch.tensor([bins // 2 - 0.25, bins // 2 - 0.5])  # one bin, the larger first
    s[4] = torch.tensor([-0.0, 0.0] + [-1.0] * (cols - 2))
    s[5, -1] = bins  # the maximum in the last column
    s[6] = -float("inf")
    genuine = [(0, 4, 2, 9), (4, 5, 15, 23)]
    want_v, want_i = torch.max(s, dim=1)
    was = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        asked, plain = ChunkCounter(bins, rows, cols), ChunkCounter(bins, rows, cols)
        best, arg = torch.full((rows,), 123.0), torch.full((rows,), -1, dtype=torch.long)
        asked.add(s, genuine, (best, arg))
        plain.add(s, genuine)
    finally:
        torch.set_num_threads(was)
    assert torch.equal(arg, want_i)
    assert torch.equal(best.isnan(), want_v.isnan())
    assert torch.equal(best.nan_to_num(), want_v.nan_to_num())
    assert torch.equal(asked.result(), plain.result())


def test_a_nan_embedding_gives_torch_max_s_nearest_neighbour() -> None:
    """A NaN score is the maximum of its row for torch.max; the compiled pass bins it as the lowest score,
    so with any non-finite embedding score_statistics finds the neighbours with torch.max: the 1-NN is the
    same with and without the histograms counted beside it."""
    from utils.scoring.metrics import score_statistics

    gen = torch.Generator().manual_seed(2)
    q, g = torch.randn(6, 8, generator=gen), torch.randn(40, 8, generator=gen)
    ql, gl = torch.arange(6) % 3, torch.arange(40) % 3
    g[7, 2] = float("nan")
    q[4, 0] = float("inf")
    both = score_statistics(q, ql, g, gl, bins=1 << 8)
    alone = score_statistics(q, ql, g, gl, bins=1 << 8, verification=False)
    assert torch.equal(both["nn_index"], alone["nn_index"])
    assert int(both["nn_index"][0]) == 7  # the NaN gallery item is every finite query's "nearest"
    assert int(both["genuine_hist"].sum() + both["impostor_hist"].sum()) == 6 * 40
