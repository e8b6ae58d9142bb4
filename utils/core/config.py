"""Run parameters: one dataclass, presets, `--field=value` overrides and validation.

Resolution order (later wins): dataclass defaults <- preset <- command-line overrides.
The dataclass defaults *are* the CPU preset, so editing a default in `trainArcFace.py` or
`trainResnet.py` changes the run, as in the original project.
Everything here fails fast with a `ConfigError` whose message names the fix; nothing expensive
has started when it is raised.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from losses import registry
from utils.core import datasets
from utils.core.errors import ConfigError
from utils.core.presets import PRESETS

STEMS = {"cifar": 8, "s2": 8, "imagenet": 16}  # stem name -> smallest sensible img_size
BACKBONES = ("resnet18", "toy")  # models/__init__.py builds them
SCHEDULES = ("cosine", "onecycle", "step")
AMP_MODES = ("auto", "bf16", "fp16", "off")
OUTLIER_LOSSES = ("off", "uniform", "energy")
OUTLIER_KINDS = ("letters", "symbols", "scribble", "noise", "pieces", "fashion")  # utils/data/outliers.py




def knob(default: Any, help: str) -> Any:
    """A TrainParams field declared once, beside its --help line."""
    return field(default=default, metadata={"help": help})


LOSS_OWN = "a loss hyper-parameter: its meaning, unit and range come from the loss's SPEC"


@dataclass
class TrainParams:
    """Every knob of one training + evaluation run. Defaults = the CPU preset (docs/en/defaults.md).

    The loss hyper-parameters (scale, margin, m1-m3, subcenters) default to None: the chosen loss's own
    value from its SPEC (losses/<name>.py); a Params class that writes one for its own loss
    (TrainArcFaceParams: scale 16) keeps it for that loss only (see `loss_defaults`)."""

    # --- what to train (original field names kept) ---
    model_name: str = knob("resnet18", "names results/<model_name>/ and ckp/<model_name>/")
    loss_fuc_type: str = knob("softmax", "the head and loss: " + "|".join(registry.names()))
    backbone_type: str = knob("resnet18", "the backbone: resnet18, or toy (the small CNN of the papers' feature "
                                          "figures)")
    dataset_name: str = knob("mnist", "the data set: " + "|".join(datasets.names())
                             + " (folder: identity sub-folders in data_root)")
    n_class: int = knob(10, "number of classes (identities)")
    preset: str = knob("cpu", "values laid over the defaults: cpu (the defaults) | original (the paper's GPU recipe)")
    # --- model ---
    img_size: int = knob(28, "input side in pixels (28: MNIST's own; the original used 128)")
    stem: str = knob("s2", "first layers: cifar (3x3/1) | s2 (3x3/2, 4x cheaper) | imagenet (7x7/2 + max-pool)")
    embedding_dim: int = knob(512, "embedding width (the original: 512)")
    pretrained: bool = knob(False, "start from ImageNet weights (needs a download; true|false)")
    scale: float | None = knob(None, LOSS_OWN)
    margin: float | None = knob(None, LOSS_OWN)
    m1: float | None = knob(None, LOSS_OWN)
    m2: float | None = knob(None, LOSS_OWN)
    m3: float | None = knob(None, LOSS_OWN)
    subcenters: int | None = knob(None, LOSS_OWN)
    # --- optimisation ---
    batch_size: int = knob(128, "images per training step")
    lr: float = knob(1e-3, "AdamW learning rate")
    weight_decay: float = knob(5e-4, "AdamW weight decay")
    schedule: str = knob("cosine", "cosine (per-step warm-up + cosine decay) | onecycle (warm-up + linear decay to 0) "
                                   "| step (StepLR)")
    warmup_epochs: float = knob(0.5, "linear warm-up length in epochs (schedule=cosine or onecycle)")
    step_size: int = knob(10, "epochs between lr steps (schedule=step)")
    gamma: float = knob(0.99, "lr factor per step (schedule=step)")
    total_epochs: int = knob(10, "most epochs to train")
    early_stop_epochs: int = knob(20, "stop after this many epochs without a lower validation loss")
    ema_decay: float = knob(0.995, "weight EMA decay validated, selected and evaluated (0 = off; "
                                   "utils/training/ema.py)")
    augment: bool = knob(True, "random shifts/rotations of training images (true|false)")
    aug_degrees: float = knob(10.0, "augmentation: rotation up to +- this many degrees")
    aug_shift: float = knob(0.1, "augmentation: shift up to +- this fraction of the image side")
    aug_scale: float = knob(0.1, "augmentation: scale within 1 +- this")
    aug_erode: float = knob(0.0, "augmentation: share of training images drawn with a thinner pen (a random "
                                 "part of a one-pixel grey erosion; 0 = off)")
    label_smoothing: float = knob(0.0, "label smoothing of the training loss, any head (0 = off; validation loss "
                                       "is always plain)")
    outliers: str = knob("off", "train with generated non-digits mixed into the batches (utils/data/outliers.py): "
                                "off | uniform (outlier exposure: a uniform target) | energy (squared hinges on the "
                                "logits' energy)")
    outlier_fraction: float = knob(0.2, "generated non-digits per training image (0.2: 10,000 beside MNIST's 50,000)")
    outlier_weight: float = knob(0.5, "weight of the outlier term beside the classification loss")
    outlier_kinds: str = knob(",".join(OUTLIER_KINDS), "comma-separated kinds of generated non-digits mixed in, "
                                                       "equal shares: " + ", ".join(OUTLIER_KINDS))
    energy_in: float = knob(-12.0, "outliers=energy: the energy (-logsumexp of the logits) known images are pushed "
                                   "below")
    energy_out: float = knob(-4.0, "outliers=energy: the energy generated non-digits are pushed above")
    amp: str = knob("auto", "precision: auto (bf16 on CUDA; on a CPU with native bf16 the faster of bf16 and fp32, "
                            "measured once per machine; else fp32) | bf16 | fp16 | off (fp32)")
    channels_last: str = knob("auto", "NHWC memory layout: auto (the faster here, measured once per machine: "
                                      "utils/training/tuning.py) | true | false")
    tiny_conv: str = knob("auto", "convolutions with outputs <= 2x2 and 1x1 stride-2 shortcuts as one matrix product: "
                                  "auto (if faster here, measured) | true | false")
    eval_amp: bool = knob(False, "embed for evaluation under autocast too (default fp32: docs/en/evaluation.md; "
                                 "true|false)")
    # --- data ---
    data_root: str = knob("./data", "folder holding MNIST/raw/ (or the identity folders); DATA_ROOT sets it too")
    known_classes: str = knob("", "train on these classes only (e.g. 0-5), report open-set on the rest; empty = all")
    input_mean: float = knob(0.0, "pixel mean for normalisation (used when input_std > 0)")
    input_std: float = knob(0.0, "pixel std for normalisation; <= 0: the data set's own statistics")
    val_size: int = knob(10000, "training images held out for validation")
    split_seed: int = knob(0, "seed of the train/validation split (fixed: the split never moves with seed)")
    # --- run ---
    seed: int = knob(0, "seed of initialisation, batch order and augmentation")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    use_tqdm: bool = knob(True, "progress bars (false: one line per epoch and a progress line every minute)")
    quick_debug: bool = knob(False, "one short epoch on a few hundred images, same code path (true|false)")
    results_dir: str = knob("results", "where results/<model_name>/ goes")
    ckpt_dir: str = knob("ckp", "where ckp/<model_name>/ goes")
    resume: str = knob("", "empty | auto (the interrupted or last run of this model) | a checkpoint path")
    eval_batch_size: int = knob(1024, "images per embedding batch at evaluation")
    log_steps: bool = knob(False, "also write every step's loss to results/<model>/train_steps.csv (true|false)")
    tensorboard: bool = knob(False, "also log to results/<model>/tensorboard/ (needs tensorboard; true|false)")
    # --- torchrun / DDP (ignored by a plain `python main.py`) ---
    sync_bn: bool = knob(True, "torchrun: BatchNorm statistics over the global batch (true|false)")
    scale_lr: bool = knob(False, "torchrun: multiply lr by the number of processes (true|false)")
    hist_bins: int = knob(1 << 20, "score histogram bins of the evaluation (a power of two)")


BOOLEANS = {"true": True, "false": False}


def parse_value(name: str, text: str, kind: type) -> Any:
    """`text` as `kind`; a ConfigError saying what --name expects otherwise."""
    if kind is bool:
        if text.strip().lower() not in BOOLEANS:
            raise ConfigError(f"--{name}={text}: expected true or false.")
        return BOOLEANS[text.strip().lower()]
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--{name}={text}: expected {kind.__name__}.") from None


def parse_overrides(args: list[str], cls: type = TrainParams) -> dict[str, Any]:
    """Turn ['--lr=1e-3', '--use_tqdm=false'] into typed values; refuse unknown names and types."""
    # "float | None": a loss hyper-parameter, None meaning the loss's own default (never given as text)
    types = {f.name: f.type.removesuffix(" | None") for f in fields(cls)}
    types = {k: {"int": int, "float": float, "str": str, "bool": bool}.get(v, v) for k, v in types.items()}
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"cannot read '{arg}': write overrides as --field=value (see --help).")
        name, text = arg[2:].split("=", 1)
        if name not in types:
            raise ConfigError(f"unknown field '{name}'. Valid fields: {', '.join(types)}.")
        out[name] = parse_value(name, text, types[name])
    return out


def resolve(params: TrainParams, overrides: dict[str, Any] | None = None) -> TrainParams:
    """defaults <- preset <- overrides, then DATA_ROOT env and quick_debug, then validation."""
    overrides = dict(overrides or {})
    preset = overrides.get("preset", params.preset)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}.")
    values = dataclasses.asdict(params)
    values.update(PRESETS[preset])
    values.update(overrides)
    values["preset"] = preset
    if "data_root" not in overrides and os.environ.get("DATA_ROOT"):
        values["data_root"] = os.environ["DATA_ROOT"]
    values.update(loss_defaults(type(params), values, overrides))
    if values["quick_debug"]:  # a tiny run never replaces published results: results/quick_debug/...
        for key in ("results_dir", "ckpt_dir"):
            values[key] = quick_folder(values[key])
    out = type(params)(**values)
    validate(out)
    return out


def trained_params(saved: dict[str, Any], **overrides: Any) -> TrainParams:
    """The params a checkpoint was trained with (its "params" dict), validated like a new run's. Fields this
    code does not know (another version's) are dropped; `overrides` replace what belongs to this machine
    (data_root, use_tqdm); a stored --resume never applies to reading the weights."""
    known = {f.name for f in fields(TrainParams)}
    return resolve(TrainParams(), {**{k: v for k, v in saved.items() if k in known}, "resume": "", **overrides})


def loss_defaults(cls: type[TrainParams], values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The run's loss hyper-parameters: given ones kept, the rest the loss's own SPEC default.

    A value the Params class writes for its own loss (TrainArcFaceParams: scale=16 for arcface) is that
    loss's default in this project and applies to it alone: `--loss_fuc_type=cosface` on the arcface class
    trains CosFace's s and m, not ArcFace's. A value set on the instance or on the command line is kept for
    any loss that takes it; one the loss does not take is left as it is (unused)."""
    loss = values["loss_fuc_type"]
    if loss not in registry.specs():
        return {}  # refused by validate() with the list of losses
    own = getattr(cls, "loss_fuc_type", None) == loss
    out = {}
    for f, spec in registry.spec(loss)["params"].items():
        class_value = getattr(cls, f, None)
        set_here = f in overrides or values[f] != class_value
        if values[f] is None or not (set_here or own):
            out[f] = spec["default"]
    return out


def quick_folder(folder: str) -> str:
    """results/<rest> -> results/quick_debug/<rest> (and ckp/ alike); any other folder is the user's own."""
    parts = Path(folder).parts
    if parts and parts[0] in ("results", "ckp") and parts[1:2] != ("quick_debug",):
        return str(Path(parts[0], "quick_debug", *parts[1:]))
    return folder


def share(overrides: dict[str, Any], losses: list[str]) -> list[dict[str, Any]]:
    """One command line for runs of several losses (compare, the seeds study, the grid): each run gets the
    loss hyper-parameters its loss takes; one that none of them takes is refused."""
    hyper = [k for k in overrides if k in registry.hyper_fields()]
    for k in hyper:
        if not any(k in registry.spec(loss)["params"] for loss in losses if loss in registry.specs()):
            raise ConfigError(f"--{k} is not used by {' or '.join(dict.fromkeys(losses))}; it applies to "
                              f"{', '.join(registry.users(k))}. Drop it, or choose one of those losses.")
    return [{k: v for k, v in overrides.items() if k not in hyper or loss not in registry.specs()
             or k in registry.spec(loss)["params"]} for loss in losses]


# Upper bounds: far beyond any sensible run, low enough that nothing overflows before the memory check.
LIMITS = {"img_size": 4096, "embedding_dim": 65536, "n_class": 1_000_000, "batch_size": 65536,
          "eval_batch_size": 65536, "total_epochs": 100_000, "early_stop_epochs": 100_000, "step_size": 100_000,
          "val_size": 10_000_000, "seed": 2**31 - 1, "split_seed": 2**31 - 1}
MARGINS = {"margin", "m1", "m2", "m3"}  # loss hyper-parameters that make a head's training logits differ
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def validate(p: TrainParams) -> None:
    """Every field's type, range and consistency; the memory the run would need. Raises ConfigError."""
    for f in fields(p):
        v = getattr(p, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{f.name}={v} must be a finite number.")
        if f.name in LIMITS and not 0 <= v <= LIMITS[f.name]:
            raise ConfigError(f"{f.name}={v} is out of range; use 0 .. {LIMITS[f.name]}.")
    kinds = p.outlier_kinds.split(",")
    checks = [
        (p.loss_fuc_type in registry.names(),
         f"loss_fuc_type '{p.loss_fuc_type}' unknown; choose one of {registry.names()}."),
        (p.dataset_name in datasets.names(),
         f"dataset_name '{p.dataset_name}' unknown; choose one of {datasets.names()}."),
        (p.backbone_type in BACKBONES, f"backbone_type '{p.backbone_type}' unknown; choose one of {BACKBONES}."),
        (p.stem in STEMS, f"stem '{p.stem}' unknown; choose one of {tuple(STEMS)}."),
        (p.schedule in SCHEDULES, f"schedule '{p.schedule}' unknown; choose one of {SCHEDULES}."),
        (p.amp in AMP_MODES, f"amp '{p.amp}' unknown; choose one of {AMP_MODES}."),
        (p.channels_last in ("auto", "true", "false"), f"channels_last '{p.channels_last}': use auto, true or false."),
        (p.tiny_conv in ("auto", "true", "false"), f"tiny_conv '{p.tiny_conv}': use auto, true or false."),
        (0 < p.lr <= 10, f"lr={p.lr} must be in (0, 10] (1e-3 is usual for AdamW)."),
        (0 <= p.weight_decay <= 10, f"weight_decay={p.weight_decay} must be in [0, 10]."),
        (0 <= p.aug_degrees <= 180, f"aug_degrees={p.aug_degrees} must be in [0, 180]."),
        (0 <= p.aug_shift <= 0.5, f"aug_shift={p.aug_shift} must be in [0, 0.5] (a fraction of the side)."),
        (0 <= p.aug_scale < 1, f"aug_scale={p.aug_scale} must be in [0, 1)."),
        (0 <= p.aug_erode <= 1, f"aug_erode={p.aug_erode} must be in [0, 1] (a share of the images)."),
        (0 <= p.label_smoothing < 1, f"label_smoothing={p.label_smoothing} must be in [0, 1)."),
        (p.outliers in OUTLIER_LOSSES, f"outliers '{p.outliers}' unknown; choose one of {OUTLIER_LOSSES}."),
        (0 < p.outlier_fraction <= 1, f"outlier_fraction={p.outlier_fraction} must be in (0, 1]."),
        (0 <= p.outlier_weight <= 100, f"outlier_weight={p.outlier_weight} must be in [0, 100]."),
        (set(kinds) <= set(OUTLIER_KINDS) and len(set(kinds)) == len(kinds),
         f"outlier_kinds '{p.outlier_kinds}': give distinct kinds from {', '.join(OUTLIER_KINDS)}, comma-separated."),
        # a margin head's known images get margin logits and its outliers plain ones: the bounds measure two
        # different logits there, so only a head without a margin needs them ordered
        (p.energy_in < p.energy_out or bool(MARGINS & set(registry.spec(p.loss_fuc_type)["params"]
                                                          if p.loss_fuc_type in registry.names() else ())),
         f"energy_in={p.energy_in} must be below energy_out={p.energy_out} ({p.loss_fuc_type} scores known images "
         f"and outliers with the same logits)."),
        (p.batch_size >= 1, f"batch_size={p.batch_size} must be >= 1."),
        (p.eval_batch_size >= 1, f"eval_batch_size={p.eval_batch_size} must be >= 1."),
        (p.embedding_dim >= 2, f"embedding_dim={p.embedding_dim} must be >= 2."),
        (p.n_class >= 2, f"n_class={p.n_class} must be >= 2."),
        (p.total_epochs >= 1, f"total_epochs={p.total_epochs} must be >= 1."),
        (p.early_stop_epochs >= 1, f"early_stop_epochs={p.early_stop_epochs} must be >= 1."),
        (p.step_size >= 1, f"step_size={p.step_size} must be >= 1."),
        (0 < p.gamma <= 1, f"gamma={p.gamma} must be in (0, 1]."),
        (p.ema_decay == 0 or 0 < p.ema_decay < 1,
         f"ema_decay={p.ema_decay} must be 0 (off) or in (0, 1), e.g. 0.995."),
        (0 <= p.warmup_epochs <= p.total_epochs,
         f"warmup_epochs={p.warmup_epochs} must be in [0, total_epochs={p.total_epochs}]."),
        (abs(p.input_mean) <= 1000 and p.input_std <= 1000,
         f"input_mean={p.input_mean}, input_std={p.input_std}: pixels are in [0, 1]; use |mean| <= 1000, "
         f"std <= 1000 (std <= 0: the data set's own statistics)."),
        (p.val_size >= 1, f"val_size={p.val_size} must be >= 1."),
        (1024 <= p.hist_bins <= 1 << 24 and p.hist_bins & (p.hist_bins - 1) == 0,
         f"hist_bins={p.hist_bins} must be a power of two in [2**10, 2**24] (bin edges are then exact float32 "
         f"scores, which keeps every pair's bin exact)."),
        (bool(MODEL_NAME.fullmatch(p.model_name)),
         f"model_name '{p.model_name}' must be one plain folder name: letters, digits, '_', '-' and '.', not "
         f"starting with '.' or '-' (it names results/<model_name>/ and ckp/<model_name>/)."),
        (p.device == "auto" or p.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", p.device) is not None,
         f"device '{p.device}' unknown; use auto, cpu, cuda or cuda:N."),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    # the loss's own hyper-parameters, by its SPEC (losses/<name>.py); fields it does not take are not used
    bad = registry.problems(p.loss_fuc_type, {f: getattr(p, f) for f in registry.spec(p.loss_fuc_type)["params"]})
    if bad:
        raise ConfigError(bad[0])
    try:
        parse_classes(p.known_classes, p.n_class)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if p.device.startswith("cuda"):
        import torch  # only here: the rest of this module needs no torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={p.device} but CUDA is not available here; use --device=cpu or auto.")
    smallest = STEMS[p.stem]
    if p.img_size < smallest:
        raise ConfigError(f"img_size={p.img_size} is too small for stem '{p.stem}'; use >= {smallest}.")
    if p.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or leave it off).")
    check_memory(p)


STEM_STRIDE = {"cifar": 1, "s2": 2, "imagenet": 4}


def memory_estimate(p: TrainParams) -> int:
    """Bytes a run needs at its peak, roughly (within ~2x of measured runs; docs/en/reliability.md).

    Weights with their gradients, AdamW's two moments and the EMA copy (x5), plus the activations
    ResNet18 keeps for the backward pass: about 1,650 floats per position of the stem's output map;
    at evaluation, the embeddings of every image (as many as the data set registers) twice over.
    """
    side = -(-p.img_size // STEM_STRIDE[p.stem])
    weights = 11_200_000 + 512 * p.embedding_dim + p.n_class * (p.subcenters or 1) * (p.embedding_dim + 1)
    batch = max(p.batch_size, p.eval_batch_size // 3)  # inference keeps ~1/3 of training's activations
    images = datasets.get(p.dataset_name).images  # 0 for folders: unknown before reading
    return 4 * (5 * weights + 1650 * side * side * batch + 2 * images * p.embedding_dim)


def available_memory(device: str) -> int | None:
    """Free bytes on the device the run would use (MemAvailable on Linux CPUs); None when unknown."""
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(torch.device(device if device != "auto" else "cuda"))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(p: TrainParams) -> None:
    need, have = memory_estimate(p), available_memory(p.device)
    if have is not None and need > have:
        raise ConfigError(f"this run needs about {need / 2**30:.1f} GiB but {have / 2**30:.1f} GiB are available; "
                          f"lower --batch_size, --img_size or --embedding_dim (or --n_class).")


def parse_classes(spec: str, n_class: int) -> list[int]:
    """'0-5' -> [0..5]; '0,2,4' and '0-3,7' work too; '' -> [] (meaning: all classes).

    Every class must be below n_class (checked before a range is expanded, so no input can make a
    huge list)."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if m is None:
            raise ValueError(f"cannot read '{part}' in known_classes='{spec}'; write e.g. 0-5 or 0,1,2")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"empty range '{part}' in known_classes='{spec}'")
        if b >= n_class:
            raise ValueError(f"class {b} in known_classes='{spec}' does not exist: classes are 0 .. {n_class - 1} "
                             f"(n_class={n_class}).")
        out.update(range(a, b + 1))
    return sorted(out)


def recorded(params: TrainParams) -> dict[str, Any]:
    """The params as results files record them: data_root relative to the working folder, so that no
    machine's folder layout ends up in committed results."""
    values = dataclasses.asdict(params)
    if os.path.isabs(params.data_root):
        values["data_root"] = os.path.relpath(params.data_root)
    return values


HELP = {f.name: f.metadata["help"] for f in fields(TrainParams)}  # subclasses' redefinitions carry none


def describe_fields(params: TrainParams) -> str:
    """One line per field for --help: --name=default, then what it means (unit, range or choices); a loss
    hyper-parameter says which losses take it, as each one's SPEC describes it."""
    lines = []
    for f in fields(params):
        value = f"--{f.name}={getattr(params, f.name)!r}"
        if f.name in registry.hyper_fields():
            mine = registry.spec(params.loss_fuc_type)["params"].get(f.name) if params.loss_fuc_type in \
                registry.specs() else None
            text = (registry.describe(f.name, mine) + f"; {params.loss_fuc_type}") if mine else \
                f"used by {', '.join(registry.users(f.name))} (not by {params.loss_fuc_type})"
        else:
            text = HELP.get(f.name, "")
        lines.append(f"  {value:<34} {text}")
    return "\n".join(lines)
