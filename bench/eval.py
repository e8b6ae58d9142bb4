"""Evaluation benchmark: streamed 1-NN + verification against the floor of one matrix product.

    python -m bench.eval [--queries=10000] [--gallery=50000] [--dim=512]

At the original's scale (10,000 queries x 50,000 gallery x 512-d, 10 classes) it times, in one run:
  * floor: one plain matrix product producing every query x gallery score (what any method pays), into
    an output allocated and touched before the timing (the streamed pass reuses its buffers too); the
    same product into a fresh 2 GB allocation is timed beside it, to show what first touch costs;
  * ours: `evaluate_embeddings` (1-NN + genuine/impostor histograms, EER, TAR@FAR, AUC), and each of its
    passes over one chunk of 1,024 queries' scores timed on its own (where the time beyond the product goes);
  * the original's way: sklearn `roc_curve` on all pair scores, on growing pair counts,
    extrapolated to all pairs (time and memory);
and checks our EER against sklearn's exact one on the largest subsample that fits comfortably.
Writes results/bench/eval.json.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench.reference import exact_eer
from utils.core.io import write_json
from utils.core.options import Option, comma_list, refuse_rest, run_script, split
from utils.core.provenance import code_identity, cpu_kind, cpu_model
from utils.scoring.histogram import ChunkCounter
from utils.scoring.metrics import count_torch, evaluate_embeddings, verification_metrics

TORCH_WAY = "torch's kernels instead (floor, copy, add, clamp, bincount)"
ROW_MAX = "row maximum (1-NN) by torch.max"
COUNT = "bin + count, one pass"
FUSED = "bin + count + row maximum, one pass (ours)"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples resident memory every 2 ms in a thread; `.peak - .base` = growth during the block."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak = rss_bytes()
        self._run = True
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while self._run:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._run = False
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def synthetic(n: int, dim: int, classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class centres + noise, L2-normalised: genuine scores exceed impostor ones on average."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centres[y] + 2.2 * torch.randn(n, dim, generator=gen)
    return F.normalize(x, dim=1), y


def sklearn_eer(q, ql, g, gl) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    s = (q @ g.T).flatten().numpy()
    lab = (ql[:, None] == gl[None, :]).flatten().numpy()
    eer = exact_eer(s, lab)[0]
    return eer, time.perf_counter() - t0, len(s)


def sklearn_cost(q, ql, g, gl, sizes: list[int]) -> list[dict]:
    from sklearn.metrics import roc_curve

    rows = []
    for nq in sizes:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            s = (q[:nq] @ g.T).flatten().numpy()
            lab = (ql[:nq, None] == gl[None, :]).flatten().numpy()
            roc_curve(lab, s)
            dt = time.perf_counter() - t0
        rows.append({"pairs": nq * len(g), "seconds": dt, "peak_mib": (mem.peak - mem.base) / 2**20})
        del s, lab
    return rows


OPTIONS = {"queries": Option("10000", "synthetic query embeddings", int),
           "gallery": Option("50000", "synthetic gallery embeddings", int),
           "dim": Option("512", "embedding width", int), "classes": Option("10", "classes", int),
           "repeats": Option("2", "timings per method", int),
           "threads": Option("", "also time ours against the floor on these thread counts, e.g. 1,2"),
           "out": Option("results/bench/eval.json", "JSON to write")}


def time_side_by_side(q: torch.Tensor, ql: torch.Tensor, g: torch.Tensor, gl: torch.Tensor,
                      repeats: int) -> tuple[float, float, float, PeakRSS, dict]:
    """Best of `repeats` (interleaved: all see the same machine state) of ours, the floor and the fresh product."""
    ours, floor, fresh = [], [], []
    out = torch.empty(len(q), len(g))  # the floor writes into memory it already owns, as ours does
    torch.mm(q, g.T, out=out)  # first touch of its pages, outside the timing
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            res = evaluate_embeddings(q, ql, g, gl)
            ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.mm(q, g.T, out=out)
        floor.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s = q @ g.T  # the same product into a fresh allocation: shows what first-touching 2 GB costs
        fresh.append(time.perf_counter() - t0)
        del s
    return min(ours), min(floor), min(fresh), mem, res


def pass_breakdown(q: torch.Tensor, g: torch.Tensor, chunk: int = 1024, bins: int = 1 << 20,
                   repeats: int = 3) -> dict[str, float]:
    """Milliseconds of each pass `score_statistics` makes over one chunk of scores (best of `repeats`), timed
    one by one on the same buffers: where the time beyond the product goes. Beside them, the same bins
    counted by torch's kernels (the CUDA path, `count_torch`: floor, copy, add, clamp, bincount) on this CPU."""
    half = bins // 2
    qc = F.normalize(q[:chunk], dim=1) * half
    gt = F.normalize(g, dim=1).T
    s, idx = torch.empty(len(qc), g.shape[0]), torch.empty(len(qc), g.shape[0], dtype=torch.int32)
    hist = torch.zeros(2 * (bins + 1), dtype=torch.int64)
    best, arg = torch.empty(len(qc)), torch.empty(len(qc), dtype=torch.long)
    genuine = [(0, len(qc) // 10, 0, g.shape[0] // 10)]  # one class's block, as sorted labels give it
    counter = ChunkCounter(bins, len(qc), g.shape[0])
    counter.add(s, genuine)  # compiles (or loads the cached) kernel before the timing
    steps = {"product": lambda: torch.mm(qc, gt, out=s),
             ROW_MAX: lambda: torch.max(s, dim=1, out=(best, arg)),
             COUNT: lambda: counter.add(s, genuine),
             FUSED: lambda: counter.add(s, genuine, (best, arg)),
             TORCH_WAY: lambda: count_torch(s, idx, genuine, bins, hist)}  # last: it floors s in place
    out = {}
    for name, step in steps.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out[name] = min(times) * 1e3
    return out


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.eval", rest, OPTIONS)
    a = SimpleNamespace(**opts)
    gen = torch.Generator().manual_seed(0)
    q, ql = synthetic(a.queries, a.dim, a.classes, gen)
    g, gl = synthetic(a.gallery, a.dim, a.classes, gen)
    n_pairs = a.queries * a.gallery
    print(f"{a.queries} queries x {a.gallery} gallery x {a.dim}-d = {n_pairs:.2e} pairs, "
          f"{torch.get_num_threads()} threads")

    by_threads = []
    default = torch.get_num_threads()
    for n in comma_list("threads", a.threads, int):
        torch.set_num_threads(n)
        o, f, _, _, _ = time_side_by_side(q, ql, g, gl, a.repeats)
        by_threads.append({"threads": n, "ours_seconds": o, "floor_seconds": f, "ratio_to_floor": o / f})
        print(f"{n} thread(s): ours {o:.2f} s, floor {f:.2f} s, {o / f:.2f}x the floor")
    torch.set_num_threads(default)
    t_ours, t_floor, t_fresh, mem, res = time_side_by_side(q, ql, g, gl, a.repeats)
    passes = pass_breakdown(q, g)
    print("one chunk of 1024 queries, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in passes.items())
          + f"; after the product ours reads {passes[FUSED] / passes['product']:.2f}x the product's time, "
          f"a torch.max pass beside the count would be {(passes[ROW_MAX] + passes[COUNT]) / passes['product']:.2f}x")
    emb_mib = (q.numel() + g.numel()) * 4 / 2**20

    sub = max(1, min(a.queries, 10_000_000 // a.gallery * 5))  # ~5e7 pairs: sklearn fits in a few GiB
    ours_sub = verification_metrics(q[:sub], ql[:sub], g, gl)["eer"]
    eer_exact, t_exact, n_exact = sklearn_eer(q[:sub], ql[:sub], g, gl)

    sizes = [max(1, sub // 8), max(1, sub // 4), max(1, sub // 2)]
    cost = sklearn_cost(q, ql, g, gl, sizes)
    per_pair_s = cost[-1]["seconds"] / cost[-1]["pairs"]
    per_pair_b = cost[-1]["peak_mib"] * 2**20 / cost[-1]["pairs"]

    table = [
        ("floor: one matrix product into owned memory", t_floor, 1.0, None),
        ("the same product into a fresh allocation", t_fresh, t_fresh / t_floor, None),
        ("ours: 1-NN + verification, streamed", t_ours, t_ours / t_floor, (mem.peak - mem.base) / 2**20),
        ("original: sklearn roc_curve, extrapolated", per_pair_s * n_pairs, per_pair_s * n_pairs / t_floor,
         per_pair_b * n_pairs / 2**20),
    ]
    print(f"\n{'method':45s} {'seconds':>9s} {'x floor':>8s} {'peak MiB':>10s}")
    for name, sec, ratio, mib in table:
        print(f"{name:45s} {sec:9.2f} {ratio:8.2f} {'' if mib is None else f'{mib:10.0f}'}")
    print(f"\nembeddings themselves: {emb_mib:.0f} MiB; EER ours {res['eer']:.6f}, acc_1nn {res['acc_1nn']:.4f}")
    print(f"EER vs exact sklearn on {n_exact:.2e} pairs: ours {ours_sub:.7f}, exact {eer_exact:.7f}, "
          f"|diff| {abs(ours_sub - eer_exact):.2e} (sklearn took {t_exact:.1f}s)")
    for r in cost:
        print(f"  sklearn roc_curve on {r['pairs']:.2e} pairs: {r['seconds']:.2f}s, peak +{r['peak_mib']:.0f} MiB")

    write_json(Path(a.out), {
        "setup": vars(a) | {"threads": torch.get_num_threads(), "n_pairs": n_pairs},
        "floor_seconds": t_floor, "floor_fresh_allocation_seconds": t_fresh, "ours_seconds": t_ours,
        "ratio_to_floor": t_ours / t_floor, "by_threads": by_threads,
        "passes_ms_per_chunk": passes, "cpu": cpu_model(), "cpu_kind": cpu_kind(),
        "kernel_path": torch.backends.cpu.get_cpu_capability(), "made_by": code_identity(),
        "ours_peak_mib_above_embeddings": (mem.peak - mem.base) / 2**20, "embeddings_mib": emb_mib,
        "eer_subsample_pairs": n_exact, "eer_ours": ours_sub, "eer_exact": eer_exact,
        "eer_abs_diff": abs(ours_sub - eer_exact), "sklearn_growth": cost,
        "sklearn_extrapolated_seconds": per_pair_s * n_pairs, "sklearn_extrapolated_gib": per_pair_b * n_pairs / 2**30,
    })
    print(f"wrote {a.out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
