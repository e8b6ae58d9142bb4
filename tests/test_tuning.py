"""The layout and tiny-map convolution choice: measured per machine, cached, honoured when set by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainArcFace import TrainArcFaceParams
from utils.core.config import resolve
from utils.training import tuning

CPU = torch.device("cpu")


@pytest.fixture
def timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """_time replaced by a table (NHWC + tiny fastest unless told otherwise); records each call."""
    monkeypatch.setattr(tuning, "CACHE", tmp_path / "tuning.json")
    calls: list = []
    table = {(False, False): 1.0, (True, False): 0.9, (False, True): 0.8, (True, True): 0.7}

    def fake(params, cl, tiny, batch, reps):
        calls.append((cl, tiny, batch))
        torch.rand(3)  # measuring draws random numbers too
        return table[(cl, tiny)]

    monkeypatch.setattr(tuning, "_time", fake)
    return calls


def test_auto_takes_the_fastest_measured_and_caches_it(timed: list) -> None:
    p = resolve(TrainArcFaceParams(), {"batch_size": 256})
    state = torch.get_rng_state()
    q, how = tuning.choose(p, CPU)
    assert (q.channels_last, q.tiny_conv, how["source"]) == ("true", "true", "measured")
    assert torch.equal(torch.get_rng_state(), state)  # the run's random streams are untouched
    assert len(timed) == 4 and {b for *_, b in timed} == {128}  # measured at a batch of at most 128
    again, how = tuning.choose(p, CPU)
    assert len(timed) == 4 and (again.channels_last, again.tiny_conv) == ("true", "true")  # from the cache


def test_a_value_set_by_hand_is_kept(timed: list) -> None:
    q, how = tuning.choose(resolve(TrainArcFaceParams(), {"channels_last": "false", "tiny_conv": "false"}), CPU)
    assert (q.channels_last, q.tiny_conv, how["source"], timed) == ("false", "false", "set", [])
    q, _ = tuning.choose(resolve(TrainArcFaceParams(), {"channels_last": "false"}), CPU)
    assert (q.channels_last, q.tiny_conv) == ("false", "true")  # the fastest of the combinations allowed


def test_without_a_measurement_nothing_is_assumed(timed: list) -> None:
    """torchrun ranks and CUDA never time each other: NCHW and the library's convolutions."""
    q, how = tuning.choose(resolve(TrainArcFaceParams(), {}), CPU, measure=False)
    assert (q.channels_last, q.tiny_conv, timed) == ("false", "false", [])
    q, how = tuning.choose(resolve(TrainArcFaceParams(), {}), torch.device("cuda"))
    assert (q.channels_last, q.tiny_conv, timed) == ("false", "false", [])


def test_tiny_convolutions_are_those_on_maps_of_four_pixels_or_less() -> None:
    from models import get_model

    p = resolve(TrainArcFaceParams(), {})
    names = tuning.tiny_convs(get_model("resnet18", 32), p)
    assert names and all(n.startswith(("trunk.layer3", "trunk.layer4")) for n in names)
    assert "trunk.layer4.1.conv2" in names and "trunk.layer2.1.conv2" not in names
    big = resolve(TrainArcFaceParams(), {"img_size": 128, "stem": "imagenet"})  # the original: layer4 at 4x4
    names = tuning.tiny_convs(get_model("resnet18", 32, "imagenet"), big)
    assert names == {"trunk.layer4.0.conv2", "trunk.layer4.1.conv1", "trunk.layer4.1.conv2"}
