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
    """_time replaced by a table (NHWC + tiny fastest unless told otherwise; fp32 passes 0.5 s faster than
    bf16); records each call. The CPU counts as one without native bf16 unless a test says otherwise."""
    from utils.core import device

    monkeypatch.setattr(device, "TUNING_CACHE", tmp_path / "tuning.json")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    device.measured_precision.cache_clear()
    calls: list = []
    table = {(False, False): 1.0, (True, False): 0.9, (False, True): 0.8, (True, True): 0.7}

    def fake(params, cl, tiny, batch, reps):
        calls.append((cl, tiny, batch, params.amp))
        torch.rand(3)  # measuring draws random numbers too
        return table[(cl, tiny)] + (0.5 if params.amp == "bf16" else 0.0)

    monkeypatch.setattr(tuning, "_time", fake)
    yield calls
    device.measured_precision.cache_clear()


def test_auto_takes_the_fastest_measured_and_caches_it(timed: list) -> None:
    p = resolve(TrainArcFaceParams(), {"batch_size": 256})
    state = torch.get_rng_state()
    q, how = tuning.choose(p, CPU)
    assert (q.channels_last, q.tiny_conv, how["source"]) == ("true", "true", "measured")
    assert torch.equal(torch.get_rng_state(), state)  # the run's random streams are untouched
    assert len(timed) == 4 and {b for _, _, b, _ in timed} == {128}  # measured at a batch of at most 128
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


def test_matmul_convolutions_are_the_shortcuts_and_those_with_tiny_outputs() -> None:
    from models import get_model

    p = resolve(TrainArcFaceParams(), {})  # 28 px, s2 stem: layer3 at 4x4, layer4 at 2x2
    names = tuning.tiny_convs(get_model("resnet18", 32), p)
    shortcuts = {f"trunk.layer{k}.0.downsample.0" for k in (2, 3, 4)}
    layer4 = {f"trunk.layer4.{b}.conv{c}" for b in (0, 1) for c in (1, 2)}
    assert names == shortcuts | layer4  # not layer3's 3x3 convolutions on 4x4 maps (measured 0.43-0.54x)
    big = resolve(TrainArcFaceParams(), {"img_size": 128, "stem": "imagenet"})  # the original: layer4 at 4x4
    assert tuning.tiny_convs(get_model("resnet18", 32, "imagenet"), big) == shortcuts


def test_amp_auto_means_the_precision_measured_faster_where_bf16_is_native(timed: list,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Native bf16 is not always the faster (AVX512-BF16 kernels without AMX: 218 against 279 img/s in fp32):
    amp=auto times both once per machine and means the faster; amp set by hand is never measured."""
    from utils.core import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.amp_dtype(CPU, "auto") == torch.bfloat16  # not measured yet: native bf16 is taken
    q, how = tuning.choose(resolve(TrainArcFaceParams(), {"amp": "bf16"}), CPU)
    assert {a for *_, a in timed} == {"bf16"} and device.amp_dtype(CPU, "auto") == torch.bfloat16
    q, how = tuning.choose(resolve(TrainArcFaceParams(), {"batch_size": 32}), CPU)
    assert q.amp == "auto" and {a for *_, a in timed} == {"bf16", "off"}  # both precisions, each once
    # decided on the default network (batch 128), then this run's own layout measured at its batch
    assert {b for _, _, b, a in timed if a == "off"} == {128, 32}
    assert device.amp_dtype(CPU, "auto") is None and device.amp_dtype(CPU, "bf16") == torch.bfloat16
    assert how["seconds_per_pass"]["True|True"] == 0.7  # the layout chosen at the precision that runs
    n = len(timed)
    tuning.choose(resolve(TrainArcFaceParams(), {}), CPU)
    assert len(timed) == n  # from the cache
