"""How tight are the classes? Angles between validation embeddings and their class centres.

    python -m bench.angles [--model_name=resnet18_arcface] [--ckpt_dir=ckp] [--retrieval=true]

Loads ckp/<model_name>/best.pt (a cosine-margin head: its rows are the class centres), embeds the
validation split and prints quantiles of theta_y (angle to the own centre), of the largest
cosine to another centre, and the scale at which a sample at the median angle would still get a
non-negligible gradient; with --retrieval=true also the validation split's 1-NN accuracy and EER
against the train-split gallery (the test protocol, on validation data). Validation data only:
nothing here looks at the test set, so it can choose between models. Writes
results/bench/angles_<model_name>.json.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from trainArcFace import TrainArcFaceParams
from utils.core.config import parse_overrides, resolve, trained_params
from utils.core.io import load_checkpoint, write_json
from utils.run.experiment import load_weights, paths, prepare_run
from utils.scoring.metrics import evaluate_embeddings
from utils.training.engine import embed


def main(argv: list[str]) -> None:
    retrieval = "--retrieval=true" in argv
    argv = [a for a in argv if a != "--retrieval=true"]
    params = resolve(TrainArcFaceParams(), {"use_tqdm": False, **parse_overrides(argv)})
    state = load_checkpoint(paths(params)[1] / "best.pt")
    params = trained_params(state["params"], data_root=params.data_root, use_tqdm=False)
    device = torch.device("cpu")
    splits, params, model, head = prepare_run(params, device)
    load_weights(model, head, state)
    emb = embed(model, splits.val_x, params, device)
    with torch.no_grad():
        cos = head.cosine(emb)
        cy = cos.gather(1, splits.val_y.view(-1, 1)).squeeze(1)
        theta = torch.rad2deg(torch.acos(cy.clamp(-1, 1)))
        other = cos.scatter(1, splits.val_y.view(-1, 1), -2.0).amax(1)
        centres = F.normalize(head.weight, dim=1)
        gram = centres @ centres.T - 2 * torch.eye(len(centres))
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
    report: dict = {"model_name": params.model_name, "scale": params.scale, "margin": params.margin,
                    "theta_quantiles_deg": dict(zip(["10", "25", "50", "75", "90", "99"],
                                                    [round(float(v), 2) for v in torch.quantile(theta, qs)],
                                                    strict=True)),
                    "max_other_cos_median": round(float(torch.quantile(other, 0.5)), 4),
                    "max_centre_cos": round(float(gram.max()), 4)}
    print(f"{params.model_name} (loss {params.loss_fuc_type}, s={params.scale}, m={params.margin}), "
          f"{len(emb)} validation images")
    print("angle to own class centre, degrees, quantiles 10/25/50/75/90/99 %:",
          [round(float(v), 1) for v in torch.quantile(theta, qs)])
    print("largest cosine to another centre, quantiles 50/90/99 %:",
          [round(float(v), 3) for v in torch.quantile(other, torch.tensor([0.5, 0.9, 0.99]))])
    print(f"largest cosine between two class centres: {float(gram.max()):.3f}")
    med = math.radians(float(torch.quantile(theta, 0.5)))
    gap = math.cos(med + params.margin) - float(torch.quantile(other, 0.5))
    p = 1 / (1 + (params.n_class - 1) * math.exp(-params.scale * gap))
    if retrieval:
        gallery = embed(model, splits.train_x, params, device)
        m = evaluate_embeddings(emb, splits.val_y, gallery, splits.train_y, bins=params.hist_bins)
        report["val_retrieval"] = {"acc_1nn": m["acc_1nn"], "eer": m["eer"], "tar_1e-3": m["tar_at_far"]["1e-03"]}
        print(f"validation vs train gallery: 1-NN {m['acc_1nn']:.4%}, EER {m['eer']:.4%}, "
              f"TAR@FAR=1e-3 {m['tar_at_far']['1e-03']:.4%}")
    print(f"a median sample: target-minus-other cosine gap {gap:.3f} -> softmax probability {p:.4f} "
          f"at s={params.scale}")
    out = Path("results/bench") / f"angles_{params.model_name}.json"
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
