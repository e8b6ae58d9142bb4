"""One experiment end to end: params -> data -> model -> fit -> evaluate best -> results files.

Both original trainers (`trainArcFaceMain`, `trainResnetSoftmaxMain`) are thin calls of `run`.
A run holds its model's folders and writes into staging (utils/run/rundir.py); only a finished run
replaces results/<model>/ {params.json, history.csv, loss.png, metrics.json, far_frr.csv, eval.npz,
failures.json} and ckp/<model>/ {best.pt, last.pt}. results/DET.png is then redrawn from every model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from losses import registry
from models import get_model
from utils.core import distributed
from utils.core.config import TrainParams, parse_classes, recorded
from utils.core.device import resolve_device, seed_everything
from utils.core.distributed import DistContext, barrier
from utils.core.errors import ChanceLevel, CheckpointError, TrainingInterrupted
from utils.core.io import (
    evaluation_weights,
    load_checkpoint,
    save_checkpoint,
    save_figure,
    write_csv,
    write_json,
)
from utils.core.progress import say
from utils.core.provenance import code_identity, device_description, machine, precision
from utils.data.loading import Splits, input_card, load_splits
from utils.run import rundir
from utils.run.evaluate import draw_det, evaluate, write_results
from utils.scoring import plots
from utils.training import tuning
from utils.training.fit import fit

if TYPE_CHECKING:
    from utils.training.tensorboard_log import TensorBoardLog

# params that must agree between a checkpoint and the run that loads it
CKPT_KEYS = ("model_name", "loss_fuc_type", "n_class", "embedding_dim", "stem", "img_size", "pretrained",
             "dataset_name", "known_classes")
# fields a resume may change: they cannot change the training trajectory (every other field must match)
RESUME_FREE = ("use_tqdm", "device", "channels_last", "tiny_conv", "eval_batch_size", "results_dir", "ckpt_dir",
               "resume", "data_root", "log_steps", "hist_bins", "tensorboard")
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "val_angle_deg", "lr", "seconds"]


def train_classes(params: TrainParams) -> int:
    """Classes the head is trained on: the known ones, or all n_class."""
    return len(parse_classes(params.known_classes, params.n_class)) or params.n_class


def build_models(params: TrainParams, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = get_model(params.backbone_type, params.embedding_dim, params.stem, params.pretrained)
    # params come validated (config.resolve checked them against the SPEC): the head is built directly; a
    # hyper-parameter left None takes the head's own default, which is its SPEC's
    own = {f: v for f in registry.spec(params.loss_fuc_type)["params"] if (v := getattr(params, f)) is not None}
    head = registry.head_class(params.loss_fuc_type)(params.embedding_dim, train_classes(params), **own)
    return model.to(device), head.to(device)


def prepare_run(params: TrainParams, device: torch.device, measure: bool = True) -> tuple[
        Splits, TrainParams, torch.nn.Module, torch.nn.Module]:
    """Seed, load and split the data, build model and head: the start every training run shares.

    Returns params with the data set's pixel statistics filled in and channels_last / tiny_conv resolved
    ('auto': the faster on this machine, measured once and cached unless `measure` is off)."""
    seed_everything(params.seed)
    splits, params = load_splits(params)
    model, head = build_models(params, device)
    params, _ = tuning.choose(params, device, measure)
    return splits, params, tuning.apply(model, params), head


def load_weights(model: torch.nn.Module, head: torch.nn.Module, state: dict, averaged: bool = True) -> None:
    """Put a checkpoint's model and head weights into `model` and `head`: the EMA weights when the
    run kept them and `averaged` (evaluation), else the raw training weights (resuming)."""
    src = evaluation_weights(state) if averaged else state
    try:
        model.load_state_dict(src["model"])
        head.load_state_dict(src["head"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"the checkpoint's weights do not fit this model ({str(e).splitlines()[0][:160]}); "
                              f"it is incomplete or hand-edited: use another checkpoint or train again.") from None


def quick_debug_params(params: TrainParams) -> TrainParams:
    """quick_debug: one short epoch on a few hundred images, same code path everywhere else."""
    if not params.quick_debug:
        return params
    return dataclasses.replace(params, total_epochs=1, batch_size=min(params.batch_size, 64),
                               img_size=min(params.img_size, 32), pretrained=False,
                               hist_bins=min(params.hist_bins, 1 << 16), eval_batch_size=256)


def paths(params: TrainParams) -> tuple[Path, Path]:
    """results/<model_name>/ and ckp/<model_name>/: the published run's folders."""
    return Path(params.results_dir) / params.model_name, Path(params.ckpt_dir) / params.model_name


