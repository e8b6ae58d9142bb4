"""Entry point. `python main.py` runs what `flag` selects; the command line can choose too:

    python main.py {arcface,softmax,compare,test,grid,figures,wild} [--field=value ...]
    python main.py {embed,verify,enrol,search,export} ...   (use a trained model)
    python main.py --help            python main.py COMMAND --help   (COMMANDS below: one table)

flag1 = ArcFace (trainArcFaceMain), flag2 = softmax (trainResnetSoftmaxMain), as in the original;
'compare' trains and evaluates both and draws both DET curves in results/DET.png; 'test' evaluates
the saved best checkpoints without training.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names for the annotations only: torch and the engine load when a command needs them
    from collections.abc import Callable

    from utils.core.config import TrainParams

flag = "flag1"  # flag1: ArcFace, flag2: softmax, compare: both, test: evaluate saved checkpoints

FLAGS = {"flag1": "arcface", "flag2": "softmax"}
# The command table: what each command takes and does (its line on `python main.py --help`) and the module that
# runs it and writes its options page: `run(command, args, model_name)`, `explain(command, model_name)`,
# imported only then.
# The training commands run here ("main"): they hand the params classes a user edits to the engine.
COMMANDS: dict[str, tuple[str, str, str]] = {  # name: (arguments, what it does, module)
    "arcface": ("", "train + evaluate ResNet18 + ArcFace (trainArcFace.py)", "main"),
    "softmax": ("", "train + evaluate ResNet18 + softmax (trainResnet.py)", "main"),
    "compare": ("", "both, then one DET figure (results/DET.png); --seeds=N: the pair over seeds (results/seeds/)",
                "main"),
    "test": ("", "evaluate the saved best checkpoint(s) in ckp/ without training; --model_name=NAME: that one",
             "main"),
    "grid": ("", "the margin-loss grid: every loss x data set x seed, closed and open set (results/grid/)",
             "utils.cli.grid"),
    "figures": ("", "the papers' pictures from the trained models (results/figures/)", "utils.cli.figures"),
    "wild": ("", "calibrate 'is it a digit?' and measure a held-out wild set of drawn digits (results/wild/)",
             "utils.cli.wild"),
    "embed": ("PATH... --out=FILE.npz", "images/folders -> L2-normalised embeddings", "utils.cli.commands"),
    "verify": ("A B", "same identity? the cosine against a threshold calibrated on validation", "utils.cli.commands"),
    "enrol": ("DIR --gallery=FILE.npz", "one sub-folder per identity -> gallery (added to an existing one)",
              "utils.cli.commands"),
    "search": ("PATH... --gallery=FILE.npz", "the k nearest identities, 'unknown' below the threshold",
               "utils.cli.commands"),
    "export": ("--out=DIR", "ONNX model + model card + a numerical parity check", "utils.cli.commands"),
}
USING = tuple(k for k, (*_, where) in COMMANDS.items() if where == "utils.cli.commands")
_TORCH = ("this command needs PyTorch: pip install torch torchvision (the inference commands run without it "
          "on an export: --onnx=DIR, which needs only onnxruntime).")
DEPENDENCIES = {"torch": _TORCH, "torchvision": _TORCH,
                "onnxruntime": "this needs onnxruntime: pip install onnxruntime.",
                "onnx": "export needs onnx and onnxscript: pip install onnx onnxscript.",
                "onnxscript": "export needs onnx and onnxscript: pip install onnx onnxscript.",
                "matplotlib": "this needs matplotlib: pip install matplotlib.",
                "scipy": "this needs scipy: pip install scipy."}


def usage(command: str | None = None) -> str:
    """--help: the command table and the fields of TrainArcFaceParams; `COMMAND --help`: that command's page."""
    import importlib

    from trainArcFace import TrainArcFaceParams
    from trainResnet import TrainResnetParams
    from utils.core.config import describe_fields
    from utils.core.presets import PRESETS

    if command is not None:
        takes, does, where = COMMANDS[command]
        page = explain(command) if where == "main" else importlib.import_module(where).explain(command, default_model())
        return f"usage: python main.py {command} {takes + ' ' if takes else ''}[--option=value ...]\n{does}\n\n{page}\n"
    lines = "\n".join(f"  {name:<8} {takes + '   ' if takes else ''}{does}" + ("\n" if name == "wild" else "")
                      for name, (takes, does, _) in COMMANDS.items())
    return (f"usage: python main.py [COMMAND] [--option=value ...] [--field=value ...]\n"
            f"(no command: run flag = {flag!r} from the top of main.py; python main.py COMMAND --help: its page)\n\n"
            f"{lines}\n"
            f"  (the commands below wild use a trained model: --model_name=... picks it, --onnx=DIR an export)\n\n"
            f"presets (--preset=NAME): {', '.join(PRESETS)}\n\n"
            f"fields of TrainArcFaceParams (default, meaning; python main.py softmax --help for the softmax model):\n"
            f"{describe_fields(TrainArcFaceParams())}\n\n"
            f"TrainResnetParams has the same fields; it differs in model_name="
            f"{TrainResnetParams.model_name!r}, loss_fuc_type={TrainResnetParams.loss_fuc_type!r}, "
            f"lr={TrainResnetParams.lr!r}, weight_decay={TrainResnetParams.weight_decay!r}.\n")


