"""When a finished run may stand in for training it again (grid and seeds study, --reuse=true).

A published folder is one complete run (utils/run/rundir.py): its params.json made its metrics.json. It is
reused when its params equal the planned run's, field by field, apart from fields that cannot change a
result; the seeds study also asks that the same code trained it: the same commit, or two commits that
results/numerics.json records as computing the golden quick_debug numbers identically.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from losses import registry
from utils.core.config import OUTLIER_KINDS, TrainParams
from utils.core.progress import say
from utils.core.provenance import ROOT
from utils.run.experiment import quick_debug_params

VOUCHED = ROOT / "results" / "numerics.json"  # commits checked to compute the golden numbers identically
# fields that do not change a run's result (or are derived from the data when planned as 0)
NOT_COMPARED = ("use_tqdm", "data_root", "resume", "world_size", "device", "eval_batch_size", "log_steps",
                "input_mean", "input_std", "results_dir", "ckpt_dir", "channels_last", "tiny_conv", "tensorboard")
# fields added after runs were committed, with the value that reproduces those runs' behaviour
# (eval_amp: runs before it existed embedded under autocast, bf16 on the CPU that ran them)
ADDED_LATER = {"ema_decay": 0.0, "eval_amp": True, "aug_degrees": 10.0, "aug_shift": 0.1, "aug_scale": 0.1,
               "label_smoothing": 0.0, "outliers": "off", "outlier_fraction": 0.2, "outlier_weight": 0.5,
               "energy_in": -12.0, "energy_out": -4.0, "outlier_kinds": ",".join(OUTLIER_KINDS), "aug_erode": 0.0}


def finished(p: TrainParams) -> dict | None:
    """metrics.json of an earlier run with the same params, or None (absent, or other params)."""
    folder = Path(p.results_dir) / p.model_name
    try:
        old = json.loads((folder / "params.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    new = dataclasses.asdict(quick_debug_params(p))  # what run() writes to params.json
    # a hyper-parameter the loss does not take changes nothing (older runs recorded one anyway: scale=30.0)
    unused = registry.unused_by(p.loss_fuc_type)
    same = all(old.get(k, ADDED_LATER.get(k)) == v for k, v in new.items() if k not in NOT_COMPARED and k not in unused)
    if p.input_std > 0:
        same = same and old.get("input_mean") == p.input_mean and old.get("input_std") == p.input_std
    return metrics if same else None


def vouched() -> list[set[str]]:
    """Groups of commits results/numerics.json records as computing the same numbers, one group per golden
    reference they were checked against: a re-pinned reference (a change that moved the numbers) starts a
    new group, so commits on either side of it never count as equal. Empty when the file is absent or damaged."""
    try:
        commits = json.loads(VOUCHED.read_text())["commits"]
        groups: dict[str, set[str]] = {}
        for sha, entry in commits.items():
            for check in entry["checks"]:
                groups.setdefault(check["reference"], set()).add(sha)
        return list(groups.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def same_numbers(commits: set[str], equal: list[set[str]]) -> bool:
    """One commit, or commits all vouched against one reference."""
    return len(commits) <= 1 or any(commits <= group for group in equal)


def code_mismatch(m: dict, now: dict, equal: list[set[str]]) -> str | None:
    """Why the run of metrics `m` was not trained by code that computes what `now` computes; None if it was."""
    old = m.get("git_commit")
    if old is None:
        return "it records no commit"
    if m.get("git_dirty") or m.get("code_before_resume"):
        return f"it was trained from a tree with uncommitted changes or by two versions of the code ({old[:10]})"
    if now.get("git_commit") is None or now.get("git_dirty"):
        return "this tree's code is not a clean commit (commit or stash your changes)"
    if same_numbers({old, now["git_commit"]}, equal):
        return None
    return (f"it was trained by commit {old[:10]}, this is {now['git_commit'][:10]}, and results/numerics.json "
            f"does not record both as computing the same golden numbers (python tests/golden.py --vouch at each)")


def reusable(p: TrainParams, now: dict, equal: list[set[str]]) -> dict | None:
    """finished(p), when code that computes what this code computes trained it (the seeds study's rule)."""
    m = finished(p)
    if m is None:
        return None
    why = code_mismatch(m, now, equal)
    if why:
        say(f"{p.model_name}: not reused: {why}; training it again.", False)
        return None
    return m
