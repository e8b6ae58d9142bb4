"""`python main.py compare --seeds=...`: the default pair (ArcFace, softmax) over seeds, compared pair by pair.

    python main.py compare --seeds=3 [--reuse=true] [--field=value ...]    # seeds 0, 1, 2
    python main.py compare --seeds=0,1,2,3,4 --reuse=true
    python main.py compare --seeds=5 --shared=true   # also softmax under ArcFace's settings: the head alone differs
    python main.py compare --seeds=5 --shared=true --summary_only=true   # rewrite the summary, train nothing

Each run is an ordinary run (staged, locked, resumable) published in results/seeds/<model>_s<seed>/
(checkpoints in ckp/seeds/). The study trains in fp32 unless --amp is given, so that CPUs with and
without native bf16 can add runs to one summary. --reuse=true keeps a finished run whose params and
training code match (same commit, or commits that results/numerics.json records as computing the
golden quick_debug numbers identically: `python tests/golden.py --vouch`), and resumes an
interrupted one; a run of other code or params is trained again. After every run the summary of the
finished pairs is rewritten: results/seeds/{seeds.json, seeds.md, DET_seeds.png, paired.png} and results/DET.png (the
same picture: the headline DET is the study's, every seed visible). With --shared=true every seed also
trains softmax with the ArcFace model's optimiser, schedule and augmentation (resnet18_softmax_shared_s<seed>),
and the summary compares ArcFace with softmax both ways: each with its own validation-chosen settings, and
under one shared set where the head, with its scale and margin, is the only difference. Runs of different layouts
(channels_last, tiny_conv) are never combined: the golden check that vouches commits pins the layout.

TAR is given two ways, each labelled: at the threshold where the test pairs themselves reach the FAR (how
DET curves read, an optimistic number), and at the threshold calibrated on the validation split (what
`verify` uses), with the FAR that threshold gives on the test pairs. --summary_only=true rewrites the summary
from the finished runs of the plan, whatever commit trained them, and trains nothing.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from losses import registry
from utils.core.config import ConfigError, TrainParams, parse_overrides, resolve, share
from utils.core.io import atomic_write, save_figure, write_json
from utils.core.options import Option, comma_list, split
from utils.core.presets import SEEDS_STUDY
from utils.core.progress import SeriesClock, say
from utils.core.provenance import code_identity
from utils.run.evaluate import read_curve
from utils.run.experiment import run_in_series
from utils.run.reuse import finished, reusable, same_numbers, vouched
from utils.scoring import paper_plots, plots
from utils.scoring.stats import mcnemar, paired, spread

LOSSES = ("arcface", "softmax")  # the default pair, in the order main.py hands over their params classes
SHARED = "softmax_shared"  # the arm of softmax trained with ArcFace's settings (--shared=true)
# (name in seeds.json, the two arms, what differs between them)
COMPARISONS = (("difference", "arcface", "softmax", "each loss with its own settings"),
               ("difference_shared", "arcface", SHARED, "one shared set of settings: the head alone differs"))
TARS = ("1e-03", "1e-04")
# the original's published numbers (one GPU run per loss, 128 px, ImageNet weights): a mark on paired.png
ORIGINAL = {"arcface": {"acc_1nn": 0.9958, "eer": 0.0020}, "softmax": {"acc_1nn": 0.9966, "eer": 0.0016}}
MAX_SEED = 2**31 - 1


OPTIONS = {"seeds": Option(None, "a count N (seeds 0 .. N-1) or a list of seeds such as 0,1,2"),
           "reuse": Option("false", "keep finished runs of the same params and code; resume an interrupted one",
                           bool),
           "shared": Option("false", "also train softmax with ArcFace's optimiser, schedule and augmentation, so "
                            "that the head is the only difference, and compare both ways", bool),
           "summary_only": Option("false", "train nothing: rewrite seeds.json/seeds.md and the DETs from the finished "
                                  "runs of the plan", bool)}


def parse_args(args: list[str]) -> tuple[list[int], bool, bool, bool, dict]:
    """--seeds=N (seeds 0..N-1) or --seeds=a,b,c; --reuse, --shared and --summary_only (true|false); the rest
    are field overrides."""
    opts, rest = split(args, OPTIONS)
    value = opts["seeds"]
    vals = comma_list("seeds", value, int)
    if "," not in value and len(vals) == 1:
        if not 1 <= vals[0] <= 100:
            raise ConfigError(f"--seeds={value}: give a count 1 .. 100 or a list such as 0,1,2.")
        vals = list(range(vals[0]))
    if not vals or len(set(vals)) != len(vals) or not all(0 <= v <= MAX_SEED for v in vals):
        raise ConfigError(f"--seeds={value}: give distinct seeds 0 .. {MAX_SEED}, e.g. 0,1,2 (or a count).")
    seeds, reuse, shared = vals, opts["reuse"], opts["shared"]
    overrides = parse_overrides(rest)
    own = [k for k in ("model_name", "seed", "loss_fuc_type", "resume") if k in overrides]
    if own:
        raise ConfigError(f"--{own[0]} is set by the seeds study for each run; choose seeds with --seeds.")
    return seeds or [], reuse, shared, opts["summary_only"], overrides


def settings_of(source: type[TrainParams], target: type[TrainParams]) -> dict:
    """The fields `target` takes from `source` so that only the head differs: every class default of
    `source` that differs from `target`'s, the model's name, its loss and the loss's own hyper-parameters
    apart (for the default pair: ArcFace's learning rate and weight decay)."""
    a, b = source(), target()
    head = {"model_name", "loss_fuc_type", *registry.hyper_fields()}
    return {f.name: getattr(a, f.name) for f in fields(a)
            if f.name not in head and getattr(a, f.name) != getattr(b, f.name)}


def arm(p: TrainParams) -> str:
    """Which arm of the study a run is: its loss, or SHARED for softmax under ArcFace's settings."""
    return SHARED if p.model_name.endswith(f"_shared_s{p.seed}") else p.loss_fuc_type


def plan(seeds: list[int], overrides: dict, pair: tuple[type[TrainParams], ...],
         shared: bool = False) -> list[TrainParams]:
    """Both models for every seed, and with `shared` the second model under the first one's settings
    (seed-major, so that pairs finish early); resolved before anything trains. Command-line fields apply
    to every arm."""
    results = Path(overrides.get("results_dir", "results")) / "seeds"
    ckpt = Path(overrides.get("ckpt_dir", "ckp")) / "seeds"
    mine = share(overrides, [overrides.get("loss_fuc_type", cls.loss_fuc_type) for cls in pair])
    arms = [(cls, {}, mine_, cls.model_name) for cls, mine_ in zip(pair, mine, strict=True)]
    if shared:
        arms.append((pair[1], settings_of(pair[0], pair[1]), mine[1], f"{pair[1].model_name}_shared"))
    runs = []
    for seed in seeds:
        for cls, borrowed, own, name in arms:
            values = {**SEEDS_STUDY, **borrowed, **own, "seed": seed, "model_name": f"{name}_s{seed}",
                      "results_dir": str(results), "ckpt_dir": str(ckpt)}
            runs.append(resolve(cls(), values))
    return runs


def study(args: list[str], pair: tuple[type[TrainParams], ...]) -> Path:
    """Train (or reuse) both models of `pair` (TrainArcFaceParams, TrainResnetParams) for every seed."""
    seeds, reuse, shared, summary_only, overrides = parse_args(args)
    runs = plan(seeds, overrides, pair, shared)
    root = Path(runs[0].results_dir)
    if summary_only:
        done = [p for p in runs if finished(p) is not None]
        say(f"summary of {len(done)} finished runs of {len(runs)} planned; nothing trains", False)
        write_summary(root, done)
    else:
        train_all(runs, reuse, root)
    print((root / "seeds.md").read_text() if (root / "seeds.md").is_file() else "no complete pair yet")
    return root


def train_all(runs: list[TrainParams], reuse: bool, root: Path) -> None:
    """Train (or reuse) every planned run in order, rewriting the summary after each."""
    now, equal = code_identity(), vouched()
    done: list[TrainParams] = []
    clock = SeriesClock(len(runs))
    for i, p in enumerate(runs):
        m = reusable(p, now, equal) if reuse else None
        trained = m is None
        if trained:
            m = run_in_series(p, reuse, "seeds study", i, len(runs))
        done.append(p)
        say(f"[{len(done)}/{len(runs)}] {p.model_name}: 1-NN {m['acc_1nn']:.4%}  EER {m['eer']:.4%}  "
            f"{clock.add(m, reused=not trained)}", False)
        write_summary(root, done)


def load_run(p: TrainParams) -> dict:
    folder = Path(p.results_dir) / p.model_name
    m = json.loads((folder / "metrics.json").read_text())
    wrong = {f["query"] for f in json.loads((folder / "failures.json").read_text())["misidentified"]}
    return {"folder": folder.as_posix(), "loss_fuc_type": p.loss_fuc_type, "arm": arm(p), "seed": p.seed,
            "acc_1nn": m["acc_1nn"],
            "eer": m["eer"], "tar_at_far": m["tar_at_far"], "best_epoch": m["best_epoch"],
            # TAR and FAR on the test pairs at the thresholds calibrated on validation (what verify uses)
            # (a FAR too small for the validation pairs to calibrate has no threshold; older runs have none)
            "tar_at_val_threshold": {t: {"tar": th["tar_test"], "far": th["far_test"]}
                                     for t, th in m.get("thresholds", {}).items() if t in TARS},
            "train_seconds": m["train_seconds"], "git_commit": m.get("git_commit"), "amp": m.get("amp"),
            "machine": m.get("machine"), "n_query": m["n_query"], "_wrong": wrong,
            # runs before the measured layout choice recorded none (they took NHWC on every CPU)
            "layout": ", ".join(f"{k}={m.get(k, 'unrecorded')}" for k in ("channels_last", "tiny_conv"))}


def check_combinable(rows: list[dict], equal: list[set[str]]) -> None:
    """One summary = one precision and training code that computes the same numbers."""
    amps = {r["amp"] for r in rows}
    if len(amps) > 1 or None in amps:
        raise ConfigError(f"the study's runs used different precisions ({sorted(map(str, amps))}); retrain them "
                          f"with one --amp (the study's default is off, fp32).")
    layouts = {r["layout"] for r in rows}
    if len(layouts) > 1:  # the golden check pins the layout, so a vouch does not cover a layout change
        raise ConfigError(f"the study's runs used different layouts ({'; '.join(sorted(layouts))}); retrain them "
                          f"with one --channels_last and --tiny_conv.")
    commits = {r["git_commit"] for r in rows}
    if None in commits or not same_numbers(commits, equal):
        raise ConfigError(f"the study's runs come from commits {sorted(map(str, commits))}, not all recorded as "
                          f"computing the same numbers; run python tests/golden.py --vouch at each, or retrain.")


def summarise(rows: list[dict]) -> dict:
    """seeds.json's "summary": per arm mean/std over the seeds of the default pair; each comparison
    (COMPARISONS) as the paired difference over the seeds both its arms ran, with McNemar per seed."""
    by = {name: {r["seed"]: r for r in rows if r["arm"] == name} for name in (*LOSSES, SHARED)}
    metric = {"acc_1nn": lambda r: r["acc_1nn"], "eer": lambda r: r["eer"],
              **{f"tar_at_far_{t}": (lambda r, t=t: r["tar_at_far"][t]) for t in TARS}}
    metric |= {f"tar_at_val_threshold_{t}": (lambda r, t=t: r["tar_at_val_threshold"][t]["tar"]) for t in TARS
               if all(t in (r.get("tar_at_val_threshold") or {}) for r in rows)}  # where every run has it
    seeds = sorted(set(by["arcface"]) & set(by["softmax"]))
    out: dict = {name: {k: spread([f(by[name][s]) for s in seeds]) for k, f in metric.items()} for name in LOSSES}
    for key, a, b, meaning in COMPARISONS:
        both = sorted(set(by[a]) & set(by[b]))
        if not both:
            continue
        if b not in out:  # the shared arm: its own spread over the seeds it ran
            out[b] = {k: spread([f(by[b][s]) for s in both]) for k, f in metric.items()}
        out[key] = {k: paired([f(by[a][s]) for s in both], [f(by[b][s]) for s in both]) for k, f in metric.items()}
        out[key]["compares"] = f"{a} - {b}: {meaning}"
        out[key]["seeds"] = both
        out[key]["mcnemar"] = []
        for s in both:  # discordant test images: right by one model, wrong by the other
            t = mcnemar(len(by[b][s]["_wrong"] - by[a][s]["_wrong"]), len(by[a][s]["_wrong"] - by[b][s]["_wrong"]))
            out[key]["mcnemar"].append({"seed": s, f"{a}_only_right": t.pop("only_a"),
                                        f"{b}_only_right": t.pop("only_b"), **t})
    out["seeds"] = seeds
    return out


def write_summary(root: Path, runs: list[TrainParams]) -> None:
    """The summary of the runs whose seed has another finished run beside it (complete seeds only)."""
    done = [q for q in runs if any(r.seed == q.seed and r is not q for r in runs)]
    if not done:
        return
    rows = [load_run(p) for p in done]
    check_combinable(rows, vouched())
    summary = summarise(rows)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    machines = [json.loads(m) for m in sorted({json.dumps(r["machine"], sort_keys=True) for r in rows})]
    write_json(root / "seeds.json", {"runs": public, "summary": summary,
                                     "commits": sorted({r["git_commit"] for r in rows}), "machines": machines,
                                     "amp": rows[0]["amp"]})
    with atomic_write(root / "seeds.md") as f:
        f.write(markdown(public, summary))
    for out in (root / "DET_seeds.png", root.parent / "DET.png"):  # the headline picture is the study's
        draw(rows, out)
    draw_paired(rows, summary, root / "paired.png")


def draw_paired(rows: list[dict], summary: dict, out: Path) -> None:
    """paired.png: each comparison's per-seed differences with their mean and 95 % t-interval, in test images
    (1-NN) and EER points; the own-settings comparison also shows the original's single-run difference."""
    n = rows[0]["n_query"]
    scale = {"acc_1nn": n, "eer": 100.0}  # 1-NN in test images, EER in percentage points
    lines = []
    for key, a, b, meaning in COMPARISONS:
        if key not in summary:
            continue
        d, seeds = summary[key], summary[key]["seeds"]
        line = {"label": f"{a} - {b}\n({meaning})", "seeds": seeds}
        for m, k in scale.items():
            ci = d[m]["ci95"]
            line[m] = {"per_seed": [x * k for x in d[m]["differences"]], "mean": d[m]["mean"] * k,
                       "ci95": None if ci is None else [ci[0] * k, ci[1] * k]}
        if b == "softmax":
            line["reference"] = {m: (ORIGINAL[a][m] - ORIGINAL[b][m]) * k for m, k in scale.items()}
            line["reference"]["label"] = "original (one run each)"
        lines.append(line)
    fig = paper_plots.paired_differences(lines, [("acc_1nn", f"1-NN: test images of {n:,} (> 0: ArcFace better)"),
                                                 ("eer", "EER: points (< 0: ArcFace better)")])
    save_figure(fig, out)
    plots.close(fig)


def _pm(s: dict, scale: float = 100, digits: int = 3) -> str:
    sd = "-" if s["std"] is None else f"{s['std'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {sd} ({s['n']})"


LABELS = {"acc_1nn": "1-NN acc %", "eer": "EER %",
          **{f"tar_at_far_{t}": f"TAR % at FAR {float(t):.0e}, test-set threshold" for t in TARS},
          **{f"tar_at_val_threshold_{t}": f"TAR % at the validation threshold for FAR {float(t):.0e}" for t in TARS}}


def _tars(r: dict) -> str:
    """The per-seed TAR cells: at the test-set thresholds, then at the validation-calibrated ones (test FAR)."""
    test = " / ".join(f"{r['tar_at_far'][t] * 100:.2f}" for t in TARS)
    val = r.get("tar_at_val_threshold") or {}
    cal = " / ".join(f"{val[t]['tar'] * 100:.2f} ({val[t]['far']:.1e})" if t in val else "-" for t in TARS)
    return f"{test} | {cal}"


def markdown(rows: list[dict], summary: dict) -> str:
    """seeds.md: per-seed rows, mean ± std (n), paired differences and McNemar per seed; in %."""
    fars = " / ".join(f"{float(t):.0e}" for t in TARS)
    lines = [f"| loss | seed | 1-NN acc % | EER % | TAR % at FAR {fars}, test-set thresholds | TAR % (test FAR) at the "
             f"validation thresholds for FAR {fars} | best epoch (from 1) | commit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["arm"], r["seed"])):
        lines.append(f"| {r['arm']} | {r['seed']} | {r['acc_1nn'] * 100:.2f} | {r['eer'] * 100:.3f} | {_tars(r)} | "
                     f"{r['best_epoch'] + 1} | {str(r['git_commit'])[:10]} |")
    keys = [k for k in LABELS if k in summary["arcface"]]
    lines += ["", "| | " + " | ".join(LABELS[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for name in (*LOSSES, SHARED):
        if name in summary:
            lines.append(f"| {name}, mean ± std (n) | " + " | ".join(_pm(summary[name][k]) for k in keys) + " |")
    mcnemar_rows = []
    for key, a, b, _ in COMPARISONS:
        if key not in summary:
            continue
        d = summary[key]
        ci = [("-" if d[k]["ci95"] is None else f"[{d[k]['ci95'][0] * 100:.3f}, {d[k]['ci95'][1] * 100:.3f}]")
              for k in keys]
        label = "ArcFace - softmax" if b == "softmax" else f"{a} - {b}"
        lines.append(f"| {label}, paired | " + " | ".join(_pm(d[k]) for k in keys) + " |")
        lines.append("| 95 % t-interval | " + " | ".join(ci) + " |")
        mcnemar_rows += [f"| {a} - {b} | {m['seed']} | {m[f'{a}_only_right']} | {m[f'{b}_only_right']} | "
                         f"{m['p_value']:.3g} | {m['method']} |" for m in d["mcnemar"]]
    lines += ["", "| comparison | seed | test images only the first gets right | only the second | McNemar p | test |",
              "|---|---|---|---|---|---|", *mcnemar_rows]
    return "\n".join(lines) + "\n"


def median_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The pointwise median FRR of several DET curves on one log-spaced FAR grid."""
    lo = max(min(float(far[far > 0].min()) for far, _ in curves), 1e-8)
    grid = np.logspace(np.log10(lo), 0, 400)
    frrs = []
    for far, frr in curves:
        order = np.argsort(far, kind="stable")
        frrs.append(np.interp(grid, far[order], frr[order]))
    return grid, np.median(np.stack(frrs), axis=0)


def draw(rows: list[dict], out: Path) -> None:
    """DET_seeds.png: every seed's curve thin, each loss's pointwise median bold."""
    curves = []
    for loss in (*LOSSES, SHARED):
        mine = [r for r in rows if r["arm"] == loss]
        if not mine:
            continue
        got = [read_curve(Path(r["folder"]) / "far_frr.csv") for r in mine]
        color = registry.color(mine[0]["loss_fuc_type"])
        ls = "--" if loss == SHARED else "-"  # softmax under ArcFace's settings: softmax's colour, dashed
        curves += [{"label": None, "far": far, "frr": frr, "eer": r["eer"], "color": color, "lw": 0.7, "alpha": 0.5,
                    "ls": ls} for r, (far, frr) in zip(mine, got, strict=True)]
        far, frr = median_curve(got)
        eer = spread([r["eer"] for r in mine])
        curves.append({"label": f"{loss}: median FRR over {len(mine)} seeds at each FAR; EER mean ± std {_pm(eer)} %",
                       "far": far, "frr": frr, "eer": eer["mean"], "color": color, "lw": 2.2, "ls": ls,
                       "legend_eer": False})
        curves[-1 - len(mine)]["label"] = f"{loss}: one seed each (seeds {', '.join(str(r['seed']) for r in mine)})"
        curves[-1 - len(mine)]["legend_eer"] = False
    fig = plots.det_figure(curves, "DET over seeds")
    save_figure(fig, out)
    plots.close(fig)
