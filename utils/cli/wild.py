"""`python main.py wild`: digits from the wild. Calibrates "is it a digit?" on validation, then measures a
held-out wild set of sheets drawn here (utils/data/wild.py) -> ckp/<model>/reject.json, results/wild/.

    python main.py wild [--model_name=resnet18_arcface] [--ckpt_dir=ckp] [--per_font=3]

1. Validation ("val" fonts and seeds, MNIST's validation split, Fashion-MNIST's training file): the
   normalisation of new images that reads the wild digits best (fit, mnist, mnist_stroke; stored with
   the calibration, it then replaces the model card's), and the reject score and threshold
   (utils/inference/reject.py): 99 % of the validation digits accepted, the score accepting fewer
   non-digits kept.
2. Held out ("test" fonts and seeds, MNIST's test split, Fashion-MNIST's test file), only reported: top-1
   per style before (the whole sheet fitted into the square, as before issue 25) and after (the card's
   normalisation), digits and non-digits accepted, and the curve of one against the other.
Top-1 = the identity of the nearest of 200 enrolled MNIST training-split images (the first 20 of each
digit), as `search` answers with such a gallery; the class centres come from the next 10,000 images.
"""

from __future__ import annotations

from pathlib import Path

from utils.core.errors import ConfigError
from utils.core.options import Option, describe, refuse_rest, split
from utils.inference import wild_study

OPTIONS = {"model_name": Option(None, "the trained model: ckp/<model_name>/best.pt"),
           "ckpt_dir": Option("ckp", "folder of the checkpoints"),
           "data_root": Option("", "MNIST and Fashion-MNIST (default DATA_ROOT or ./data; downloaded if absent)"),
           "per_font": Option("3", "sheets per digit, style and font", int),
           "results_dir": Option("results", "where results/wild/ is written")}


def explain(command: str, model_name: str) -> str:
    """`python main.py wild --help`."""
    own = {**OPTIONS, "model_name": Option(model_name, OPTIONS["model_name"].help)}
    return describe(own)


def run(command: str, args: list[str], model_name: str) -> None:
    import os

    opts, rest = split(args, {**OPTIONS, "model_name": Option(model_name, OPTIONS["model_name"].help)})
    refuse_rest("wild", rest, OPTIONS)
    if opts["per_font"] < 1:
        raise ConfigError(f"--per_font={opts['per_font']}: out of range (>= 1).")
    ckpt = Path(opts["ckpt_dir"]) / opts["model_name"] / "best.pt"
    rec, state = wild_study.digit_model(ckpt)  # not from_checkpoint: an older reject.json is replaced here
    data_root = opts["data_root"] or os.environ.get("DATA_ROOT", "./data")
    wild_study.study(rec, state, ckpt, opts["model_name"], data_root, opts["per_font"], opts["results_dir"])
