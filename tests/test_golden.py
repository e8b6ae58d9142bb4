"""Not one number moves: every loss's quick_debug run (fp32, CPU) of this checkout equals that of the
reference commit computed on this same machine (tests/golden.py), on every kernel path it can run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import golden
import pytest
from conftest import needs_mnist


def _compare_or_skip(env: dict[str, str], losses: tuple[str, ...] = golden.LOSSES) -> tuple[dict, list[str]]:
    try:
        return golden.compare(env, losses=losses)
    except golden.NoHistory as e:
        pytest.skip(f"the golden check compares with commit {golden.REFERENCE[:10]}, which is not here: {e}")


@needs_mnist
def test_quick_debug_numbers_of_every_loss_are_the_reference_commits() -> None:
    fp, diff = _compare_or_skip({})
    assert diff == [], f"{len(diff)} numbers differ from {golden.REFERENCE[:10]} on {fp}"


@needs_mnist
def test_quick_debug_numbers_on_the_avx2_kernel_path_are_the_reference_commits() -> None:
    """The kernel path of CPUs without AVX-512, forced where this one has it (ATen reads it at start-up), for
    the study's two losses (every loss's formula is checked on the native path; this halves the test's time)."""
    if golden.probe({})["kernel_path"] == "avx2":
        pytest.skip("the native path is AVX2: the other test covers it")
    if golden.probe(golden.FORCED_AVX2)["kernel_path"] != "avx2":
        pytest.skip("this CPU cannot run the AVX2 kernel path")
    fp, diff = _compare_or_skip(golden.FORCED_AVX2, ("softmax", "arcface"))
    assert diff == [], f"{len(diff)} numbers differ from {golden.REFERENCE[:10]} on {fp}"


def test_differences_names_every_changed_value() -> None:
    old = {"arcface": {"eer": 0.1, "tar_at_far": {"1e-03": 0.5}, "history": [{"val_loss": 1.0}]}}
    new = {"arcface": {"eer": 0.1, "tar_at_far": {"1e-03": 0.6}, "history": [{"val_loss": 1.5}]}}
    assert golden.differences(old, new) == ["arcface.history[0].val_loss: 1.0 -> 1.5",
                                            "arcface.tar_at_far.1e-03: 0.5 -> 0.6"]
    assert golden.differences(old, old) == []


def test_an_entry_serves_only_the_machine_it_was_recorded_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture is a cache, not truth: another CPU, thread count, torch, kernel path or run size finds nothing."""
    monkeypatch.setattr(golden, "FIXTURE", tmp_path / "fixture.json")
    monkeypatch.setattr(golden, "CACHE", tmp_path / "cache.json")
    here = {"cpu": "Some CPU", "cpu_flags": "0123", "threads": 2, "torch": "2.14.1", "kernel_path": "avx512"}
    golden.store(golden.FIXTURE, "abc", here, {"arcface": {"eer": 0.1}})
    assert golden.cached("abc", here) == {"arcface": {"eer": 0.1}}
    for key, other in (("cpu", "Other CPU"), ("cpu_flags", "4567"), ("threads", 1), ("torch", "2.15.0"),
                       ("kernel_path", "avx2")):
        assert golden.cached("abc", {**here, key: other}) is None, key
    assert golden.cached("def", here) is None
    golden.store(golden.CACHE, "def", here, {"arcface": {"eer": 0.2}})  # computed at test time: the user's cache
    assert golden.cached("def", here) == {"arcface": {"eer": 0.2}}
    golden.store(golden.FIXTURE, "abc", here, {"arcface": {"eer": 0.3}})  # replaced, not doubled
    assert len(json.loads(golden.FIXTURE.read_text())["entries"]) == 1
    monkeypatch.setattr(golden, "RUN", {"img_size": 28})  # numbers of runs of another size are not these
    assert golden.cached("abc", here) is None


def test_without_history_the_check_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unpacked archive has no commits to check out: NoHistory, which the tests turn into a skip."""
    monkeypatch.setattr(golden, "ROOT", tmp_path)
    with pytest.raises(golden.NoHistory, match="not in this checkout's history"):
        golden.full_sha(golden.REFERENCE)


def test_a_commit_is_checked_out_from_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference is found by git, in a repository made here (two commits)."""
    def sh(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    sh("init", "-q")
    for i in range(2):
        (tmp_path / "f.txt").write_text(str(i))
        sh("add", "f.txt")
        sh("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", str(i))
    monkeypatch.setattr(golden, "ROOT", tmp_path)
    first = sh("rev-list", "--max-parents=0", "HEAD")
    assert golden.full_sha(first[:8]) == first
