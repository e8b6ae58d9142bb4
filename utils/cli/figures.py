"""`python main.py figures`: the papers' pictures, drawn from this project's own runs -> results/figures/.

    python main.py figures [--models=resnet18_arcface,resnet18_softmax] [--reuse=true] [--toy=false]
    python main.py figures --models=                  # the toy panels only (no trained model needed)

features_2d.png, features_3d.png  the toy experiment of the ArcFace/CosFace/SphereFace papers: a small CNN
                                  (models/toy.py) with a 2-D and a 3-D embedding, one panel per loss, trained
                                  to convergence (utils/run/toy.py; each loss's scale and margin in SPEC["toy"])
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

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.core.config import HELP, ConfigError, TrainParams, parse_overrides, resolve, trained_params
from utils.core.errors import CheckpointError
from utils.core.io import evaluation_weights, save_figure, write_json
from utils.core.options import Option, comma_list, describe, split
from utils.core.progress import say
from utils.data.loading import Splits, load_splits
from utils.inference.torch_backend import load_network
from utils.run import toy
from utils.scoring import paper_plots, plots
from utils.scoring.angles import angle_stats
from utils.training.engine import embed

TSNE_POINTS = 3_000
OPTIONS = {"reuse": Option("false", "redraw the toy panels from saved toy runs of the current recipe", bool),
           "models": Option("resnet18_arcface,resnet18_softmax", "trained models whose figures to draw"),
           "toy": Option("true", "draw the toy panels (false: only the trained models' figures)", bool)}
# the training fields figures reads; the toy recipe (utils/core/presets.py) and each trained model's own
# params fix the rest, so any other field would be silently ignored: it is refused instead
FIELDS = ("data_root", "results_dir", "ckpt_dir", "device", "use_tqdm")


def toy_caption(loss: str) -> str:
    o = {k: v for k, v in toy.toys()[loss].items() if k in ("scale", "margin")}
    return loss + (f" (s={o['scale']:g}" + (f", m={o['margin']:g})" if "margin" in o else ")") if o else " (raw)")


def toy_figures(base: TrainParams, out: Path, reuse: bool) -> dict:
    """The ten toy runs (utils/run/toy.py) -> features_2d.png, features_3d.png, features_2d_epochs.png and
    features.json; with `reuse`, saved runs of the current recipe are redrawn."""
    runs, summary = toy.toy_runs(base, out / "toy", reuse)
    for dim in (2, 3):
        panels = [{"title": f"{toy_caption(loss)}\nval acc {float(runs[(dim, loss)]['val_acc']):.1%}",
                   **runs[(dim, loss)], "normalised": bool(runs[(dim, loss)]["normalised"])} for loss in toy.toys()]
        save(paper_plots.features(panels, dim), out / f"features_{dim}d.png")
    strip = [panel for loss in toy.STRIP_LOSSES if loss in toy.toys()
             for panel in strip_panels(loss, runs[(2, loss)])]
    if strip:
        save(paper_plots.features(strip, 2, columns=len(toy.STRIP_EPOCHS) + 1), out / "features_2d_epochs.png")
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
        params = trained_params(p, data_root=base.data_root, use_tqdm=False)
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
