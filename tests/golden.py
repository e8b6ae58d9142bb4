"""The golden check: this commit computes the same training numbers as the reference commit, on this machine.

One `--quick_debug=true --amp=off --img_size=16` run of every loss (fp32, CPU) gives ~100 numbers (metrics and the
per-epoch history). A refactor that changes no number leaves them identical; a change to the training
numerics (data order, initialisation, a loss formula, the schedule) moves them. The numbers themselves
depend on the machine: another CPU, kernel path (AVX-512 or AVX2), thread count or torch version picks
other kernels that round differently, and training amplifies that. So the reference is a *commit*
(REFERENCE: the last commit that changed the numbers on purpose), and its numbers are computed on the
machine that compares, from a temporary `git worktree` of that commit, and cached by (commit, machine fingerprint):

    python tests/golden.py                   # this checkout against the reference, every kernel path here
    python tests/golden.py --vouch           # the same for HEAD (clean); if identical, record it in
    python tests/golden.py --vouch=SHA       #   results/numerics.json (utils/cli/seeds.py reads it)
    python tests/golden.py --vouch=SHA --reference=OLD   # a commit of an earlier study, against its reference
    python tests/golden.py --record          # compute the reference here and keep it in the fixture

tests/fixtures/golden_quick_debug.json holds entries recorded on machines this project ran on; an entry
serves only a machine with the same fingerprint, never as truth for another one. Entries computed at test
time go to a cache in the user's cache folder. Without git history (an unpacked archive) nothing can be
compared and the tests skip, saying why.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "golden_quick_debug.json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arcface-mnist" / "golden.json"
# Re-pinned only by a change meant to move the numbers, named in its commit message: 9431e89 (the last commit
# before the redesign of issue 24) until da980ca, fused AdamW (issue 32). Vouches group by reference.
REFERENCE = "da980caf494d3faf2e22af25619c58eb51183398"
LOSSES = ("softmax", "normface", "sphereface", "cosface", "arcface", "combined", "subcenter_arcface")
METRICS = ("acc_1nn", "acc_head", "val_acc_1nn", "eer", "eer_threshold", "auc", "tar_at_far")
HISTORY = ("train_loss", "val_loss", "val_acc", "val_angle_deg")
# The golden runs are quick_debug at 16 px: every layer, loss, augmentation and schedule step of a 28 px run in
# about half its seconds (96 s -> ~50 s for seven losses on a 2-core AVX2 CPU). Part of each entry's key, so
# numbers measured at another size are never compared with these.
RUN = {"img_size": 16}
# ATen and oneDNN take their AVX2 kernels on an AVX-512 CPU under this environment (read at start-up).
# Written here, not imported: this file also drives the reference commit's tree, whose modules differ.
FORCED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


class NoHistory(Exception):
    """The reference commit cannot be checked out here (no git, or no history)."""


def fingerprint() -> dict:
    """What decides which kernels run and how they round: CPU model and flags, threads, torch, kernel path."""
    import torch

    flags, cpu = "", "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        import platform

        cpu, flags = platform.processor() or platform.machine(), platform.platform()
    return {"cpu": cpu, "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "threads": torch.get_num_threads(), "torch": str(torch.__version__),
            "kernel_path": torch.backends.cpu.get_cpu_capability().lower()}


# Each loss's scale and margin as the reference commit trained them through the arcface command (the class's
# s = 16, m = 0.5), given explicitly: a loss now brings its own SPEC defaults, which must not move the numbers.
PINNED = {"normface": ["--scale=16"], "sphereface": ["--scale=16", "--margin=4"],
          "cosface": ["--scale=16", "--margin=0.5"], "combined": ["--scale=16", "--m1=1", "--m2=0.3", "--m3=0.2"],
          "subcenter_arcface": ["--scale=16", "--margin=0.5", "--subcenters=3"]}


def measure(root: Path = ROOT, losses: tuple[str, ...] = LOSSES) -> dict[str, dict]:
    """Train and evaluate each loss with quick_debug in fp32 on the CPU with the code in `root`."""
    if str(root) not in sys.path[:1]:
        sys.path.insert(0, str(root))
    import main

    assert Path(main.__file__).resolve().parent == Path(root).resolve(), f"imported {main.__file__}, not {root}"
    # Newer code times the layouts once per machine and keeps the fastest (utils/training/tuning.py):
    # pin the one the reference took on every CPU (NHWC, library convolutions), to compare numerics only.
    config = Path(root) / "utils" / "core" / "config.py"
    layout = ["--channels_last=true", "--tiny_conv=false"] if config.is_file() and "tiny_conv" in \
        config.read_text() else []
    out = {}
    # under pytest, in the RAM-backed folder tests/conftest.py chose for temporary files where it has room
    with tempfile.TemporaryDirectory(dir=os.environ.get("PYTEST_DEBUG_TEMPROOT")) as tmp:
        for loss in losses:
            cmd = "softmax" if loss == "softmax" else "arcface"
            extra = [] if loss in ("softmax", "arcface") else [f"--loss_fuc_type={loss}", f"--model_name=golden_{loss}"]
            extra += PINNED.get(loss, [])
            rc = main.main([cmd, "--quick_debug=true", "--amp=off", "--device=cpu", "--use_tqdm=false",
                            *(f"--{k}={v}" for k, v in RUN.items()), f"--results_dir={tmp}/results",
                            f"--ckpt_dir={tmp}/ckp", *layout, *extra])
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


def _script(env: dict[str, str], *args: str, root: Path = ROOT, timeout: int = 900) -> list:
    """Run this file in a fresh interpreter (ATen reads the kernel path once, at start-up) in `root`."""
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=root,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def probe(env: dict[str, str]) -> dict:
    """This machine's fingerprint under `env` (seconds: nothing is trained)."""
    return _script(env, "--fingerprint")


