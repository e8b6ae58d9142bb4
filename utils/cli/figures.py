"""`python main.py figures`: the papers' pictures, drawn from this project's own runs -> results/figures/.

    python main.py figures [--models=resnet18_arcface,resnet18_softmax] [--reuse=true] [--toy=false]
    python main.py figures --models=                  # the toy panels only (no trained model needed)

features_2d.png, features_3d.png  the toy experiment of the ArcFace/CosFace/SphereFace papers: a small CNN
                                  (models/toy.py) with a 2-D and a 3-D embedding, one panel per loss, trained
                                  to convergence (TOY_* below; each loss's scale and margin in SPEC["toy"])
features_2d_epochs.png  2-D softmax and ArcFace features after a few epochs and at the end
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
from utils.core.config import HELP, ConfigError, TrainParams, parse_overrides, resolve
from utils.core.device import resolve_device
from utils.core.errors import CheckpointError, TrainingInterrupted
from utils.core.io import atomic_write, evaluation_weights, save_figure, write_json
from utils.core.options import Option, comma_list, describe, split
from utils.core.presets import TOY_EPOCHS, TOY_FIT
from utils.core.progress import say
from utils.core.provenance import code_identity, machine, precision
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


# The toy recipe (issue 27), chosen on the validation split: the candidates tried are in
# results/bench/toy_recipe.json, the choice and each run's accuracy in results/figures/features.json.
# The full train split; accuracy on the full validation split; points drawn from the test split.
TOY_TRAIN, TOY_VAL, TOY_POINTS = 50_000, 10_000, 2_000
STRIP_LOSSES, STRIP_EPOCHS = ("softmax", "arcface"), (1, 3, 8)  # the 2-D epochs strip; the last epoch is added
TSNE_POINTS = 3_000
OPTIONS = {"reuse": Option("false", "redraw the toy panels from saved toy runs of the current recipe", bool),
           "models": Option("resnet18_arcface,resnet18_softmax", "trained models whose figures to draw"),
           "toy": Option("true", "draw the toy panels (false: only the trained models' figures)", bool)}
# the training fields figures reads; the toy recipe (utils/core/presets.py) and each trained model's own
# params fix the rest, so any other field would be silently ignored: it is refused instead
FIELDS = ("data_root", "results_dir", "ckpt_dir", "device", "use_tqdm")


def toy_caption(loss: str) -> str:
    o = {k: v for k, v in toys()[loss].items() if k in ("scale", "margin")}
    return loss + (f" (s={o['scale']:g}" + (f", m={o['margin']:g})" if "margin" in o else ")") if o else " (raw)")


def toy_recipe(loss: str, dim: int) -> str:
    """What a saved toy run must have been trained with for --reuse=true to take it."""
    return json.dumps({"train": TOY_TRAIN, "val": TOY_VAL, "points": TOY_POINTS, "epochs": TOY_EPOCHS[dim],
                       "strip": list(STRIP_EPOCHS) if strip_run(loss, dim) else [], **TOY_FIT, **toys()[loss]},
                      sort_keys=True)


def strip_run(loss: str, dim: int) -> bool:
    return dim == 2 and loss in STRIP_LOSSES


def unit_if(x: np.ndarray, normalised: bool) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12) if normalised else x


def train_toy(loss: str, dim: int, base: TrainParams, out: Path) -> dict:
    """One toy run of the toy recipe (models/toy.py); saves and returns its test points, class weights and
    validation accuracy per epoch, and for the strip's runs the points and weights after STRIP_EPOCHS."""
    epochs = TOY_EPOCHS[dim]
    params = resolve(TrainParams(), {**dataclasses.asdict(base), "loss_fuc_type": loss, "embedding_dim": dim,
                                     "total_epochs": epochs, "early_stop_epochs": epochs, **TOY_FIT,
                                     "model_name": f"toy_{dim}d_{loss}", **toys()[loss]})
    device = resolve_device(params.device)
    splits, params, model, head = prepare_run(params, device)
    splits = dataclasses.replace(splits, train_x=splits.train_x[:TOY_TRAIN], train_y=splits.train_y[:TOY_TRAIN],
                                 val_x=splits.val_x[:TOY_VAL], val_y=splits.val_y[:TOY_VAL])
    normalised, points = loss != "softmax", splits.test_x[:TOY_POINTS]
    snaps: list[tuple[int, np.ndarray, np.ndarray]] = []

    def snapshot(st: dict) -> None:  # the strip: points and class directions part-way through training
        if strip_run(loss, dim) and len(st["history"]) in STRIP_EPOCHS:
            x = embed(model, points, params, device, line=False).cpu().numpy()
            snaps.append((len(st["history"]), unit_if(x, normalised), head.weight.detach().cpu().numpy().copy()))

    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            history = fit(params, model, head, splits, device, Path(tmp), snapshot)["history"]
    except TrainingInterrupted as e:  # its checkpoint went with the temporary folder: say what is kept
        raise TrainingInterrupted(e.path, e.signum, f"toy run {dim}-D {loss} interrupted; the toy runs finished "
                                  f"before it are kept: run the command again with --reuse=true") from None
    seconds = time.perf_counter() - t0
    x = embed(model, points, params, device, line=False).cpu().numpy()
    run = {"x": unit_if(x, normalised), "y": splits.test_y[:TOY_POINTS].numpy(),
           "weights": head.weight.detach().cpu().numpy(), "normalised": np.array(normalised),
           "seconds": np.array(seconds), "val_acc": np.array(history[-1]["val_acc"]),
           "val_acc_epochs": np.array([h["val_acc"] for h in history]), "recipe": np.array(toy_recipe(loss, dim)),
           "made_by": np.array(json.dumps({**code_identity(), **machine(device),
                                           "precision": precision(device, params.amp)})),
           "snap_epochs": np.array([e for e, *_ in snaps], dtype=np.int64),
           "snap_x": np.stack([v for _, v, _ in snaps]) if snaps else np.zeros((0, len(points), dim), np.float32),
           "snap_weights": np.stack([w for *_, w in snaps]) if snaps else np.zeros((0, *head.weight.shape), np.float32)}
    with atomic_write(out / f"{dim}d_{loss}.npz", "wb") as f:
        np.savez(f, **run)
    return run