def explain(command: str) -> str:
    """The page of a training command: its own options, then the fields of the params it trains."""
    from trainArcFace import TrainArcFaceParams
    from trainResnet import TrainResnetParams
    from utils.core.config import describe_fields

    if command in ("arcface", "softmax"):
        params = TrainArcFaceParams() if command == "arcface" else TrainResnetParams()
        return f"fields of {type(params).__name__} (default, meaning):\n{describe_fields(params)}"
    own = ""
    if command == "compare":
        from utils.cli.seeds import OPTIONS
        from utils.core.options import Option, describe

        seeds = Option("", "the pair over seeds: a count N (seeds 0 .. N-1) or a list such as 0,1,2; absent: one pair")
        own = describe({**OPTIONS, "seeds": seeds}) + "\n\n"
    return (f"{own}fields (given to both models; a loss hyper-parameter only to the loss that takes it; "
            f"TrainArcFaceParams shown):\n{describe_fields(TrainArcFaceParams())}")


def parse_command(argv: list[str]) -> tuple[str, list[str]]:
    from utils.core.errors import ConfigError

    command = FLAGS.get(flag, flag)
    if argv and not argv[0].startswith("-"):
        command, argv = argv[0], argv[1:]
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'; choose one of {', '.join(COMMANDS)} "
                          f"(or flag1/flag2 for flag).")
    return command, argv


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 ok; 2 user error (one line, no traceback); 1 training failed; 128+N stopped by signal N;
    130 Ctrl+C outside training."""
    signal.signal(signal.SIGINT, _stop_during_start_up)
    command = ""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if any(a in ("-h", "--help") for a in argv):
            first = argv[0] if argv and not argv[0].startswith("-") else None
            print(usage(first if first in COMMANDS else None))
            return 0
        # torch-free: an ONNX export runs without torch installed
        from utils.core.errors import RunFailed, TrainingInterrupted, UserError, check_ctrl_c

        try:
            command, rest = parse_command(argv)
            dispatch(command, rest)
            check_ctrl_c()  # a press whose exception Python dropped still ends as one
            return 0
        except ModuleNotFoundError as e:
            if e.name not in DEPENDENCIES:
                raise
            print(f"error: {DEPENDENCIES[e.name]}", file=sys.stderr)
            return 2
        except TrainingInterrupted as e:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # leaving: a further Ctrl+C changes nothing
            print(f"\n{e}", file=sys.stderr)
            return 128 + e.signum
        except RunFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (UserError, PermissionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        using = command in USING
        print("\ninterrupted (Ctrl+C); " + (
            "nothing was written: the gallery, --out and export files are as they were." if using else
            "nothing new was published: results/ and ckp/ hold what they held before (a training run's "
            "checkpoint of the last finished epoch is in its staging folder: --resume=auto)."), file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed
        return 0


def _stop_during_start_up(signum: int, frame: object) -> None:
    """Ctrl+C while modules load: a KeyboardInterrupt inside an import can leave a half-imported library
    that fails later with a confusing error, and nothing has been written yet: just leave."""
    print("\ninterrupted (Ctrl+C) during start-up; nothing was written.", file=sys.stderr)
    os._exit(130)


def started() -> None:
    """Start-up is over (the command's modules are loaded): Ctrl+C raises KeyboardInterrupt again, once."""
    from utils.core.errors import arm_ctrl_c

    arm_ctrl_c()


def dispatch(command: str, args: list[str]) -> None:
    import importlib

    where = COMMANDS[command][-1]
    if where == "main":
        train(command, args)
        return
    module = importlib.import_module(where)
    started()
    module.run(command, args, default_model())


def default_model() -> str:
    """The model the inference commands use unless --model_name says otherwise: the one `flag` trains."""
    from trainArcFace import TrainArcFaceParams
    from trainResnet import TrainResnetParams

    return TrainResnetParams.model_name if FLAGS.get(flag, flag) == "softmax" else TrainArcFaceParams.model_name


def trained_by(jobs: list[tuple[Callable[..., dict], TrainParams]]) -> list[tuple[Callable[..., dict], TrainParams]]:
    """`test --model_name=NAME`: the one model of that name, re-evaluated by the class that trained it (softmax,
    or the margin family), as its checkpoint's params say; both while there is no such checkpoint (refused)."""
    from pathlib import Path

    from utils.core.io import load_checkpoint

    path = Path(jobs[0][1].ckpt_dir) / jobs[0][1].model_name / "best.pt"
    if not path.is_file():
        return jobs[:1]
    loss = load_checkpoint(path, mmap=True)["params"].get("loss_fuc_type")
    return [(f, p) for f, p in jobs if (p.loss_fuc_type == "softmax") == (loss == "softmax")]


def train(command: str, args: list[str]) -> None:
    from trainArcFace import TrainArcFaceParams, trainArcFaceMain
    from trainResnet import TrainResnetParams, trainResnetSoftmaxMain
    from utils.core.config import parse_overrides, resolve, share
    from utils.core.errors import ConfigError
    from utils.run.experiment import run  # noqa: F401 -- the heavy imports, before Ctrl+C may raise again

    started()
    if command == "compare" and any(a.startswith("--seeds=") for a in args):
        from utils.cli.seeds import study

        study(args, (TrainArcFaceParams, TrainResnetParams))
        return
    overrides = parse_overrides(args)
    wanted = [(f, cls) for f, cls, cmd in ((trainArcFaceMain, TrainArcFaceParams, "arcface"),
                                           (trainResnetSoftmaxMain, TrainResnetParams, "softmax"))
              if command in (cmd, "compare", "test")]
    losses = [overrides.get("loss_fuc_type", cls.loss_fuc_type) for _, cls in wanted]
    jobs = [(f, resolve(cls(), mine)) for (f, cls), mine in zip(wanted, share(overrides, losses), strict=True)]
    if command == "test" and "model_name" in overrides:
        jobs = trained_by(jobs)
    if len({p.model_name for _, p in jobs}) < len(jobs):
        raise ConfigError("both models would share one model_name; do not override model_name with "
                          "compare/test, or run arcface and softmax separately.")
    if command == "test":
        from pathlib import Path

        jobs = [(f, p) for f, p in jobs if (Path(p.ckpt_dir) / p.model_name / "best.pt").is_file()]
        if not jobs:
            raise ConfigError("no best checkpoint found under the ckpt_dir; train first "
                              "(python main.py compare) or point --ckpt_dir at your checkpoints.")
    for fn, params in jobs:
        metrics = fn(params, train=command != "test")
        if not metrics:  # a non-zero torchrun rank: rank 0 reports
            continue
        print(f"{params.model_name}: 1-NN acc {metrics['acc_1nn']:.4%}  head acc {metrics['acc_head']:.4%}  "
              f"EER {metrics['eer']:.4%}  TAR@FAR=1e-3 {metrics['tar_at_far']['1e-03']:.4%}  "
              f"(best epoch {metrics['best_epoch']}, results in {params.results_dir}/{params.model_name})")


if __name__ == "__main__":
    sys.exit(main())
