"""The layout shows the architecture: utils/ is grouped by concern, each group imports only the groups
below it (its __init__ says which), and no module imports a top-level script."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# group -> what its modules may import (besides the standard library and third-party packages)
ALLOWED = {
    "core": {"utils.core", "losses.registry"},
    "data": {"utils.core", "utils.data"},
    "scoring": {"utils.core", "losses.registry", "utils.scoring"},
    "training": {"utils.core", "utils.data", "utils.scoring", "models", "utils.training"},
    "run": {"utils.core", "utils.data", "utils.scoring", "utils.training", "losses", "models", "utils.run"},
    "inference": {"utils.core", "utils.data", "utils.scoring", "models", "utils.inference"},
    "cli": {"utils", "losses", "models"},
}
SCRIPTS = {"main", "trainArcFace", "trainResnet"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def project(name: str) -> bool:
    return name.split(".")[0] in ("utils", "losses", "models", *SCRIPTS)


def test_each_group_imports_only_the_groups_below_it() -> None:
    assert sorted(p.name for p in (ROOT / "utils").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(ALLOWED)
    assert sorted(p.name for p in (ROOT / "utils").glob("*.py")) == ["__init__.py"]  # every module in a group
    bad = []
    for group, allowed in ALLOWED.items():
        for py in (ROOT / "utils" / group).glob("*.py"):
            for name in filter(project, imports(py)):
                if name.split(".")[0] in SCRIPTS:
                    bad.append(f"{py.relative_to(ROOT)} imports the script {name}")
                elif not any(name == a or name.startswith(a + ".") or a.startswith(name + ".") for a in allowed):
                    bad.append(f"{py.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_group_docstrings_state_their_rule() -> None:
    for group in ALLOWED:
        doc = ast.get_docstring(ast.parse((ROOT / "utils" / group / "__init__.py").read_text()))
        assert doc and "may import" in doc, group


def test_no_package_file_is_ignored_by_git() -> None:
    # a too-broad .gitignore line ('data/') once kept utils/data/__init__.py out of every clone
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return  # a zip download: nothing to check
    paths = [f"utils/{g}/__init__.py" for g in ALLOWED] + ["utils/__init__.py", "losses/__init__.py",
                                                            "models/__init__.py"]
    paths += [str(p.relative_to(ROOT)) for d in ("utils", "losses", "models", "tests", "bench")
              for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "", f"ignored by .gitignore, so missing from every clone:\n{out.stdout}"


def test_no_import_circle_between_modules() -> None:
    """Module-level or not, no chain of project imports leads back to where it started (issue 34)."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
             for top in ("utils", "losses", "models") for p in (ROOT / top).rglob("*.py")}
    files = {k.removesuffix(".__init__"): v for k, v in files.items()}
    edges = {m: {n for n in imports(p) if n in files and n != m} for m, p in files.items()}
    cycles, state = [], dict.fromkeys(files, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state[n] == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif state[n] == 0:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(files):
        if state[m] == 0:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