def saved_toy(path: Path, loss: str, dim: int) -> dict | None:
    """A saved toy run of the current recipe, or None (absent, damaged or of another recipe)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            run = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        say(f"{path} cannot be read: training it again", False)
        return None
    if str(run.get("recipe", "")) != toy_recipe(loss, dim):
        say(f"{path} was trained with another toy recipe: training it again", False)
        return None
    return run


def toy_figures(base: TrainParams, out: Path, reuse: bool) -> dict:
    """The ten toy runs (five losses, 2-D and 3-D) -> features_2d.png, features_3d.png,
    features_2d_epochs.png and features.json; with `reuse`, saved runs of the current recipe are redrawn."""
    summary = {"train_images": TOY_TRAIN, "val_images": TOY_VAL, "points": TOY_POINTS, "epochs": TOY_EPOCHS,
               "fit": TOY_FIT, "losses": toys(), "strip_epochs": list(STRIP_EPOCHS), "runs": {}}
    jobs = [(dim, loss) for dim in (2, 3) for loss in toys()]
    runs, t0, trained = {}, time.perf_counter(), 0.0
    for i, (dim, loss) in enumerate(jobs):
        f = out / "toy" / f"{dim}d_{loss}.npz"
        run = saved_toy(f, loss, dim) if reuse else None
        if run is None:
            run = train_toy(loss, dim, base, out / "toy")
            trained += TOY_EPOCHS[dim]
            left = sum(TOY_EPOCHS[d] for d, _ in jobs[i + 1:])
            rate = (time.perf_counter() - t0) / trained
            say(f"[{i + 1}/{len(jobs)}] toy {dim}-D {loss}: validation accuracy {float(run['val_acc']):.2%} after "
                f"{TOY_EPOCHS[dim]} epochs, {float(run['seconds']):.0f} s ({rate:.0f} s/epoch, ETA "
                f"{left * rate / 60:.0f} min if none is reused)", False)
        runs[(dim, loss)] = run
        summary["runs"][f"{dim}d_{loss}"] = {"seconds": round(float(run["seconds"]), 1),
                                             "made_by": json.loads(str(run.get("made_by", "{}"))),
                                             "val_acc": round(float(run["val_acc"]), 4),
                                             "val_acc_epochs": [round(float(a), 4) for a in run["val_acc_epochs"]]}
    for dim in (2, 3):
        panels = [{"title": f"{toy_caption(loss)}\nval acc {float(runs[(dim, loss)]['val_acc']):.1%}",
                   **runs[(dim, loss)], "normalised": bool(runs[(dim, loss)]["normalised"])} for loss in toys()]
        save(paper_plots.features(panels, dim), out / f"features_{dim}d.png")
    strip = [panel for loss in STRIP_LOSSES if loss in toys() for panel in strip_panels(loss, runs[(2, loss)])]
    if strip:
        save(paper_plots.features(strip, 2, columns=len(STRIP_EPOCHS) + 1), out / "features_2d_epochs.png")
    summary["seconds_total"] = round(sum(r["seconds"] for r in summary["runs"].values()), 1)
    write_json(out / "features.json", summary)
    return summary


def strip_panels(loss: str, run: dict) -> list[dict]:
    """One row of the epochs strip: the run after each of STRIP_EPOCHS and at its end."""
    acc, normalised = run["val_acc_epochs"], bool(run["normalised"])
    shown = [(int(e), x, w) for e, x, w in zip(run["snap_epochs"], run["snap_x"], run["snap_weights"], strict=True)]
    shown.append((len(acc), run["x"], run["weights"]))
    return [{"title": f"{loss}, epoch {e}\nval acc {float(acc[e - 1]):.1%}", "x": x, "y": run["y"], "weights": w,
             "normalised": normalised} for e, x, w in shown]


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
    metrics = json.loads((res / "metrics.json").read_text())
    # the evaluation writes one calibration into both: different ones mean two runs (a quick_debug
    # checkpoint beside full results), whose indices and scores would be drawn together wrongly
    if metrics.get("thresholds") != state.get("thresholds"):
        raise CheckpointError(f"{ckpt} and {res}/ come from different runs; evaluate the checkpoint again "
                              f"(python main.py test --model_name={name}) or point --ckpt_dir and --results_dir "
                              f"at one run.")
    with np.load(res / "eval.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return {"name": name, "net": net, "state": state, "metrics": metrics,
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


def explain(command: str, model_name: str) -> str:
    """`python main.py figures --help`."""
    fields = {k: Option(str(getattr(TrainParams, k)), HELP[k]) for k in FIELDS}
    return describe({**OPTIONS, **fields})


def run(command: str, args: list[str], model_name: str) -> None:
    run_figures(args)


def run_figures(args: list[str]) -> None:
    opts, rest = split(args, OPTIONS)
    overrides = parse_overrides(rest)
    ignored = [k for k in overrides if k not in FIELDS]
    if ignored:
        reads = ", ".join(f"--{k}" for k in (*OPTIONS, *FIELDS))
        raise ConfigError(f"figures does not use --{ignored[0]}: the toy recipe is fixed (utils/core/presets.py) and "
                          f"each model brings its own params; it reads {reads}.")
    base = resolve(TrainParams(), {"use_tqdm": False, "loss_fuc_type": "arcface", **overrides})
    out = Path(base.results_dir) / "figures"
    models = [model_inputs(m, base) for m in comma_list("models", opts["models"])]  # refuse before any work
    t0 = time.perf_counter()
    if opts["toy"]:
        toy_figures(base, out, opts["reuse"])
    t1 = time.perf_counter()
    if models:  # --models= (empty): the toy panels only
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
