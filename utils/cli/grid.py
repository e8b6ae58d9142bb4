"""`python main.py grid`: the margin-loss grid, every loss x data set x seed under one budget,
closed and open set.

    python main.py grid [--losses=softmax,arcface] [--datasets=mnist] [--seeds=3]
                        [--known_classes=0-5] [--reuse=true] [--field=value ...]

Every run shares the hyper-parameters of the CPU preset with a fixed budget (GRID_BUDGET in
utils/core/presets.py); each loss keeps its paper's s and m (its SPEC in losses/<name>.py) unless
--scale/--margin/... are given.
Per run, the usual results land in results/grid/runs/<dataset>_<loss>_s<seed>/; the summary
goes to results/grid/{grid.json, grid.md, DET_<dataset>_<closed|open>.png}.
--reuse=true reads a run whose published folder holds metrics.json for exactly the params asked for
instead of training it again, and resumes a run that was interrupted from its checkpoint: it
continues an interrupted grid, and it merges parts of the grid that ran side by side (on a GPU,
one process per data set) into one summary. (The speed benchmarks and recipe studies are bench/.)
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tqdm import tqdm

from losses import registry
from utils.core import datasets
from utils.core.config import ConfigError, TrainParams, parse_overrides, recorded, resolve, share
from utils.core.io import atomic_write, save_figure, write_json
from utils.core.options import Option, describe, split
from utils.core.presets import GRID_BUDGET
from utils.core.progress import SeriesClock, say
from utils.run.evaluate import read_curve
from utils.run.experiment import run_in_series
from utils.run.reuse import finished
from utils.scoring import plots

DEFAULT_SEEDS = 3
# fields the grid sets itself for each run
OWN_FIELDS = ("model_name", "loss_fuc_type", "dataset_name", "seed", "resume")
MAX_SEEDS = 100


OPTIONS = {"losses": Option(",".join(registry.names(grid=True)), "comma-separated losses"),
           "datasets": Option(",".join(datasets.names(grid=True)), "comma-separated data sets"),
           "seeds": Option(str(DEFAULT_SEEDS), f"seeds per loss and data set, 1 .. {MAX_SEEDS}"),
           "reuse": Option("false", "keep finished runs of the same params; resume an interrupted one", bool)}


def explain(command: str, model_name: str) -> str:
    """`python main.py grid --help`."""
    return (describe(OPTIONS) +
            "\n\nand any training field (python main.py arcface --help), laid over GRID_BUDGET "
            f"(utils/core/presets.py): {', '.join(f'{k}={v}' for k, v in GRID_BUDGET.items())}")


def run(command: str, args: list[str], model_name: str) -> None:
    run_grid(args)


def parse_args(args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split grid options (--losses, --datasets, --seeds, --reuse) from ordinary field overrides."""
    opts, rest = split(args, OPTIONS)
    for name in ("losses", "datasets"):
        opts[name] = tuple(v.strip() for v in opts[name].split(",") if v.strip())
    value = opts["seeds"]
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_SEEDS:
        raise ConfigError(f"--seeds={value}: expected the number of seeds, 1 .. {MAX_SEEDS}.")
    opts["seeds"] = int(value)
    bad = [loss for loss in opts["losses"] if loss not in registry.names()]
    if bad or not opts["losses"]:
        raise ConfigError(f"--losses: unknown {bad or 'empty list'}; choose from {', '.join(registry.names())}.")
    bad = [d for d in opts["datasets"] if d not in datasets.names()]
    if bad or not opts["datasets"]:
        raise ConfigError(f"--datasets: unknown {bad or 'empty list'}; choose from {', '.join(datasets.names())}.")
    overrides = parse_overrides(rest)
    own = [k for k in OWN_FIELDS if k in overrides]
    if own:
        raise ConfigError(f"--{own[0]} is set by the grid for each run (it names and resumes runs itself); "
                          f"choose losses, data sets and seeds with --losses, --datasets and --seeds.")
    return opts, overrides


def plan(opts: dict[str, Any], overrides: dict[str, Any]) -> list[TrainParams]:
    """All runs' params, resolved and validated before anything trains."""
    runs = []
    shared = dict(zip(opts["losses"], share(overrides, list(opts["losses"])), strict=True))
    for ds in opts["datasets"]:
        for loss in opts["losses"]:
            for seed in range(opts["seeds"]):
                # each loss's own scale and margin (its SPEC) unless given: resolve() fills them
                values = {**GRID_BUDGET, **shared[loss], "dataset_name": ds, "loss_fuc_type": loss, "seed": seed}
                root = Path(values.get("results_dir", "results")) / "grid"
                values.update(model_name=f"{ds}_{loss}_s{seed}", results_dir=str(root / "runs"),
                              ckpt_dir=str(Path(values.get("ckpt_dir", "ckp")) / "grid"))
                runs.append(resolve(TrainParams(), values))
    return runs


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0] * 100:.2f}"
    return f"{statistics.mean(xs) * 100:.2f} ± {statistics.stdev(xs) * 100:.2f}"


