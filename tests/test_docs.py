"""The READMEs and docs: short, links that resolve, headline numbers equal to the committed results, the
old tool names gone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "readme_en.md", ROOT / "readme.md"]
DOCS = sorted((ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_readme_fits_on_a_screen_and_has_the_setup_near_the_top(readme: Path) -> None:
    lines = readme.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    first_pip = next(i for i, line in enumerate(lines) if line.startswith("pip install torch=="))
    assert first_pip < 30
    assert "python -m pytest -q tests" in "\n".join(lines)


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (letters of any script kept), spaces -> '-'."""
    heads = re.findall(r"^#+ (.+)$", md.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("md", READMES + DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_images_and_anchors_resolve(md: Path) -> None:
    text = md.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        name, _, anchor = target.partition("#")
        path = (md.parent / name).resolve() if name else md
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            missing.append(target)
    assert not missing, f"{md.name}: links to missing files or headings {missing}"


def test_docs_exist_in_both_languages() -> None:
    en = {p.name for p in (ROOT / "docs" / "en").glob("*.md")}
    zh = {p.name for p in (ROOT / "docs" / "zh").glob("*.md")}
    assert en == zh and {"evaluation.md", "defaults.md", "performance.md", "grid.md", "reliability.md",
                         "multi_gpu.md", "inference.md", "figures.md"} <= en


def pct(x: float, digits: int) -> str:
    return f"{x * 100:.{digits}f} %"


PAIR = ("results/resnet18_arcface", "results/resnet18_softmax")  # the default compare, current code
EARLIER = ("results/ablation/resnet18_arcface_avx512", "results/ablation/resnet18_softmax_avx512")


def assert_quotes(path: Path, folders: tuple[str, ...]) -> None:
    text = path.read_text(encoding="utf-8")
    for folder in folders:
        m = json.loads((ROOT / folder / "metrics.json").read_text())
        assert pct(m["acc_1nn"], 2) in text and pct(m["eer"], 3) in text, (path.name, folder)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_headline_numbers_are_the_committed_ones(readme: Path) -> None:
    """The headline: each loss's mean ± std over the seeds study with its n; the single pair behind DET.png."""
    assert_quotes(readme, PAIR)
    study = json.loads((ROOT / "results" / "seeds" / "seeds.json").read_text())["summary"]
    text = readme.read_text(encoding="utf-8")
    for loss in ("arcface", "softmax"):
        acc, eer = study[loss]["acc_1nn"], study[loss]["eer"]
        assert f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} %" in text, loss
        assert f"{100 * eer['mean']:.3f} ± {100 * eer['std']:.3f} %" in text, loss
        assert f"{acc['n']} seeds" in text or f"{acc['n']} 个种子" in text


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_run_to_run_variation_quotes_both_pairs(lang: str) -> None:
    assert_quotes(ROOT / "docs" / lang / "evaluation.md", PAIR + EARLIER)


def test_no_old_tool_names_in_the_tree() -> None:
    # the margin-loss grid was once called "benchmark", which clashed with bench/ (speed studies)
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    old = re.compile(r"main\.py benchmark|utils/benchmark|results/benchmark|benchmark\.(json|md)\b")
    hits = []
    for name in files.split():
        p = ROOT / name
        if p.suffix in (".py", ".md", ".sh", ".toml", ".txt") and p.is_file() and p.name != "test_docs.py":
            hits += [f"{name}: {m.group(0)}" for m in old.finditer(p.read_text(encoding="utf-8", errors="replace"))]
    assert not hits, hits


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_grid_page_quotes_the_committed_sphereface_rerun(lang: str) -> None:
    rows = [line.split("|")[2:-1] for line in (ROOT / "results/sphereface_rerun/grid/grid.md").read_text(
        encoding="utf-8").splitlines() if line.startswith("| sphereface |")]
    assert len(rows) == 2  # MNIST and Fashion-MNIST, each mean ± std over the rerun's seeds
    text = (ROOT / "docs" / lang / "grid.md").read_text(encoding="utf-8").replace("**", "")  # bold cells
    for cells in rows:
        assert "|".join(cells) in text, cells


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_evaluation_page_quotes_the_committed_precision_measurement(lang: str) -> None:
    report = json.loads((ROOT / "results/bench/eval_precision.json").read_text())
    text = (ROOT / "docs" / lang / "evaluation.md").read_text(encoding="utf-8")
    assert set(report["models"]) == {"resnet18_arcface", "resnet18_softmax"}  # the default pair, both halves
    for name, out in report["models"].items():
        for label in ("fp32", "bf16"):
            m = out[label]
            row = f"| {pct(m['acc_1nn'], 2)} | {pct(m['eer'], 4)} | {pct(m['tar_at_far']['1e-03'], 2)} |"
            assert row in text, (lang, name, label, row)
        err = out["cosine_fp32_vs_bf16"]
        assert f"{err['mean_error']:.1e} / {err['max_error']:.1e} | {out['nn_decisions_differ']} |" in text, name


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_test_the_reliability_page_names_exists(lang: str) -> None:
    page = (ROOT / "docs" / lang / "reliability.md").read_text()
    defined = set(re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py")),
                             re.M))
    named = set(re.findall(r"`(?:tests/\w+\.py::)?(test_\w+)`", page))
    assert named and named <= defined, sorted(named - defined)


