"""Entry point. `python main.py` runs what `flag` selects; the command line can choose too:

    python main.py {arcface,softmax,compare,test} [--field=value ...]
    python main.py --help

flag1 = ArcFace (trainArcFaceMain), flag2 = softmax (trainResnetSoftmaxMain), as in the original;
'compare' trains and evaluates both and draws both DET curves in results/DET.png; 'test' evaluates
the saved best checkpoints without training.
"""

from __future__ import annotations

import sys

flag = "flag1"  # flag1: ArcFace, flag2: softmax, compare: both, test: evaluate saved checkpoints

FLAGS = {"flag1": "arcface", "flag2": "softmax"}
COMMANDS = ("arcface", "softmax", "compare", "test", "benchmark")


def usage() -> str:
    from trainArcFace import TrainArcFaceParams
    from trainResnet import TrainResnetParams
    from utils.config import PRESETS, describe_fields

    return (f"usage: python main.py [{'|'.join(COMMANDS)}] [--field=value ...]\n\n"
            f"  arcface  train + evaluate ResNet18 + ArcFace (trainArcFace.py)\n"
            f"  softmax  train + evaluate ResNet18 + softmax (trainResnet.py)\n"
            f"  compare  both, then one DET figure (results/DET.png)\n"
            f"  test     evaluate the saved best checkpoint(s) in ckp/ without training\n"
            f"  benchmark [--losses=a,b] [--datasets=mnist,fashion_mnist] [--seeds=3] [--known_classes=0-5]\n"
            f"           every loss x data set x seed, closed and open set (results/benchmark/)\n"
            f"  (no command: run flag = {flag!r} from the top of main.py)\n\n"
            f"presets (--preset=NAME): {', '.join(PRESETS)}\n\n"
            f"fields of TrainArcFaceParams (defaults):\n{describe_fields(TrainArcFaceParams())}\n\n"
            f"TrainResnetParams has the same fields; it differs in model_name="
            f"{TrainResnetParams.model_name!r}, loss_fuc_type={TrainResnetParams.loss_fuc_type!r}.\n")


def parse_command(argv: list[str]) -> tuple[str, list[str]]:
    from utils.config import ConfigError

    command = FLAGS.get(flag, flag)
    if argv and not argv[0].startswith("-"):
        command, argv = argv[0], argv[1:]
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'; choose one of {', '.join(COMMANDS)} "
                          f"(or flag1/flag2 for flag).")
    return command, argv


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 ok; 2 user error (message, no traceback); 1 diverged; 128+N stopped by signal N."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    from models import PretrainedUnavailable
    from utils.config import ConfigError
    from utils.data import DataError
    from utils.engine import NonFiniteLoss, TrainingInterrupted
    from utils.io import CheckpointError

    try:
        command, rest = parse_command(argv)
        dispatch(command, rest)
        return 0
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 128 + e.signum
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, CheckpointError, PretrainedUnavailable, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def dispatch(command: str, args: list[str]) -> None:
    from trainArcFace import TrainArcFaceParams, trainArcFaceMain
    from trainResnet import TrainResnetParams, trainResnetSoftmaxMain
    from utils.config import ConfigError, parse_overrides, resolve

    if command == "benchmark":
        from utils.benchmark import run_benchmark

        run_benchmark(args)
        return
    overrides = parse_overrides(args)
    jobs = []
    if command in ("arcface", "compare", "test"):
        jobs.append((trainArcFaceMain, resolve(TrainArcFaceParams(), overrides)))
    if command in ("softmax", "compare", "test"):
        jobs.append((trainResnetSoftmaxMain, resolve(TrainResnetParams(), overrides)))
    if len({p.model_name for _, p in jobs}) < len(jobs):
        raise ConfigError("both models would share one model_name; do not override model_name with "
                          "compare/test, or run arcface and softmax separately.")
    if command == "test":
        from utils.experiment import paths

        jobs = [(f, p) for f, p in jobs if (paths(p)[1] / "best.pt").is_file()]
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
