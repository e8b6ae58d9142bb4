"""Atomic writes and checkpoint loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from utils.core.io import CheckpointError, atomic_write, load_checkpoint, save_checkpoint, save_same, write_json


def test_atomic_write_keeps_old_file_on_crash(tmp_path: Path) -> None:
    f = tmp_path / "metrics.json"
    write_json(f, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(f) as h:
        h.write('{"a": 2, "trunc')
        raise RuntimeError("crash mid-write")
    assert f.read_text().strip().startswith('{\n  "a": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def good_state(**params) -> dict:
    return {"model": {}, "head": {}, "optimizer": {}, "scheduler": {}, "epoch": 1,
            "params": {"model_name": "m", "n_class": 10, "embedding_dim": 512, **params}}


def test_checkpoint_roundtrip_and_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "best.pt"
    save_checkpoint(p, good_state())
    assert load_checkpoint(p, {"model_name": "m", "n_class": 10})["epoch"] == 1
    with pytest.raises(CheckpointError, match="n_class=10 but this run has n_class=7"):
        load_checkpoint(p, {"n_class": 7})
    with pytest.raises(CheckpointError, match="embedding_dim"):
        load_checkpoint(p, {"embedding_dim": 128})


def test_checkpoint_missing_truncated_or_foreign(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    p = tmp_path / "t.pt"
    save_checkpoint(p, good_state())
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(p)
    torch.save({"weights": 1}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "f.pt")


@pytest.mark.parametrize("links", [True, False])
def test_the_same_checkpoint_under_two_names_parts_at_the_next_write(tmp_path: Path, links: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A best epoch's last.pt is its best.pt (one write); the next last.pt leaves best.pt as it was. Without hard
    links (some file systems) the file is copied."""
    if not links:
        def no_link(*_: object) -> None:
            raise OSError(95, "Operation not supported")
        monkeypatch.setattr("os.link", no_link)
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    save_checkpoint(last, good_state(epoch=0))
    save_checkpoint(best, good_state(epoch=1))
    save_same(best, last)
    assert last.read_bytes() == best.read_bytes()
    assert (last.stat().st_ino == best.stat().st_ino) == links
    save_checkpoint(last, good_state(epoch=2))
    assert load_checkpoint(best)["params"]["epoch"] == 1 and load_checkpoint(last)["params"]["epoch"] == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary name left
