"""Where the energy term's bounds should sit for a head, read from a plain model on validation data (issue 33):

    python -m bench.energy_bounds --ckpt=ckp/recipe/g_base/resnet18_arcface_s2/best.pt [--outliers=2000]

`--outliers=energy` pushes known images below the energy m_in and generated non-digits above m_out, with
E(z) = -logsumexp(z) of the head's logits (utils/training/outlier_loss.py). The defaults (-12, -4) were
written for a plain classifier's logits; a cosine head's energies sit near -s * cos (s = 16 for ArcFace
here), and its margin raises the known images' energy further, so fixed bounds can press every image of
both kinds, with squared hinges that dwarf the cross-entropy. This reads the
energies a plain model of the same recipe gives, and sets the bounds by a rule written before any run:

  * m_in  = the 95th percentile of the validation digits' energy under the margin logits the loss sees
            (the hinge only presses the least confident 5 % of known images);
  * m_out = the 99th percentile of the validation digits' energy under the plain logits: a non-digit
            above it scores as less confident than 99 % of digits, the reject option's operating point.

With a margin head m_in may lie above m_out: the known images' energy comes from margin logits, which
lower the target's logit, and the non-digits' from plain ones. Energies of the generated non-digits (the
training generator's kinds, a seed no run trains on) are reported per kind beside them, with the squared
hinges the rule would start from. Validation split and generated images only: nothing reads the test
split. Writes results/outliers/energy_bounds_<name>.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.core import datasets
from utils.core.config import ConfigError, trained_params
from utils.core.device import resolve_device
from utils.core.io import load_checkpoint, write_json
from utils.core.options import Option, file_tag, refuse_rest, run_script, split
from utils.core.provenance import code_identity, machine, precision
from utils.data.images import polarity_of
from utils.data.outliers import KINDS, fashion_train, make_outliers
from utils.run.experiment import load_weights, prepare_run
from utils.training.engine import embed

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
SEED = 1_000_003  # not a training seed: these non-digits are not the ones any run trained on

OPTIONS = {"ckpt": Option("", "a best.pt of a plain (outliers=off) run (required)"),
           "outliers": Option("2000", "generated non-digits to score, equal shares of every kind", int),
           "name": Option("", "tag of the output file (default: the checkpoint's model name)"),
           "out": Option("", "JSON to write (default results/outliers/energy_bounds_<name>.json)")}


def energy(logits: torch.Tensor) -> np.ndarray:
    return (-torch.logsumexp(logits.double(), dim=1)).cpu().numpy()


def quantiles(e: np.ndarray) -> dict[str, float]:
    return {f"p{round(q * 100):02d}": round(float(np.quantile(e, q)), 3) for q in QUANTILES}


def bounds(margin_digits: np.ndarray, plain_digits: np.ndarray) -> tuple[float, float]:
    """(m_in, m_out) by the rule of the module docstring."""
    return float(np.quantile(margin_digits, 0.95)), float(np.quantile(plain_digits, 0.99))


def mean_hinge(e: np.ndarray, bound: float, above: bool) -> float:
    """The squared hinge the energy term starts from: mean relu(e - m_in)^2 (known) or relu(m_out - e)^2."""
    gap = e - bound if above else bound - e
    return float(np.mean(np.maximum(gap, 0.0) ** 2))


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.energy_bounds", rest, OPTIONS)
    if not opts["ckpt"]:
        raise ConfigError("bench.energy_bounds: --ckpt=PATH is required (the best.pt of a run without outliers).")
    if opts["outliers"] < len(KINDS):
        raise ConfigError(f"--outliers={opts['outliers']}: give at least {len(KINDS)} (one per kind).")
    state = load_checkpoint(Path(opts["ckpt"]))
    params = trained_params(state["params"], use_tqdm=False)
    if params.outliers != "off":
        raise ConfigError(f"{opts['ckpt']} was trained with outliers={params.outliers}; the rule reads a plain model "
                          "of the same recipe (outliers=off).")
    name = file_tag(opts["name"] or params.model_name, required=True)
    device = resolve_device(params.device)
    splits, params, model, head = prepare_run(params, device)
    load_weights(model, head, state)
    images, kind = make_outliers(opts["outliers"], splits.val_x.shape[-1], polarity_of(splits.train_x.numpy()),
                                 datasets.get(params.dataset_name).normalise, splits.val_x.numpy(), SEED,
                                 fashion_train(params.data_root))
    with torch.no_grad():
        digits = embed(model, splits.val_x, params, device, desc="validation digits")
        others = embed(model, torch.from_numpy(images), params, device, desc="generated non-digits")
        head.eval()
        margin_e = energy(head(digits, splits.val_y.to(device)))
        plain_e, other_e = energy(head(digits)), energy(head(others))
    m_in, m_out = bounds(margin_e, plain_e)
    per_kind = {KINDS[k]: quantiles(other_e[kind == k]) for k in np.unique(kind)}
    for what, q in [("digits, margin logits", quantiles(margin_e)), ("digits, plain logits", quantiles(plain_e)),
                    *per_kind.items()]:
        print(f"  {what:22s} " + "  ".join(f"{k} {v:8.2f}" for k, v in q.items()))
    start = {"known": mean_hinge(margin_e, m_in, above=True), "outliers": mean_hinge(other_e, m_out, above=False)}
    print(f"rule: --energy_in={m_in:.2f} --energy_out={m_out:.2f}; squared hinges at the start: "
          f"known {start['known']:.3g}, non-digits {start['outliers']:.3g} (defaults -12 / -4: "
          f"{mean_hinge(margin_e, -12.0, True):.3g} / {mean_hinge(other_e, -4.0, False):.3g})")
    out = Path(opts["out"] or Path("results/outliers") / f"energy_bounds_{name}.json")
    ckpt = Path(opts["ckpt"])  # named by its last folders: a committed result holds no absolute path
    write_json(out, {"checkpoint": str(Path(*ckpt.parts[-4:])) if ckpt.is_absolute() else str(ckpt),
                     "model_name": params.model_name, "loss": params.loss_fuc_type, "seed": params.seed,
                     "rule": "energy_in = p95 of validation digits' energy (margin logits); "
                             "energy_out = p99 of their energy (plain logits)",
                     "energy_in": round(m_in, 3), "energy_out": round(m_out, 3), "start_hinges": start,
                     "digits_margin": quantiles(margin_e), "digits_plain": quantiles(plain_e),
                     "nondigits": per_kind, "n_digits": len(plain_e), "n_nondigits": len(other_e),
                     "machine": machine(device), "precision": precision(device, params.amp), **code_identity()})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