def resume_path(params: TrainParams) -> Path | None:
    """--resume=auto: the interrupted run in staging, else the published run's last.pt."""
    if not params.resume:
        return None
    if params.resume != "auto":
        return Path(params.resume)
    ckpt = paths(params)[1]
    for last in (rundir.staging(ckpt) / "last.pt", ckpt / "last.pt"):
        if last.is_file():
            return last
    return None  # nothing to resume: start afresh (run() says so)


def check_resume(params: TrainParams, state: dict, path: Path) -> None:
    """Refuse a resume whose trajectory-defining fields differ from the checkpoint's run."""
    old = state["params"]
    # a hyper-parameter the loss does not take changes nothing (older checkpoints recorded one anyway)
    unused = registry.unused_by(params.loss_fuc_type)
    diff = [f"{k}: checkpoint {old[k]!r}, now {v!r}" for k, v in dataclasses.asdict(params).items()
            if k in old and k not in RESUME_FREE and k not in unused and old[k] != v
            and not (k in ("input_mean", "input_std") and params.input_std <= 0)]  # derived from the same data
    if diff:
        raise CheckpointError(f"--resume={path} was trained with other settings ({'; '.join(diff)}); resuming would "
                              f"replay a different run. Use the checkpoint's values, or train anew without --resume.")


def write_history(out: Path, params: TrainParams, state: dict) -> None:
    """history.csv and loss.png after every epoch; train_steps.csv too with --log_steps=true."""
    history = state["history"]
    write_csv(out / "history.csv", HISTORY_COLUMNS, [[h.get(c, "") for c in HISTORY_COLUMNS] for h in history])
    if params.log_steps:
        write_csv(out / "train_steps.csv", ["epoch", "step", "loss"], state["steps"])
    fig = plots.loss_figure(history, f"{params.model_name} ({params.loss_fuc_type})")
    save_figure(fig, out / "loss.png")
    plots.close(fig)


PROJECTOR_POINTS = 2000


def tensorboard_log(params: TrainParams, folder: Path) -> TensorBoardLog | None:
    """The optional TensorBoard writer (its module, and tensorboard, are imported only when asked for)."""
    if not params.tensorboard:
        return None
    from utils.training.tensorboard_log import TensorBoardLog

    return TensorBoardLog(folder / "tensorboard")


def run_summary(ckpt: Path, best: dict, expect: dict) -> dict:
    """Epochs and training time of a checkpoint saved before best.pt carried them: from the run's last.pt
    when it is readable (only a warning when not: evaluation does not need it), else from best.pt."""
    try:
        last = load_checkpoint(ckpt / "last.pt", expect)
    except CheckpointError as e:
        say(f"warning: {e} Epoch count and training time are taken from best.pt instead.", False)
        last = best
    return {"best_epoch": best["best_epoch"], "epochs_trained": last["epoch"], "train_seconds": last["train_seconds"]}


def check_learned(val_acc_1nn: float, splits: Splits, params: TrainParams) -> None:
    """Raise ChanceLevel when validation 1-NN is within 3 standard errors of always guessing the most
    common class (only with >= 100 validation images: fewer cannot tell)."""
    n = len(splits.val_y)
    chance = int(torch.bincount(splits.val_y).max()) / n
    bound = chance + 3 * math.sqrt(chance * (1 - chance) / n)
    if n >= 100 and val_acc_1nn <= bound:
        scale = f" or --scale (now {params.scale:g})" if params.loss_fuc_type != "softmax" else ""
        raise ChanceLevel(f"the model ended at chance level (validation 1-NN {val_acc_1nn:.1%}, guessing "
                          f"{chance:.1%}): training diverged without a NaN. Lower --lr (now {params.lr:g}){scale} "
                          f"and train again; the published results and checkpoints are unchanged.")


