"""The golden quick_debug numbers: what one `--quick_debug=true --amp=off` run of every loss computes.

A refactor that changes no number leaves these identical; a change to the training numerics (data
order, initialisation, a loss formula, the schedule) moves them. Recorded per CPU kernel path, because
AVX-512 and AVX2 kernels round differently and training amplifies that:

    python tests/golden.py --record          # this machine's native path, into tests/fixtures/
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python tests/golden.py --record   # the AVX2 path
    python tests/golden.py                   # compare with the fixture, print what differs
    python tests/golden.py --vouch           # compare on every kernel path here; if identical, record this
                                             # clean commit in results/numerics.json (utils/cli/seeds.py reads it)

tests/test_golden.py runs the comparison for every kernel path this machine can run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "golden_quick_debug.json"
LOSSES = ("softmax", "normface", "sphereface", "cosface", "arcface", "combined", "subcenter_arcface")
METRICS = ("acc_1nn", "acc_head", "val_acc_1nn", "eer", "eer_threshold", "auc", "tar_at_far")
HISTORY = ("train_loss", "val_loss", "val_acc", "val_angle_deg")
sys.path.insert(0, str(ROOT))
from utils.core.provenance import FORCED_AVX2  # noqa: E402 - the repository is on the path only now


def kernel_path() -> str:
    """'avx512', 'avx2', ... as ATen dispatches on this machine under the current environment."""
    import torch

    return torch.backends.cpu.get_cpu_capability().lower()


def measure(losses: tuple[str, ...] = LOSSES) -> dict[str, dict]:
    """Train and evaluate each loss with quick_debug in fp32 on the CPU; the numbers that must not move."""
    sys.path.insert(0, str(ROOT))
    import main

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loss in losses:
            cmd = "softmax" if loss == "softmax" else "arcface"
            extra = [] if loss in ("softmax", "arcface") else [f"--loss_fuc_type={loss}", f"--model_name=golden_{loss}"]
            extra += ["--margin=4"] if loss == "sphereface" else []  # an integer multiplier there
            rc = main.main([cmd, "--quick_debug=true", "--amp=off", "--device=cpu", "--use_tqdm=false",
                            f"--results_dir={tmp}/results", f"--ckpt_dir={tmp}/ckp", *extra])
            if rc != 0:
                raise SystemExit(f"golden run of {loss} failed (exit {rc})")
            name = f"golden_{loss}" if extra else f"resnet18_{loss}"
            folder = Path(tmp) / "results" / name
            m = json.loads((folder / "metrics.json").read_text())
            lines = (folder / "history.csv").read_text().splitlines()
            head = lines[0].split(",")
            rows = [dict(zip(head, line.split(","), strict=True)) for line in lines[1:]]
            out[loss] = {**{k: m[k] for k in METRICS}, "history": [{k: float(r[k]) for k in HISTORY} for r in rows]}
    return out


def in_subprocess(env: dict[str, str]) -> tuple[str, dict]:
    """(kernel path, measurements) from a fresh interpreter with `env` added: ATen reads the capability
    once, at start-up."""
    code = ("import json, sys; sys.path.insert(0, 'tests'); import golden; "
            "print(json.dumps([golden.kernel_path(), golden.measure()]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    path, numbers = json.loads(r.stdout.strip().splitlines()[-1])
    return path, numbers


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Every value that differs, as 'loss.field: old -> new' (exact comparison)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                out += differences(x, y, f"{prefix}{k}[{i}].") if isinstance(x, dict) else (
                    [] if x == y else [f"{prefix}{k}[{i}]: {x!r} -> {y!r}"])
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def vouch() -> int:
    """Record HEAD in results/numerics.json when every kernel path this machine runs gives the golden numbers."""
    sys.path.insert(0, str(ROOT))
    from utils.core.provenance import code_identity

    code = code_identity()
    if code["git_commit"] is None or code["git_dirty"]:
        print("vouch needs a clean checkout of a commit (commit or stash your changes first)")
        return 2
    fixture, checked = json.loads(FIXTURE.read_text()), []
    envs = [{}] + ([FORCED_AVX2] if kernel_path() != "avx2" else [])
    for env in envs:
        path, numbers = in_subprocess(env)
        if path in checked or path not in fixture:
            continue
        diff = differences(fixture[path]["numbers"], numbers)
        if diff:
            print(f"{path} kernel path differs from the golden numbers; not vouched:\n" + "\n".join(diff[:20]))
            return 1
        checked.append(path)
    if not checked:
        print("no kernel path of this machine has golden numbers; nothing vouched")
        return 2
    out = ROOT / "results" / "numerics.json"
    record = json.loads(out.read_text()) if out.is_file() else {
        "about": "commits whose training numerics were checked identical to the golden quick_debug numbers "
                 "(tests/fixtures/golden_quick_debug.json) by `python tests/golden.py --vouch`; runs of these "
                 "commits may share one seeds-study summary", "commits": {}}
    record["commits"][code["git_commit"]] = {"kernel_paths": checked}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"vouched {code['git_commit'][:10]} ({', '.join(checked)}) in {out.relative_to(ROOT)}")
    return 0


def cli() -> int:
    os.environ.setdefault("DATA_ROOT", str(ROOT.parent / "shared" / "data"))
    if "--vouch" in sys.argv:
        return vouch()
    path, numbers = kernel_path(), measure()
    fixture = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}
    if "--record" in sys.argv:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        fixture[path] = {"recorded_at": commit, "numbers": numbers}
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"recorded the {path} kernel path's numbers into {FIXTURE.relative_to(ROOT)}")
        return 0
    if path not in fixture:
        print(f"no golden numbers for the {path} kernel path; record them with --record")
        return 2
    diff = differences(fixture[path]["numbers"], numbers)
    print("\n".join(diff) if diff else f"identical to the golden numbers ({path} kernel path)")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(cli())
