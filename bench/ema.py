"""Choose the weight-EMA decay on validation, from ONE training run.

    python -m bench.ema --loss=arcface [--decays=0.99,0.995,0.998,0.999] [--knn_epochs=3,9] [--name=TAG]
                        [--field=value ...]

The EMA never feeds back into training (utils/training/ema.py), so one run can carry several averaged
copies side by side: the raw weights follow exactly the trajectory of `python main.py` with the
same parameters. After every epoch each copy's validation loss and head accuracy are printed; at
`knn_epochs` also validation 1-NN accuracy and EER against the 50k train-split embeddings (the
test protocol with the validation split as queries). The test set is not read.
Writes results/bench/ema_<loss>.json (ema_<loss>_<TAG>.json with --name, to keep several probes).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.recipe import DEFAULTS
from utils.core.config import ConfigError, parse_overrides, recorded, resolve
from utils.core.device import resolve_device
from utils.core.io import write_json
from utils.core.options import Option, comma_list, file_tag, run_script, split
from utils.core.provenance import device_description
from utils.run.experiment import prepare_run, quick_debug_params
from utils.scoring.metrics import evaluate_embeddings
from utils.training.ema import WeightEMA
from utils.training.engine import embed, validate
from utils.training.fit import fit

OPTIONS = {"loss": Option("arcface", "arcface or softmax"),
           "decays": Option("0.99,0.995,0.998,0.999", "comma-separated EMA decays, each in (0, 1)"),
           "knn_epochs": Option("3,9", "epochs after which the 1-NN accuracy is measured too"),
           "name": Option("", "tag of the output file")}


def parse_args(argv: list[str]) -> tuple[str, list[float], list[int], str, dict]:
    opts, rest = split(argv, OPTIONS)
    overrides = parse_overrides(rest)
    loss, decays, name = opts["loss"], comma_list("decays", opts["decays"], float), file_tag(opts["name"])
    if loss not in DEFAULTS:
        raise ConfigError(f"--loss={loss}: choose from {', '.join(DEFAULTS)}.")
    if not decays or not all(0 < d < 1 for d in decays):
        raise ConfigError(f"--decays={decays}: each decay must be in (0, 1), e.g. 0.995.")
    return loss, decays, comma_list("knn_epochs", opts["knn_epochs"], int), name, overrides


def main(argv: list[str]) -> None:
    loss, decays, knn_epochs, name, overrides = parse_args(argv)
    params = quick_debug_params(resolve(DEFAULTS[loss](), {"use_tqdm": False, **overrides, "ema_decay": 0.0}))
    device = resolve_device(params.device)
    splits, params, model, head = prepare_run(params, device)
    emas = {d: WeightEMA(model, head, d) for d in decays}
    rows: list[dict] = []

    def on_step(epoch: int, step: int, loss_value: float) -> None:
        for e in emas.values():
            e.update()

    def score(m: torch.nn.Module, h: torch.nn.Module, epoch: int, row: dict) -> dict:
        if "val_loss" not in row:  # the raw weights were just validated by fit
            row["val_loss"], row["val_acc"], row["val_angle_deg"] = validate(m, h, splits.val_x, splits.val_y,
                                                                             params, device)
        if epoch in knn_epochs:
            q, g = embed(m, splits.val_x, params, device), embed(m, splits.train_x, params, device)
            r = evaluate_embeddings(q, splits.val_y.to(device), g, splits.train_y.to(device), bins=params.hist_bins)
            row["val_acc_1nn"], row["val_eer"] = r["acc_1nn"], r["eer"]
        return row

    def on_epoch(state: dict) -> None:
        history = state["history"]
        epoch = history[-1]["epoch"]
        raw = {k: history[-1][k] for k in ("epoch", "val_loss", "val_acc")}
        found = [score(model, head, epoch, {**raw, "decay": 0.0, "seconds": sum(x["seconds"] for x in history)})]
        found += [score(e.model, e.head, epoch, {"epoch": epoch, "decay": d}) for d, e in emas.items()]
        for r in found:
            knn = f"  val 1-NN {r['val_acc_1nn']:.4%}  EER {r['val_eer']:.4%}" if "val_eer" in r else ""
            name = "raw" if r["decay"] == 0 else f"ema {r['decay']}"
            print(f"epoch {epoch} {name:>10}: val loss {r['val_loss']:.4f}  val acc {r['val_acc']:.4%}{knn}",
                  flush=True)
        rows.extend(found)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fit(params, model, head, splits, device, Path(tmp), on_epoch, on_step=on_step)
    out = Path(params.results_dir) / "bench" / f"ema_{loss}{'_' + name if name else ''}.json"
    write_json(out, {"loss": loss, "name": name, "decays": decays, "rows": rows,
                     "wall_seconds": time.perf_counter() - t0, "device": device_description(device),
                     "torch": torch.__version__, "params": recorded(params)})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