def run(params: TrainParams, train: bool = True) -> dict:
    """Train (unless train=False) and evaluate the best checkpoint; returns metrics.json's dict.

    Under torchrun every rank trains and embeds its shard; only rank 0 writes files, and the other
    ranks return {}.
    """
    params = quick_debug_params(params)
    ctx, device_name = distributed.setup(params.device)
    try:
        with rundir.RunFolders(*paths(params), is_main=ctx.is_main) as folders:
            barrier(ctx)  # a crashed run's swap is finished before any rank reads a checkpoint
            out = _run(params, train, ctx, resolve_device(device_name), folders)
        # the ranks leave together: rank 1 tearing gloo down while rank 0 still wrote its files aborted
        # it now and then ("terminate called without an active exception", SIGABRT) in CI
        barrier(ctx)
        return out
    finally:
        distributed.cleanup()


def _resume_state(params: TrainParams, train: bool, expect: dict, ctx: DistContext) -> tuple[Path | None, dict | None]:
    """The checkpoint a training run continues from (--resume), checked against the run's settings, or None."""
    src = resume_path(params) if train else None
    state = load_checkpoint(src, expect) if src is not None else None
    if state is not None:
        check_resume(params, state, src)
    if train and params.resume and ctx.is_main:
        part = (state or {}).get("partial") or {}
        say(f"resuming from {src} (epoch {state['epoch'] + 1}, step {part.get('step', 0)})"
            if state is not None else f"--resume=auto: no checkpoint of {params.model_name} to resume "
            f"from; starting afresh", params.use_tqdm)
    return src, state


class EpochLog:
    """What a run writes after every epoch: history.csv and loss.png in its staging folder, and TensorBoard."""

    def __init__(self, folder: Path, params: TrainParams, tb: TensorBoardLog | None) -> None:
        self.folder, self.params, self.tb = folder, params, tb

    def __call__(self, state: dict) -> None:
        write_history(self.folder, self.params, state)
        if self.tb is not None:
            self.tb.epochs(state["history"])


def _train(params: TrainParams, parts: tuple[Splits, torch.nn.Module, torch.nn.Module], device: torch.device,
           ctx: DistContext, stage: tuple[Path, Path], resume_state: dict | None, code: dict, expect: dict,
           tb: TensorBoardLog | None) -> tuple[dict, dict, dict]:
    """Fit into the staging folders; (best checkpoint, summary, provenance: the code and machine that trained it)."""
    splits, model, head = parts
    stage_r, stage_c = stage
    if ctx.is_main:
        write_json(stage_r / "params.json", {**recorded(params), "world_size": ctx.world})
    if resume_state is not None:
        load_weights(model, head, resume_state, averaged=False)
    summary = fit(params, model, head, splits, device, stage_c, EpochLog(stage_r, params, tb), resume_state, ctx,
                  code=code)
    best_state = load_checkpoint(stage_c / "best.pt", expect)
    summary = {k: summary[k] for k in ("best_epoch", "epochs_trained", "train_seconds")}
    provenance = {**code, "machine": machine(device), "amp": precision(device, params.amp)}
    if resume_state is not None and resume_state.get("code") != code:  # earlier epochs ran other code
        provenance["code_before_resume"] = resume_state.get("code") or "unknown (saved before runs recorded it)"
    return best_state, summary, provenance


