"""Not one number moves: every loss's quick_debug run (fp32, CPU) equals the golden numbers recorded
before the redesign (tests/golden.py), on every kernel path this machine can run."""

from __future__ import annotations

import json

import golden
import pytest
from conftest import needs_mnist


def _expected(path: str) -> dict:
    fixture = json.loads(golden.FIXTURE.read_text())
    if path not in fixture:
        pytest.skip(f"no golden numbers recorded for the {path} kernel path (python tests/golden.py --record)")
    return fixture[path]["numbers"]


@needs_mnist
def test_quick_debug_numbers_of_every_loss_are_the_golden_ones() -> None:
    path = golden.kernel_path()
    assert golden.differences(_expected(path), golden.measure()) == []


@needs_mnist
def test_quick_debug_numbers_on_the_avx2_kernel_path_are_the_golden_ones() -> None:
    """The kernel path of CPUs without AVX-512, forced where this one has it (ATen reads it at start-up)."""
    if golden.kernel_path() == "avx2":
        pytest.skip("the native path is AVX2: the other test covers it")
    path, numbers = golden.in_subprocess(golden.FORCED_AVX2)
    if path != "avx2":
        pytest.skip(f"this CPU cannot run the AVX2 kernel path (it gives {path})")
    assert golden.differences(_expected(path), numbers) == []


def test_differences_names_every_changed_value() -> None:
    old = {"arcface": {"eer": 0.1, "tar_at_far": {"1e-03": 0.5}, "history": [{"val_loss": 1.0}]}}
    new = {"arcface": {"eer": 0.1, "tar_at_far": {"1e-03": 0.6}, "history": [{"val_loss": 1.5}]}}
    assert golden.differences(old, new) == ["arcface.history[0].val_loss: 1.0 -> 1.5",
                                            "arcface.tar_at_far.1e-03: 0.5 -> 0.6"]
    assert golden.differences(old, old) == []
