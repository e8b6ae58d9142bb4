"""`python main.py figures`: the papers' pictures, drawn from this project's own runs -> results/figures/.

    python main.py figures [--models=resnet18_arcface,resnet18_softmax] [--reuse=true] [--toy=false]

features_2d.png, features_3d.png  the toy experiment of the ArcFace/CosFace/SphereFace papers: the same
                                  ResNet18 with a 2-D and a 3-D embedding, one panel per loss (each SPEC["toy"])
scores.png       genuine/impostor score densities over all test x train pairs (from eval.npz: no second pass)
angles.png       angle of each test embedding to its own and to the nearest other class centre, and the
                 ArcFace paper's Table 3 statistics (W-EC, W-Inter, Intra, Inter) in angles.json
failures.png     what 1-NN gets wrong, the lowest genuine and the highest impostor pairs (failures.json)
embeddings_2d.png  t-SNE (cosine) of test embeddings: qualitative only
Each PNG has a JSON of the numbers behind it. --reuse=true redraws the toy panels from saved runs
(results/figures/toy/*.npz, those trained with the current toy recipe) instead of training them again.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from losses import registry
from utils.core.config import TrainParams, parse_overrides, resolve, share
from utils.core.device import resolve_device
from utils.core.errors import CheckpointError
from utils.core.io import atomic_write, evaluation_weights, save_figure, write_json
from utils.core.options import Option, comma_list, split
from utils.core.progress import say
from utils.data.loading import Splits, load_splits
from utils.inference.torch_backend import load_network
from utils.run.experiment import prepare_run
from utils.scoring import paper_plots, plots
from utils.training.engine import embed
from utils.training.fit import fit


def toys() -> dict[str, dict]:
    """The losses drawn in the toy panels with their settings (each loss's SPEC["toy"]): margins that can
    exist with 10 classes in 2-D, where neighbouring centres are 36 deg apart (CosFace needs m < 1 - cos 36 deg
    = 0.19; SphereFace's m = 4 would need theta < 7.2 deg)."""
    return {name: s["toy"] for name, s in registry.specs().items() if "toy" in s}


# 9,000 images: the ten runs then fit a 25-minute budget on a 2-core AVX2 CPU (10,000 took 26 min at batch 64)
TOY_TRAIN, TOY_VAL, TOY_POINTS, TOY_EPOCHS = 9_000, 1_000, 2_000, 1
# One epoch needs a faster recipe than the default run's: on 10,000 images, with lr 1e-3, batch 128 and half the
# epoch spent warming up, 2-D ArcFace reached 29-34 % validation accuracy; with these, 53.6 % (validation only).
TOY_FIT = {"lr": 5e-3, "batch_size": 64, "warmup_epochs": 0.1}
TSNE_POINTS = 3_000
OPTIONS = {"reuse": Option("false", "redraw the toy panels from saved toy runs of the current recipe", bool),
           "models": Option("resnet18_arcface,resnet18_softmax", "trained models whose figures to draw"),
           "toy": Option("true", "draw the toy panels (false: only the trained models' figures)", bool)}


def toy_caption(loss: str) -> str:
    o = toys()[loss]
    return loss + (f" (s={o['scale']:g}" + (f", m={o['margin']:g})" if "margin" in o else ")") if o else " (raw)")


def toy_recipe(loss: str) -> str:
    """What a saved toy run must have been trained with for --reuse=true to take it."""
    return json.dumps({"train": TOY_TRAIN, "val": TOY_VAL, "points": TOY_POINTS, "epochs": TOY_EPOCHS, **TOY_FIT,
                       **toys()[loss]}, sort_keys=True)


def train_toy(loss: str, dim: int, base: TrainParams, out: Path) -> dict:
    """One toy run: TOY_TRAIN training images, TOY_EPOCHS epoch(s); saves and returns its points and weights."""
    params = resolve(TrainParams(), {**dataclasses.asdict(base), "loss_fuc_type": loss, "embedding_dim": dim,
                                     "total_epochs": TOY_EPOCHS, "ema_decay": 0.0, **TOY_FIT,
                                     "model_name": f"toy_{dim}d_{loss}", **toys()[loss]})
    device = resolve_device(params.device)
    splits, params, model, head = prepare_run(params, device)
    splits = dataclasses.replace(splits, train_x=splits.train_x[:TOY_TRAIN], train_y=splits.train_y[:TOY_TRAIN],
                                 val_x=splits.val_x[:TOY_VAL], val_y=splits.val_y[:TOY_VAL])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        history = fit(params, model, head, splits, device, Path(tmp), lambda st: None)["history"]
    x = embed(model, splits.test_x[:TOY_POINTS], params, device, line=False).cpu().numpy()
    normalised = loss != "softmax"
    run = {"x": x / np.linalg.norm(x, axis=1, keepdims=True) if normalised else x,
           "y": splits.test_y[:TOY_POINTS].numpy(), "weights": head.weight.detach().cpu().numpy(),
           "normalised": np.array(normalised), "seconds": np.array(time.perf_counter() - t0),
           "val_acc": np.array(history[-1]["val_acc"]),  # the head's accuracy on the TOY_VAL validation images
           "recipe": np.array(toy_recipe(loss))}
    with atomic_write(out / f"{dim}d_{loss}.npz", "wb") as f:
        np.savez(f, **run)
    say(f"toy {dim}-D {loss}: validation accuracy {float(run['val_acc']):.1%}, {float(run['seconds']):.0f} s",
        params.use_tqdm)
    return run


def toy_figures(base: TrainParams, out: Path, reuse: bool) -> dict:
    summary = {"train_images": TOY_TRAIN, "val_images": TOY_VAL, "epochs": TOY_EPOCHS, "points": TOY_POINTS,
               "fit": TOY_FIT, "margins": toys(), "runs": {}}
    for dim in (2, 3):
        panels = []
        for loss in toys():
            f = out / "toy" / f"{dim}d_{loss}.npz"
            run = None
            if reuse and f.is_file():
                with np.load(f, allow_pickle=False) as z:
                    run = {k: z[k] for k in z.files}
                if str(run.get("recipe", "")) != toy_recipe(loss):
                    say(f"{f} was trained with another toy recipe: training it again", False)
                    run = None
            if run is None:
                run = train_toy(loss, dim, base, out / "toy")
            acc = float(run["val_acc"])
            panels.append({"title": f"{toy_caption(loss)}\nval acc {acc:.1%}", **run,
                           "normalised": bool(run["normalised"])})
            summary["runs"][f"{dim}d_{loss}"] = {"seconds": round(float(run["seconds"]), 1), "val_acc": round(acc, 4)}
        save(paper_plots.features(panels, dim), out / f"features_{dim}d.png")
    write_json(out / "features.json", summary)
    return summary


def save(fig: plots.Figure, path: Path) -> None:
    save_figure(fig, path)
    plots.close(fig)


def model_inputs(name: str, base: TrainParams) -> dict:
    """A model's checkpoint and saved evaluation, refused with the command to run when something is missing."""
    ckpt = Path(base.ckpt_dir) / name / "best.pt"
    res = Path(base.results_dir) / name
    need = [res / f for f in ("metrics.json", "eval.npz", "failures.json")]
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt} not found: train it first (python main.py compare) or choose --models=...")
    if not all(f.is_file() for f in need):
        raise CheckpointError(f"{res} lacks {', '.join(f.name for f in need if not f.is_file())} (saved by the "
                              f"evaluation): run python main.py test --model_name={name} first.")
    import json

    net, state = load_network(ckpt)
    with np.load(res / "eval.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return {"name": name, "net": net, "state": state, "metrics": json.loads((res / "metrics.json").read_text()),
            "arrays": arrays, "failures": json.loads((res / "failures.json").read_text())}


def angle_stats(emb: torch.Tensor, y: torch.Tensor, centres: torch.Tensor, weights: torch.Tensor) -> dict:
    """Angles (degrees) of unit embeddings to their class centre / nearest other centre, and Table 3's
    W-EC (to the class weight), W-Inter (weights' nearest neighbour), Intra (to the feature centre),
    Inter (feature centres' nearest neighbour), all means over images or classes."""
    def deg(cos: torch.Tensor) -> torch.Tensor:
        return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))

    e, c, w = F.normalize(emb, dim=1), F.normalize(centres, dim=1), F.normalize(weights, dim=1)
    to_c = e @ c.T
    own = deg(to_c.gather(1, y.view(-1, 1)).squeeze(1))
    other = deg(to_c.scatter(1, y.view(-1, 1), -2.0).amax(1))
    eye = torch.eye(len(c), dtype=torch.bool)
    return {"own": own, "other": other,
            "table3": {"W-EC": float(deg((e * w[y]).sum(1)).mean()),
                       "W-Inter": float(deg((w @ w.T).masked_fill(eye, -2).amax(1)).mean()),
                       "Intra": float(own.mean()), "Inter": float(deg((c @ c.T).masked_fill(eye, -2).amax(1)).mean())}}


