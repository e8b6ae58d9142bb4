"""Does the precision of the evaluation embeddings move the published numbers? fp32 against bf16 autocast.

    python -m bench.eval_precision [--models=resnet18_arcface,resnet18_softmax] [--ckpt_dir=ckp]

For each trained model, one run embeds the test set and the 50,000-image train-split gallery twice, in
fp32 and under bf16 autocast (as evaluation did before `eval_amp` defaulted to false), and reports the
cosine between the two embeddings of each image, the 1-NN accuracy (with the count of test images whose
decision differs), EER and TAR at FAR 1e-3 / 1e-4 / 1e-5 from each. On a CPU without native bf16 the
bf16 path is emulated: slower, but the same rounding. Writes results/bench/eval_precision.json.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainArcFace import TrainArcFaceParams
from utils.core.config import parse_overrides, resolve
from utils.core.io import write_json
from utils.core.options import Option, comma_list, run_script, split
from utils.core.provenance import cpu_model
from utils.data.loading import load_splits
from utils.inference.torch_backend import load_network
from utils.scoring.metrics import fraction, metrics_from_histograms, score_statistics
from utils.training.engine import embed

OPTIONS = {"models": Option("resnet18_arcface,resnet18_softmax", "trained models to embed in fp32 and bf16")}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    overrides = parse_overrides(rest)
    base = resolve(TrainArcFaceParams(), {"use_tqdm": False, **overrides})
    device = torch.device("cpu")
    report = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "models": {}}
    for name in comma_list("models", opts["models"]):
        net, state = load_network(Path(base.ckpt_dir) / name / "best.pt")
        p = {k: v for k, v in state["params"].items() if k in vars(base)}
        params = resolve(TrainArcFaceParams(), {**p, "data_root": base.data_root, "use_tqdm": False})
        splits, params = load_splits(params)
        out, emb = {}, {}
        for label, eval_amp, amp in (("fp32", False, params.amp), ("bf16", True, "bf16")):
            run = dataclasses.replace(params, eval_amp=eval_amp, amp=amp)
            t0 = time.perf_counter()
            q = embed(net.net, splits.test_x, run, device, desc=f"{name} {label} test")
            g = embed(net.net, splits.train_x, run, device, desc=f"{name} {label} gallery")
            st = score_statistics(q, splits.test_y, g, splits.train_y, bins=params.hist_bins)
            m = {**metrics_from_histograms(st["genuine_hist"], st["impostor_hist"]),
                 "acc_1nn": fraction(st["nn_labels"] == splits.test_y)}
            emb[label] = (q, g, st["nn_labels"])
            out[label] = {"acc_1nn": m["acc_1nn"], "eer": m["eer"], "tar_at_far": m["tar_at_far"],
                          "embed_seconds": round(time.perf_counter() - t0, 1)}
            print(f"{name} {label}: 1-NN {m['acc_1nn']:.4%}  EER {m['eer']:.5%}  "
                  f"TAR@1e-3 {m['tar_at_far']['1e-03']:.4%}  TAR@1e-4 {m['tar_at_far']['1e-04']:.4%}", flush=True)
        cos = torch.cat([F.cosine_similarity(emb["fp32"][i], emb["bf16"][i], dim=1) for i in (0, 1)])
        out["cosine_fp32_vs_bf16"] = {"mean_error": float((1 - cos).mean()), "max_error": float((1 - cos).max())}
        out["nn_decisions_differ"] = int((emb["fp32"][2] != emb["bf16"][2]).sum())
        report["models"][name] = out
        print(f"{name}: 1 - cosine(fp32, bf16) mean {out['cosine_fp32_vs_bf16']['mean_error']:.2e}, max "
              f"{out['cosine_fp32_vs_bf16']['max_error']:.2e}; 1-NN label differs for {out['nn_decisions_differ']} "
              f"test images", flush=True)
    write_json(Path(base.results_dir) / "bench" / "eval_precision.json", report)
    print(f"wrote {Path(base.results_dir) / 'bench' / 'eval_precision.json'}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