@pytest.mark.parametrize("readme", ["readme_en.md", "readme.md"])
def test_the_layout_table_names_every_module(readme: str) -> None:
    text = (ROOT / readme).read_text()
    table = text[text.index("| `main.py` |"):]
    table = table[:table.index("\n\n")]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines()}
    for f in sorted((ROOT / "utils").glob("*/*.py")):
        if f.name != "__init__.py":
            row = rows.get(f"utils/{f.parent.name}/")
            assert row and f"`{f.name}`" in row, f"{readme}'s layout table does not name utils/{f.parent.name}/{f.name}"
    assert "`registry.py`" in rows["losses/"]
    named = set(re.search(r"bench\.\{([\w,]+)\}", rows["bench/"]).group(1).split(","))
    runnable = {f.stem for f in (ROOT / "bench").glob("*.py") if '__name__ == "__main__"' in f.read_text()}
    assert runnable == named, f"{readme}'s bench row: missing {runnable - named}, gone {named - runnable}"


def test_paths_named_in_code_comments_exist() -> None:
    """No drift: a docs/, tests/, bench/ or code path written in a comment or docstring resolves (and no comment
    points at a README section: the research detail lives in docs/)."""
    pattern = re.compile(r"(?<![\w/.])((?:docs|tests|bench|utils|losses|models)/[\w./-]*\w)")  # results/: outputs
    missing = []
    for py in [*ROOT.glob("*.py"), *ROOT.glob("utils/**/*.py"), *ROOT.glob("losses/*.py"), *ROOT.glob("models/*.py"),
               *ROOT.glob("bench/*.py")]:
        for n, line in enumerate(py.read_text().splitlines(), 1):
            text = line.split("#", 1)[1] if "#" in line and not line.strip().startswith(("'", '"')) else line
            for path in pattern.findall(text):
                if any(c in path for c in "<>*{") or "." not in path.rsplit("/", 1)[-1] and not (ROOT / path).exists():
                    continue  # a pattern or a folder made at run time
                module = path.split(".")[0] + ".py"  # utils/metrics.calibrate -> utils/scoring/metrics.py
                if not (ROOT / path).exists() and not (ROOT / module).exists():
                    missing.append(f"{py.relative_to(ROOT)}:{n}: {path}")
            if re.search(r"readme, \"", line):
                missing.append(f"{py.relative_to(ROOT)}:{n}: a README section (moved to docs/)")
    assert not missing, "\n".join(missing)


STUDIES = ("results/seeds", "results/study5/seeds")  # the three-seed study and issue 31's five-seed study


@pytest.mark.parametrize("folder", STUDIES)
def test_the_committed_seeds_summary_recomputes_from_its_runs(folder: str) -> None:
    """seeds.json: every run's numbers are its own metrics.json's, each arm's mean and sample std and each
    paired difference (with its 95 % t-interval) recompute from them, and every run names a commit of this
    history (when there is a git history)."""
    import statistics

    from scipy.stats import t as student

    path = ROOT / folder / "seeds.json"
    if not path.is_file():
        pytest.skip("no seeds study committed yet")
    study = json.loads(path.read_text())
    for r in study["runs"]:
        m = json.loads((ROOT / r["folder"] / "metrics.json").read_text())
        assert (r["acc_1nn"], r["eer"], r["git_commit"]) == (m["acc_1nn"], m["eer"], m["git_commit"])
        assert m["amp"] == "fp32" and m["git_dirty"] is False
        if (ROOT / ".git").exists():
            ok = subprocess.run(["git", "merge-base", "--is-ancestor", m["git_commit"], "HEAD"], cwd=ROOT)
            assert ok.returncode == 0, f"{r['folder']} was trained by {m['git_commit']}, not an ancestor of HEAD"
    summary, seeds = study["summary"], study["summary"]["seeds"]

    def metric(arm: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in study["runs"]
                if r.get("arm", r["loss_fuc_type"]) == arm and r["seed"] in seeds}

    arms = [a for a in ("arcface", "softmax", "softmax_shared") if a in summary]
    for arm in arms:
        for key in ("acc_1nn", "eer"):
            values, s = list(metric(arm, key).values()), summary[arm][key]
            assert s["mean"] == pytest.approx(statistics.fmean(values)) and s["n"] == len(values), (arm, key)
            assert s["std"] == (pytest.approx(statistics.stdev(values)) if len(values) > 1 else None)
    for name, other in (("difference", "softmax"), ("difference_shared", "softmax_shared")):
        if name not in summary:
            continue
        for key in ("acc_1nn", "eer"):
            a, b = metric("arcface", key), metric(other, key)
            diffs = [a[k] - b[k] for k in sorted(a) if k in b]
            d = summary[name][key]
            assert d["differences"] == pytest.approx(diffs) and d["n"] == len(diffs) >= 2, (name, key)
            half = student.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
            assert d["ci95"] == pytest.approx([statistics.fmean(diffs) - half, statistics.fmean(diffs) + half])


@pytest.mark.parametrize("folder", STUDIES)
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_seeds_page_quotes_the_committed_tables(lang: str, folder: str) -> None:
    table = ROOT / folder / "seeds.md"
    if not table.is_file():
        pytest.skip("no seeds study committed yet")
    page = (ROOT / "docs" / lang / "seeds.md").read_text()
    missing = [row for row in table.read_text().splitlines() if row.startswith("|") and row not in page]
    assert not missing, missing[:3]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_wild_page_quotes_the_committed_tables(lang: str) -> None:
    """docs/*/wild.md quotes every row of results/wild/wild.md, which is what wild.json's reports render to."""
    from utils.inference.wild_report import markdown

    table = ROOT / "results" / "wild" / "wild.md"
    if not table.is_file():
        pytest.skip("no wild measurement committed yet")
    reports = json.loads((ROOT / "results" / "wild" / "wild.json").read_text())
    assert table.read_text() == "".join(markdown(name, r) for name, r in sorted(reports.items()))
    page = (ROOT / "docs" / lang / "wild.md").read_text()
    missing = [row for row in table.read_text().splitlines() if row.startswith("|") and row not in page]
    assert not missing, missing[:3]