def in_subprocess(env: dict[str, str], root: Path = ROOT, losses: tuple[str, ...] = LOSSES) -> tuple[dict, dict]:
    """(fingerprint, numbers) of the code in `root`, measured in a fresh interpreter with `env` added."""
    fp, numbers = _script(env, "--measure", f"--root={root}", f"--losses={','.join(losses)}", root=root)
    return fp, numbers


def git(*args: str) -> str:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise NoHistory(f"git cannot run here ({e})") from None
    if r.returncode != 0:
        raise NoHistory(f"git {' '.join(args[:2])}: {r.stderr.strip()[:200]}")
    return r.stdout.strip()


def full_sha(commit: str) -> str:
    try:
        return git("rev-parse", "--verify", f"{commit}^{{commit}}")
    except NoHistory:
        raise NoHistory(f"commit {commit[:10]} is not in this checkout's history (an archive or a shallow "
                        f"clone); clone the repository with its history to run the golden check") from None


def _entries(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text()).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return []


def cached(commit: str, fp: dict) -> dict | None:
    """Numbers of `commit` on a machine of fingerprint `fp`: from the fixture, else the user's cache."""
    for path in (FIXTURE, CACHE):
        for e in _entries(path):
            if e.get("commit") == commit and e.get("machine") == fp and e.get("run") == RUN:
                return e["numbers"]
    return None


