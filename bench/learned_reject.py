"""How big the learned reject score's network should be, read on validation only (issue 33):

    python -m bench.learned_reject --model_name=study5_arcface_s0 --ckpt_dir=ckp/wild

The "learned" score (utils/inference/learned_reject.py) is a one-hidden-layer discriminator on the frozen
embedding, fitted to tell training-split digits from generated outliers. This fits it at several widths and
weight decays on exactly what `python main.py wild` fits it on (the training-split digits that the class
centres use, their degraded copies, N_OUTLIERS generated outliers under the calibrated normalisation), and
for each reports the share of every kind of *validation* non-digit it lets through at 99 % of MNIST's
validation digits accepted inside the calibrated ink band (the wild command's operating point), beside the
other scores. One row fits without the degraded copies, to show what they are for. Nothing held out is read.

One fit is one draw: L-BFGS from another seeded start ends elsewhere. `--fit_seeds=0,1,2` fits every row
from each start and adds, per row, the mean over the starts and the score of their ensemble (the mean of the
fitted networks' scores, calibrated as one score). The rule, written before the run: a row is read by its
mean over the fit seeds; the lowest wins, and a wider network replaces a narrower one, or an ensemble a single
network, only if it lowers that mean by at least one point.

Needs the model's reject.json (`python main.py wild` first): its normalisation and ink band are used as they
are. Writes results/bench/learned_reject_<model>.json with the commit, machine and precision.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from utils.core.config import trained_params
from utils.core.errors import ConfigError
from utils.core.io import write_json
from utils.core.options import Option, comma_list, file_tag, refuse_rest, run_script, split
from utils.core.provenance import code_identity, machine
from utils.data.loading import load_idx_dataset, load_splits
from utils.data.wild import make_wild_set
from utils.inference import wild_study as ws
from utils.inference.learned_reject import fit_learned
from utils.inference.reject import calibrate, fit_scorer, load_reject

GRID = ((32, 1e-6, True), (128, 1e-4, True), (128, 1e-6, True), (256, 1e-6, True), (128, 1e-6, False))

OPTIONS = {"model_name": Option("", "the calibrated model: <ckpt_dir>/<model_name>/best.pt and reject.json (required)"),
           "ckpt_dir": Option("ckp", "folder of the checkpoints"),
           "data_root": Option("", "MNIST and Fashion-MNIST (default DATA_ROOT or ./data)"),
           "per_font": Option("3", "validation sheets per digit, style and font, as the wild command", int),
           "fit_seeds": Option("0", "seeds of the fit's starting point, comma-separated; with several, each row's "
                                    "mean and ensemble too"),
           "rows": Option("", "GRID rows to fit (0-based, comma-separated; default all)"),
           "out": Option("", "JSON to write (default results/bench/learned_reject_<model>.json)")}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.learned_reject", rest, OPTIONS)
    name = file_tag(opts["model_name"], required=True)
    seeds = comma_list("fit_seeds", opts["fit_seeds"], int)
    picked = comma_list("rows", opts["rows"], int) or list(range(len(GRID)))
    if not seeds or any(not 0 <= i < len(GRID) for i in picked):
        raise ConfigError(f"--fit_seeds needs at least one seed and --rows indices 0 .. {len(GRID) - 1}.")
    ckpt = Path(opts["ckpt_dir"]) / name / "best.pt"
    rec, state = ws.digit_model(ckpt)
    reject = load_reject(ckpt.parent, rec.model_id)
    if reject is None:
        raise ConfigError(f"no reject.json beside {ckpt}; calibrate first: python main.py wild --model_name={name}")
    rec.card = {**rec.card, "normalise": reject["normalise"]}
    data_root = opts["data_root"] or os.environ.get("DATA_ROOT", "./data")
    splits, _ = load_splits(trained_params(state["params"], data_root=data_root, use_tqdm=False))
    fashion = load_idx_dataset(data_root, "fashion_mnist")["train_x"].numpy()
    train_x, train_y = splits.train_x.numpy(), splits.train_y.numpy()
    _, rest_idx = ws.enrolment(train_y)
    centre_x, centre_y = train_x[rest_idx], train_y[rest_idx]
    centre_e = rec.embed_loaded(centre_x)
    with tempfile.TemporaryDirectory() as tmp:
        degraded_e = rec.embed_loaded(np.concatenate(ws.band_images(rec, centre_x, centre_y, Path(tmp) / "band")))
        outliers_e = rec.embed_loaded(ws.generated_outliers(rec, centre_x, fashion))
        val_set = make_wild_set(Path(tmp) / "val", "val", opts["per_font"])
        val_non = ws.nondigit_embeddings(rec, val_set["nondigits"], fashion[:ws.N_FASHION])
    val_digits = (splits.val_x.numpy(), rec.embed_loaded(splits.val_x.numpy()))
    scorer = fit_scorer(centre_e, centre_y)
    rows, summary, others = [], [], None
    for i in picked:
        hidden, l2, with_degraded = GRID[i]
        digits = np.concatenate([centre_e, degraded_e]) if with_degraded else centre_e
        entries = []
        for seed in seeds:
            t0 = time.perf_counter()
            entry = fit_learned(digits, outliers_e, hidden=hidden, l2=l2, seed=seed)
            cands = calibrate(val_digits, val_non, {**scorer, "learned": entry}, reject["band"])["candidates"]
            others = {k: c["nondigits_accepted_mean"] for k, c in cands.items() if k != "learned"}
            c = cands["learned"]
            entries.append(entry)
            rows.append({"hidden": hidden, "l2": l2, "degraded_digits": with_degraded, "seed": seed,
                         **entry["fitted_on"], "seconds": round(time.perf_counter() - t0, 1),
                         "nondigits_accepted": c["nondigits_accepted"],
                         "nondigits_accepted_mean": c["nondigits_accepted_mean"]})
            print(f"  hidden {hidden:3d}, l2 {l2:.0e}, degraded copies {'yes' if with_degraded else 'no '}, seed "
                  f"{seed}: validation non-digits accepted {c['nondigits_accepted_mean']:.1%} "
                  f"(fit {rows[-1]['seconds']:.0f} s)", flush=True)
        if len(seeds) > 1:
            means = [r["nondigits_accepted_mean"] for r in rows[-len(seeds):]]
            per = calibrate(val_digits, val_non, {**scorer, "learned": {"members": entries}},
                            reject["band"])["candidates"]["learned"]["nondigits_accepted"]
            summary.append({"hidden": hidden, "l2": l2, "degraded_digits": with_degraded, "seeds": seeds,
                            "mean_over_seeds": float(np.mean(means)), "std_over_seeds": float(np.std(means, ddof=1)),
                            "ensemble_nondigits_accepted": per,
                            "ensemble_nondigits_accepted_mean": float(np.mean(list(per.values())))})
            print(f"    over seeds {seeds}: {np.mean(means):.1%} +- {np.std(means, ddof=1):.1%}; their ensemble "
                  f"{summary[-1]['ensemble_nondigits_accepted_mean']:.1%}", flush=True)
    print("  other scores: " + ", ".join(f"{k} {v:.1%}" for k, v in others.items()))
    out = Path(opts["out"] or f"results/bench/learned_reject_{name}.json")
    write_json(out, {"model": name, "checkpoint_sha256": rec.model_id, "normalise": reject["normalise"],
                     "operating_point": "99 % of MNIST validation digits accepted inside the ink band",
                     "validation_nondigits": {k: len(e) for k, (_, e) in val_non.items()},
                     "rows": rows, "over_seeds": summary, "other_scores": others,
                     "machine": machine(torch.device("cpu")),
                     "precision": "fp32 embeddings, float64 fit", **code_identity()})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
