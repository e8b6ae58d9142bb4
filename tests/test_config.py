"""Overrides, presets and validation errors of the run parameters."""

from __future__ import annotations

import pytest

from trainArcFace import TrainArcFaceParams
from trainResnet import TrainResnetParams
from utils.core.config import ConfigError, parse_overrides, resolve


def test_overrides_are_typed() -> None:
    o = parse_overrides(["--lr=1e-3", "--batch_size=64", "--use_tqdm=false", "--model_name=x", "--margin=0.3"])
    assert o == {"lr": 1e-3, "batch_size": 64, "use_tqdm": False, "model_name": "x", "margin": 0.3}
    p = resolve(TrainArcFaceParams(), o)
    assert (p.lr, p.batch_size, p.use_tqdm, p.margin) == (1e-3, 64, False, 0.3)


@pytest.mark.parametrize("arg,match", [
    ("--lrr=1", "unknown field 'lrr'.*Valid fields: .*lr"),
    ("--batch_size=big", "expected int"),
    ("--use_tqdm=maybe", "expected true or false"),
    ("--use_tqdm=yes", "expected true or false"),  # one boolean syntax for every command: true|false
    ("--lr", "--field=value"),
    ("lr=1", "--field=value"),
])
def test_bad_overrides_are_refused(arg: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_overrides([arg])


@pytest.mark.parametrize("field,value,match", [
    ("margin", -0.1, "margin"), ("margin", 3.2, "margin"), ("scale", 0.0, "scale"), ("lr", 0.0, "lr"),
    ("batch_size", 0, "batch_size"), ("embedding_dim", 1, "embedding_dim"), ("preset", "gpu", "preset"),
    ("loss_fuc_type", "triplet", "loss_fuc_type"), ("dataset_name", "cifar", "dataset_name"),
    ("img_size", 12, "img_size=12 is too small"), ("device", "tpu", "device"),
])
def test_out_of_range_values_are_refused(field: str, value, match: str) -> None:
    overrides = {field: value}
    if field == "img_size":
        overrides["stem"] = "imagenet"
    with pytest.raises(ConfigError, match=match):
        resolve(TrainArcFaceParams(), overrides)


def test_preset_original_then_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_ROOT", raising=False)
    p = resolve(TrainResnetParams(), {"preset": "original", "total_epochs": 3})
    assert (p.img_size, p.lr, p.schedule, p.step_size, p.gamma, p.pretrained) == (128, 5e-5, "step", 10, 0.99, True)
    assert p.total_epochs == 3 and p.loss_fuc_type == "softmax" and p.data_root == "./data"


def test_data_root_env_and_explicit_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_ROOT", "/somewhere")
    assert resolve(TrainArcFaceParams()).data_root == "/somewhere"
    assert resolve(TrainArcFaceParams(), {"data_root": "/else"}).data_root == "/else"


def test_trainer_defaults_differ_only_in_identity_and_the_validated_recipe() -> None:
    a, s = TrainArcFaceParams(), TrainResnetParams()
    assert (a.loss_fuc_type, s.loss_fuc_type) == ("arcface", "softmax")
    assert a.model_name != s.model_name
    # each chosen on validation (bench.recipe): ArcFace's scale (softmax has none), softmax's lr and wd
    assert a.scale == 16.0 and (a.lr, a.weight_decay) == (1e-3, 5e-4) and (s.lr, s.weight_decay) == (2e-3, 5e-2)
    own = ("model_name", "loss_fuc_type", "scale", "margin", "lr", "weight_decay")
    assert {k: v for k, v in vars(a).items() if k not in own} == {k: v for k, v in vars(s).items() if k not in own}


def test_a_loss_brings_its_own_scale_and_margin_unless_they_are_set() -> None:
    """ArcFace's s = 16, m = 0.5 written in TrainArcFaceParams are ArcFace's alone: another loss chosen on that
    class trains with its SPEC defaults (losses/<name>.py), and a value the user gives is kept."""
    from losses import registry

    def hyper(params, **over):
        p = resolve(params, over)
        return {f: getattr(p, f) for f in registry.spec(p.loss_fuc_type)["params"]}

    assert hyper(TrainArcFaceParams()) == {"scale": 16.0, "margin": 0.5}
    for loss in ("normface", "sphereface", "cosface", "combined", "subcenter_arcface"):
        assert hyper(TrainArcFaceParams(), loss_fuc_type=loss) == registry.paper_defaults(loss)
        assert hyper(TrainResnetParams(), loss_fuc_type=loss) == registry.paper_defaults(loss)
    assert hyper(TrainArcFaceParams(), loss_fuc_type="sphereface")["margin"] == 4  # no guessing --margin=4
    assert hyper(TrainArcFaceParams(), loss_fuc_type="cosface", scale=20.0) == {"scale": 20.0, "margin": 0.35}
    assert hyper(TrainArcFaceParams(scale=20.0), loss_fuc_type="cosface") == {"scale": 20.0, "margin": 0.35}
    assert resolve(TrainResnetParams()).scale is None  # softmax takes none


def test_editing_a_default_in_the_params_class_changes_the_run() -> None:
    from dataclasses import dataclass

    @dataclass
    class Edited(TrainArcFaceParams):
        scale: float = 24.0
        lr: float = 3e-3

    p = resolve(Edited())
    assert (p.scale, p.margin, p.lr) == (24.0, 0.5, 3e-3)


def test_every_field_is_declared_once_with_its_help() -> None:
    from dataclasses import fields

    from utils.core.config import HELP, TrainParams, describe_fields

    assert all(HELP[f.name] for f in fields(TrainParams))
    text = describe_fields(TrainResnetParams())
    assert "--lr=0.002" in text and "AdamW learning rate" in text  # a subclass's redefined default keeps its help
    assert "used by" in text.split("--scale=None", 1)[1].splitlines()[0]


def test_every_command_parses_options_with_the_one_parser() -> None:
    """grid, seeds, figures, the inference commands and the bench scripts all split options with
    utils/core/options.split and read booleans as true|false, nothing else."""
    import re

    from conftest import ROOT

    for path in [*ROOT.glob("utils/*.py"), *ROOT.glob("bench/*.py"), ROOT / "main.py"]:
        text = path.read_text()
        assert "argparse" not in text and "script_args" not in text, path.name
        assert not re.search(r"in \(\"true\", \"false\"\)", text), path.name  # a private boolean parser


def test_a_quick_debug_run_never_writes_into_the_published_results() -> None:
    """`compare --quick_debug=true` once replaced the committed results/resnet18_*/ and DET.png with a tiny run."""
    p = resolve(TrainArcFaceParams(), {"quick_debug": True})
    assert (p.results_dir, p.ckpt_dir) == ("results/quick_debug", "ckp/quick_debug")
    study = resolve(TrainArcFaceParams(), {"quick_debug": True, "results_dir": "results/seeds",
                                           "ckpt_dir": "ckp/seeds"})
    assert (study.results_dir, study.ckpt_dir) == ("results/quick_debug/seeds", "ckp/quick_debug/seeds")
    assert resolve(study, {}).results_dir == "results/quick_debug/seeds"  # resolving twice moves nothing
    own = resolve(TrainArcFaceParams(), {"quick_debug": True, "results_dir": "/tmp/mine"})
    assert own.results_dir == "/tmp/mine"  # a folder of the user's own is theirs
    assert resolve(TrainArcFaceParams(), {}).results_dir == "results"


def test_hist_bins_must_be_a_power_of_two() -> None:
    from utils.core.config import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        resolve(TrainArcFaceParams(), {"hist_bins": 3000})


def test_a_checkpoints_params_are_read_back_validated() -> None:
    """One reader for every command and bench that opens a trained model: its own params, validated, the
    machine's data_root instead of the trainer's, unknown fields (another version's) dropped, no --resume."""
    import dataclasses

    from utils.core.config import trained_params

    saved = {**dataclasses.asdict(resolve(TrainResnetParams(), {"lr": 0.003})), "resume": "auto",
             "a_field_from_the_future": 1, "data_root": "/elsewhere"}
    p = trained_params(saved, data_root="/here", use_tqdm=False)
    assert p.loss_fuc_type == "softmax" and p.lr == 0.003 and p.data_root == "/here" and p.resume == ""
    with pytest.raises(ConfigError, match="lr"):
        trained_params({**saved, "lr": -1.0})  # a hand-edited checkpoint is refused like a command line