def store(path: Path, commit: str, fp: dict, numbers: dict) -> None:
    """Add (or replace) the entry of (commit, fingerprint) in a fixture-shaped file, written atomically."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    doc.setdefault("about", "golden quick_debug numbers per (commit, machine fingerprint): tests/golden.py")
    doc["reference"] = REFERENCE
    kept = [e for e in doc.get("entries", []) if e.get("run") == RUN and not (e.get("commit") == commit and
                                                                              e.get("machine") == fp)]
    doc["entries"] = [*kept, {"commit": commit, "machine": fp, "run": RUN, "recorded": str(datetime.date.today()),
                              "numbers": numbers}]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def numbers_of(commit: str, env: dict[str, str], losses: tuple[str, ...] = LOSSES) -> tuple[dict, dict]:
    """(fingerprint, numbers) of `commit` here under `env` for `losses`: cached, or trained from a temporary
    worktree (only a full set of losses is cached)."""
    commit = full_sha(commit)
    fp = probe(env)
    hit = cached(commit, fp)
    if hit is not None and set(losses) <= set(hit):
        return fp, {k: hit[k] for k in losses}
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        tree = Path(tmp) / "tree"
        git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            got, numbers = in_subprocess(env, root=tree, losses=losses)
        finally:
            git("worktree", "remove", "--force", str(tree))
    if got != fp:
        raise RuntimeError(f"the machine changed while measuring: {fp} then {got}")
    if set(numbers) == set(LOSSES):
        store(CACHE, commit, fp, numbers)
    return fp, numbers


def kernel_envs() -> list[dict[str, str]]:
    """The native kernel path, and the AVX2 path where this CPU has a better one (forced by environment)."""
    native = probe({})["kernel_path"]
    return [{}] if native == "avx2" else [{}, FORCED_AVX2]


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


def compare(env: dict[str, str], commit: str | None = None, losses: tuple[str, ...] = LOSSES,
            reference: str = REFERENCE) -> tuple[dict, list[str]]:
    """(fingerprint, differences) between `commit` (None: this checkout as it is) and the reference."""
    fp, ref = numbers_of(reference, env, losses)
    got, numbers = in_subprocess(env, losses=losses) if commit is None else numbers_of(commit, env, losses)
    if got != fp:
        raise RuntimeError(f"the machine changed while measuring: {fp} then {got}")
    return fp, differences(ref, numbers)


def vouch(commit: str = "HEAD", reference: str = REFERENCE) -> int:
    """Record `commit` in results/numerics.json when every kernel path here gives the reference's numbers.
    An older `reference` re-vouches commits of an earlier study on a new machine (their reference, not today's)."""
    sha, reference = full_sha(commit), full_sha(reference)
    if commit == "HEAD" and git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"):
        print("vouch needs a clean checkout of a commit (commit or stash your changes first), or --vouch=SHA")
        return 2
    checked, fps = [], []
    for env in kernel_envs():
        fp, diff = compare(env, sha, reference=reference)
        if diff:
            print(f"{sha[:10]} on the {fp['kernel_path']} kernel path differs from {reference[:10]}; not vouched:\n"
                  + "\n".join(diff[:20]))
            return 1
        checked.append(fp["kernel_path"])
        fps.append(fp)
    out = ROOT / "results" / "numerics.json"
    record = json.loads(out.read_text())
    entry = record["commits"].setdefault(sha, {})
    entry["kernel_paths"] = sorted(set(entry.get("kernel_paths", [])) | set(checked))
    check = {"reference": reference, "cpu": fps[0]["cpu"], "cpu_flags": fps[0]["cpu_flags"],
             "threads": fps[0]["threads"], "torch": fps[0]["torch"], "kernel_paths": checked, "run": RUN,
             "date": str(datetime.date.today())}
    entry["checks"] = [c for c in entry.get("checks", []) if {**c, "date": None} != {**check, "date": None}] + [check]
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"vouched {sha[:10]} ({', '.join(checked)} on {fps[0]['cpu']}, {fps[0]['threads']} threads) "
          f"in {out.relative_to(ROOT)}")
    return 0


def cli(argv: list[str]) -> int:
    os.environ.setdefault("DATA_ROOT", str(ROOT.parent / "shared" / "data"))
    opts = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in argv)
    if "fingerprint" in opts:
        print(json.dumps(fingerprint()))
        return 0
    if "measure" in opts:
        root = Path(opts.get("root") or ROOT)
        losses = tuple(opts["losses"].split(",")) if opts.get("losses") else LOSSES
        print(json.dumps([fingerprint(), measure(root, losses)]))
        return 0
    try:
        if "vouch" in opts:
            return vouch(opts["vouch"] or "HEAD", opts.get("reference") or REFERENCE)
        if "record" in opts:
            for env in kernel_envs():
                fp, numbers = numbers_of(REFERENCE, env)
                store(FIXTURE, REFERENCE, fp, numbers)
                print(f"recorded {REFERENCE[:10]} on {fp['cpu']} ({fp['kernel_path']}, {fp['threads']} threads) "
                      f"in {FIXTURE.relative_to(ROOT)}")
            return 0
        worst = 0
        for env in kernel_envs():
            fp, diff = compare(env)
            print("\n".join(diff) if diff else f"identical to {REFERENCE[:10]} ({fp['kernel_path']} kernel path, "
                  f"{fp['cpu']}, {fp['threads']} threads)")
            worst = max(worst, 1 if diff else 0)
        return worst
    except NoHistory as e:
        print(f"cannot compare: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