def run_figures(args: list[str]) -> None:
    opts, rest = split(args, OPTIONS)
    overrides = parse_overrides(rest)
    base = resolve(TrainParams(), {"use_tqdm": False, "loss_fuc_type": "arcface", **share(overrides, ["arcface"])[0]})
    out = Path(base.results_dir) / "figures"
    models = [model_inputs(m, base) for m in comma_list("models", opts["models"])]  # refuse before any work
    t0 = time.perf_counter()
    if opts["toy"]:
        toy_figures(base, out, opts["reuse"])
    t1 = time.perf_counter()
    draw_model_figures(models, base, out)
    say(f"figures in {out}: toy panels {t1 - t0:.0f} s, model figures {time.perf_counter() - t1:.0f} s", False)


def draw_model_figures(models: list[dict], base: TrainParams, out: Path) -> None:
    """scores, angles, failures and embedding maps of trained models."""
    from sklearn.manifold import TSNE

    device = torch.device("cpu")
    score_rows, angle_rows, fail_rows, maps, numbers = [], [], [], [], {}
    for m in models:
        p = m["state"]["params"]
        params = resolve(TrainParams(), {**{k: v for k, v in p.items() if k in vars(base)},
                                                "data_root": base.data_root, "use_tqdm": False})
        splits, params = load_splits(params)
        a, met, loss = m["arrays"], m["metrics"], p["loss_fuc_type"]
        score_rows.append({"label": m["name"], "loss": loss, "genuine": a["test_genuine"],
                           "impostor": a["test_impostor"], "eer_threshold": met["eer_threshold"],
                           "far_threshold": met["thresholds"]["1e-03"]["threshold"]})
        emb = embed(m["net"].net, splits.test_x, params, device, desc=f"embed {m['name']} test")
        weights = evaluation_weights(m["state"])["head"]
        w = weights["weight"] if "weight" in weights else weights["fc.weight"]
        ang = angle_stats(emb, splits.test_y, torch.from_numpy(a["centre_sums"]), w[: len(a["centre_sums"])])
        angle_rows.append({"label": m["name"], "loss": loss, "own": ang["own"].numpy(), "other": ang["other"].numpy()})
        fail_rows += failure_rows(m["name"], m["failures"], splits)
        pick = np.random.default_rng(0).choice(len(emb), size=min(TSNE_POINTS, len(emb)), replace=False)
        xy = TSNE(metric="cosine", init="pca", random_state=0).fit_transform(F.normalize(emb[pick], dim=1).numpy())
        maps.append({"label": m["name"], "xy": xy, "y": splits.test_y[pick].numpy()})
        numbers[m["name"]] = {"table3_deg": {k: round(v, 2) for k, v in ang["table3"].items()},
                              "own_quantiles_deg": np.percentile(ang["own"], [10, 50, 90]).round(2).tolist(),
                              "other_quantiles_deg": np.percentile(ang["other"], [10, 50, 90]).round(2).tolist(),
                              "eer_threshold": met["eer_threshold"], "thresholds": met["thresholds"],
                              "tsne_points": len(pick)}
    save(paper_plots.scores(score_rows), out / "scores.png")
    save(paper_plots.angles(angle_rows), out / "angles.png")
    save(paper_plots.failures(fail_rows), out / "failures.png")
    save(paper_plots.embedding_map(maps), out / "embeddings_2d.png")
    write_json(out / "angles.json", {k: {"table3_deg": v["table3_deg"], "own_quantiles_deg": v["own_quantiles_deg"],
                                         "other_quantiles_deg": v["other_quantiles_deg"]} for k, v in numbers.items()})
    write_json(out / "embeddings_2d.json", {m["label"]: {"method": "sklearn TSNE(metric='cosine', init='pca', "
                                                                  "random_state=0)", "xy": m["xy"].round(2).tolist(),
                                                        "label": m["y"].tolist()} for m in maps})
    write_json(out / "scores.json", {k: {"eer_threshold": v["eer_threshold"], "thresholds": v["thresholds"]}
                                     for k, v in numbers.items()})
    write_json(out / "failures.json", {m["name"]: {k: v[:8] for k, v in m["failures"].items()} | {
        "n_misidentified": len(m["failures"]["misidentified"])} for m in models})


def failure_rows(name: str, fails: dict, splits: Splits) -> list[dict]:
    """Three rows per model: misidentified test digits beside their nearest gallery image, the lowest genuine
    and the highest impostor pairs; captions 'query label -> gallery label, cosine'."""
    def pair(f: dict) -> tuple:
        return (splits.test_x[f["query"]].numpy(), splits.train_x[f["gallery"]].numpy(),
                f"{f['query_label']}>{f['gallery_label']} {f['score']:.2f}")

    titles = {"misidentified": "1-NN wrong", "low_genuine": "low genuine", "high_impostor": "high impostor"}
    return [{"title": f"{name}\n{titles[k]}", "pairs": [pair(f) for f in fails[k][:8]]} for k in titles]