def summarise(rows: list[dict], out: Path) -> None:
    """grid.md: one table per data set, mean ± std over seeds, in percent."""
    lines = ["# Margin-loss grid", "", "Mean ± std over seeds, in %. Closed set: test images of the known "
             "classes against their training-split images; open set: the same for classes never seen in "
             "training (their training-split images are the gallery).", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"## {ds}", "", "| loss | closed 1-NN acc | closed EER | closed TAR@FAR=1e-3 | open 1-NN acc | "
                  "open EER | open TAR@FAR=1e-3 |", "|---|---|---|---|---|---|---|"]
        for loss in dict.fromkeys(r["loss"] for r in rows if r["dataset"] == ds):
            rs = [r for r in rows if r["dataset"] == ds and r["loss"] == loss]
            cells = [mean_std([r["closed"][k] for r in rs]) for k in ("acc_1nn", "eer", "tar_1e-3")]
            if all(r.get("open") for r in rs):
                cells += [mean_std([r["open"][k] for r in rs]) for k in ("acc_1nn", "eer", "tar_1e-3")]
            else:
                cells += ["-", "-", "-"]
            lines.append(f"| {loss} | " + " | ".join(cells) + " |")
        lines.append("")
    with atomic_write(out) as f:
        f.write("\n".join(lines))


def draw(rows: list[dict], root: Path) -> None:
    """One DET figure per data set and protocol, a curve per loss (its first seed's run)."""
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for proto, csv_name in (("closed", "far_frr.csv"), ("open", "far_frr_open.csv")):
            curves = []
            for r in rows:
                ff = Path(r["folder"]) / csv_name
                if r["dataset"] != ds or r["seed"] != 0 or not ff.is_file():
                    continue
                far, frr = read_curve(ff)
                curves.append({"label": r["loss"], "far": far, "frr": frr, "eer": r[proto]["eer"],
                               "color": registry.color(r["loss"])})
            if curves:
                fig = plots.det_figure(curves, f"{ds}, {proto} set (seed 0)")
                save_figure(fig, root / f"DET_{ds}_{proto}.png")
                plots.close(fig)


def run_grid(args: list[str]) -> Path:
    opts, overrides = parse_args(args)
    runs = plan(opts, overrides)
    root = Path(runs[0].results_dir).parent
    rows: list[dict] = []
    clock = SeriesClock(len(runs))
    bar = tqdm(runs, desc="grid", unit="run", disable=not runs[0].use_tqdm)
    for i, p in enumerate(bar):
        bar.set_postfix_str(p.model_name)
        m = finished(p) if opts["reuse"] else None
        trained = m is None
        if trained:
            m = run_in_series(p, opts["reuse"], "grid", i, len(runs))
        row = {"dataset": p.dataset_name, "loss": p.loss_fuc_type, "seed": p.seed, "model_name": p.model_name,
               "folder": str(Path(p.results_dir) / p.model_name), "train_seconds": m["train_seconds"],
               "eval_seconds": m["eval_seconds"], "best_epoch": m["best_epoch"], "device": m["device"],
               "closed": {"acc_1nn": m["acc_1nn"], "eer": m["eer"], "tar_1e-3": m["tar_at_far"]["1e-03"]}}
        if "open_set" in m:
            o = m["open_set"]
            row["open"] = {"acc_1nn": o["acc_1nn"], "eer": o["eer"], "tar_1e-3": o["tar_at_far"]["1e-03"]}
        rows.append(row)
        say(f"[{len(rows)}/{len(runs)}] {p.model_name}: closed acc {row['closed']['acc_1nn']:.4f} "
            f"EER {row['closed']['eer']:.4f}" + (f"; open acc {row['open']['acc_1nn']:.4f} EER "
                                                 f"{row['open']['eer']:.4f}" if "open" in row else "")
            + f"  {clock.add(m, reused=not trained)}", p.use_tqdm)
    varying = ("model_name", "seed", "loss_fuc_type", "dataset_name")
    setup = {k: v for k, v in recorded(runs[0]).items() if k not in varying}
    write_json(root / "grid.json", {"losses": list(opts["losses"]), "datasets": list(opts["datasets"]),
                                         "seeds": opts["seeds"], "wall_seconds": clock.elapsed(),
                                         "reused_runs": clock.reused,  # wall_seconds excludes these runs
                                         "run_seconds_total": round(sum(r["train_seconds"] + r["eval_seconds"]
                                                                        for r in rows), 1),
                                         "devices": sorted({r["device"] for r in rows}),
                                         "shared_params": setup, "runs": rows})
    summarise(rows, root / "grid.md")
    draw(rows, root)
    print((root / "grid.md").read_text())
    return root
