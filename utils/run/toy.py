"""The toy experiment of the ArcFace, CosFace and SphereFace papers, trained here for `python main.py figures`:
a small CNN (models/toy.py) with a 2-D and a 3-D embedding, one run per loss, each loss's scale and margin
from its SPEC["toy"], the recipe from utils/core/presets.py (TOY_FIT, TOY_EPOCHS). Runs are saved as
results/figures/toy/<dim>d_<loss>.npz with the recipe they were trained with, so a later call can redraw
them instead of training again; utils/cli/figures.py draws them.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from losses import registry
from utils.core.config import TrainParams, resolve
from utils.core.device import resolve_device
from utils.core.errors import TrainingInterrupted
from utils.core.io import atomic_write
from utils.core.presets import TOY_EPOCHS, TOY_FIT
from utils.core.progress import say
from utils.core.provenance import code_identity, machine, precision
from utils.run.experiment import prepare_run
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


def toy_runs(base: TrainParams, out: Path, reuse: bool) -> tuple[dict[tuple[int, str], dict], dict]:
    """The ten toy runs (five losses, 2-D and 3-D), trained or (with `reuse`) loaded from `out`, and the
    summary features.json records: each run's seconds, machine and validation accuracy per epoch."""
    summary = {"train_images": TOY_TRAIN, "val_images": TOY_VAL, "points": TOY_POINTS, "epochs": TOY_EPOCHS,
               "fit": TOY_FIT, "losses": toys(), "strip_epochs": list(STRIP_EPOCHS), "runs": {}}
    jobs = [(dim, loss) for dim in (2, 3) for loss in toys()]
    runs, t0, trained = {}, time.perf_counter(), 0.0
    for i, (dim, loss) in enumerate(jobs):
        f = out / f"{dim}d_{loss}.npz"
        run = saved_toy(f, loss, dim) if reuse else None
        if run is None:
            run = train_toy(loss, dim, base, out)
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
    summary["seconds_total"] = round(sum(r["seconds"] for r in summary["runs"].values()), 1)
    return runs, summary