def _write_evaluation(params: TrainParams, ev: dict, splits: Splits, trained: tuple[dict, dict, dict], train: bool,
                      device: torch.device, ctx: DistContext, stage: tuple[Path, Path],
                      tb: TensorBoardLog | None) -> dict:
    """metrics.json, the evaluation files and the model card in the checkpoint, all into the staging folders."""
    best_state, summary, provenance = trained
    stage_r, stage_c = stage
    metrics = {"model_name": params.model_name, "loss_fuc_type": params.loss_fuc_type, **ev["metrics"],
               **summary, "train_seconds": round(summary["train_seconds"], 1),
               "device": device_description(device, ctx), "n_query": len(splits.test_y),
               "n_gallery": len(splits.train_y), "hist_bins": params.hist_bins, "quick_debug": params.quick_debug,
               "channels_last": params.channels_last, "tiny_conv": params.tiny_conv,
               "thresholds": ev["calibration"]["thresholds"], **provenance}
    if params.known_classes:
        metrics["known_classes"] = params.known_classes
    card = {"summary": summary, **ev["calibration"], "input": input_card(params, splits)}
    if train:
        card["provenance"] = provenance
    if any(best_state.get(k) != v for k, v in card.items()):  # unchanged checkpoints keep their SHA-256
        save_checkpoint(stage_c / "best.pt", {**best_state, **card})
    write_results(stage_r, ev, metrics)
    if tb is not None:
        n = min(len(splits.test_y), PROJECTOR_POINTS)
        tb.projector(ev["sample"][:n], splits.test_y[:n], splits.test_x[:n])
    return metrics


def _announce(params: TrainParams, splits: Splits, train: bool, device: torch.device, ctx: DistContext) -> None:
    if ctx.is_main:
        say(f"{'training' if train else 'evaluating'} {params.model_name} ({params.loss_fuc_type}): "
            f"{params.dataset_name}, {len(splits.train_y)} train / {len(splits.val_y)} validation / "
            f"{len(splits.test_y)} test images" + (f", {params.total_epochs} epochs of {params.batch_size}" if train
                                                   else "") +
            f", {device_description(device, ctx)}, {precision(device, params.amp)}", params.use_tqdm)


def _saved(ckpt: Path, best_state: dict, expect: dict) -> tuple[dict, dict, dict]:
    """What a re-evaluation reports as trained: the saved best checkpoint, its summary and provenance."""
    return (best_state, best_state.get("summary") or run_summary(ckpt, best_state, expect),
            best_state.get("provenance") or {"git_commit": None, "git_note": "trained before runs recorded their code"})


def _run(params: TrainParams, train: bool, ctx: DistContext, device: torch.device, folders: rundir.RunFolders) -> dict:
    """Train (or take the saved best checkpoint), then evaluate, then publish. Everything is written into the
    staging folders first and published at the end in one step, so a failure leaves the old run whole."""
    expect = {k: getattr(params, k) for k in CKPT_KEYS}
    code = code_identity()  # taken before anything trains
    if params.scale_lr and ctx.enabled:
        params = dataclasses.replace(params, lr=params.lr * ctx.world)
    src, resume_state = _resume_state(params, train, expect, ctx)
    best_state = None if train else load_checkpoint(folders.ckpt / "best.pt", expect)  # fail before loading data
    folders.prepare(train, src, resume_state)
    barrier(ctx)
    splits, params, model, head = prepare_run(params, device, measure=not ctx.enabled)
    _announce(params, splits, train, device, ctx)
    tb = tensorboard_log(params, folders.stage[0]) if ctx.is_main else None

    if train:
        trained = _train(params, (splits, model, head), device, ctx, folders.stage, resume_state, code, expect, tb)
    else:
        trained = _saved(folders.ckpt, best_state, expect)

    load_weights(model, head, trained[0])
    ev = evaluate(params, model, head, splits, device, ctx)
    if ev is None:  # a non-zero torchrun rank: rank 0 writes
        return {}
    if train:
        check_learned(ev["metrics"]["val_acc_1nn"], splits, params)
    metrics = _write_evaluation(params, ev, splits, trained, train, device, ctx, folders.stage, tb)

    folders.publish()
    draw_det(folders.results.parent)
    return metrics


def run_in_series(params: TrainParams, reuse: bool, series: str, i: int, n: int) -> dict:
    """Run `params` as run i of n of a series (the grid, the seeds study): with `reuse`, resume it from its
    staged checkpoint when an earlier attempt was interrupted; an interruption says how to go on."""
    staged = rundir.staging(Path(params.ckpt_dir) / params.model_name) / "last.pt"
    try:
        return run(dataclasses.replace(params, resume="auto") if reuse and staged.is_file() else params)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(e.path, e.signum, f"{series} interrupted in {params.model_name} ({i + 1}/{n}); "
                                  f"run the same command with --reuse=true to keep the finished runs and resume "
                                  f"this one from its checkpoint.") from None
