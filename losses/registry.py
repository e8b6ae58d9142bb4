"""The loss registry: every head's name, hyper-parameters, plot colour and toy settings, torch-free.

Each loss file (losses/<name>.py) starts with a literal `SPEC = {...}`; this module reads it with
`ast.literal_eval` (nothing in the file runs, and torch is not imported) and imports the file only
to build its head. Adding a loss = one file with a SPEC and a head class + one line in BUILT_IN.
Code (a notebook, a test) can also `register(spec, head_class)` at run time.

SPEC keys: name, head (class name), paper, formula, color (matplotlib), grid (part of the margin-loss
grid's default losses), toy (the toy figures' settings: TrainParams fields such as scale, margin, lr;
absent = not drawn) and params: one entry per TrainParams field the head takes, {"meaning", "unit",
"default" (the paper's), "low", "high", "low_open", "high_open", "integer"}, or {"shared": NAME, "default": ...}
for one of SHARED.
"""

from __future__ import annotations

import ast
import importlib
import math
from pathlib import Path
from typing import Any

BUILT_IN = (  # one line per loss: the file losses/<name>.py holds its SPEC and head
    "softmax",
    "normface",
    "sphereface",
    "cosface",
    "arcface",
    "combined",
    "subcenter_arcface",
)
HERE = Path(__file__).resolve().parent
# hyper-parameters several losses share: a SPEC names one ({"shared": "scale", "default": 64.0}) instead of
# repeating its meaning and range
SHARED = {"scale": {"meaning": "radius s of the hypersphere the logits live on", "unit": "logit units",
                    "low": 0.0, "high": 1024.0, "low_open": True}}
_specs: dict[str, dict[str, Any]] = {}
_heads: dict[str, type] = {}  # heads registered at run time


def _read_spec(name: str) -> dict[str, Any]:
    tree = ast.parse((HERE / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SPEC" for t in node.targets):
            return expand(ast.literal_eval(node.value))
    raise LookupError(f"losses/{name}.py has no SPEC = {{...}}")


def expand(spec: dict[str, Any]) -> dict[str, Any]:
    """A SPEC with its shared hyper-parameters written out."""
    params = {f: {**SHARED[p["shared"]], **{k: v for k, v in p.items() if k != "shared"}} if "shared" in p else p
              for f, p in spec["params"].items()}
    return {**spec, "params": params}


def specs() -> dict[str, dict[str, Any]]:
    """name -> SPEC of every registered loss, built-in ones first, in registry order."""
    if not _specs:
        for name in BUILT_IN:
            _specs[name] = _read_spec(name)
    return _specs


def register(spec: dict[str, Any], head: type) -> None:
    """Add a loss at run time (its head class given directly)."""
    specs()[spec["name"]] = expand(spec)
    _heads[spec["name"]] = head


def names(grid: bool = False) -> tuple[str, ...]:
    return tuple(n for n, s in specs().items() if not grid or s.get("grid"))


def spec(name: str) -> dict[str, Any]:
    return specs()[name]


def hyper_fields() -> tuple[str, ...]:
    """Every TrainParams field some loss takes (scale, margin, ...), in first-seen order."""
    return tuple(dict.fromkeys(f for s in specs().values() for f in s["params"]))


def unused_by(name: str) -> set[str]:
    """The hyper-parameter fields loss `name` does not take: a value there changes nothing in its run."""
    return set(hyper_fields()) - set(spec(name)["params"])


def users(field: str) -> list[str]:
    return [n for n, s in specs().items() if field in s["params"]]


def color(name: str) -> str | None:
    return specs().get(name, {}).get("color")


def paper_defaults(name: str) -> dict[str, Any]:
    return {f: p["default"] for f, p in spec(name)["params"].items()}


def describe(field: str, p: dict[str, Any]) -> str:
    lo, hi = ("(" if p.get("low_open") else "["), (")" if p.get("high_open") else "]")
    kind = "integer " if p.get("integer") else ""
    return f"{p['meaning']} ({p['unit']}; {kind}{lo}{p['low']:g}, {p['high']:g}{hi}, paper {p['default']:g})"


def problems(name: str, values: dict[str, Any]) -> list[str]:
    """Why `values` of `name`'s hyper-parameters are out of range (each message names the fix)."""
    out = []
    for f, p in spec(name)["params"].items():
        v = values[f]
        low_ok = v > p["low"] if p.get("low_open") else v >= p["low"]
        high_ok = v < p["high"] if p.get("high_open") else v <= p["high"]
        if not (low_ok and high_ok and math.isfinite(v)) or (p.get("integer") and not float(v).is_integer()):
            out.append(f"{f}={v} is out of range for {name}: {describe(f, p)}.")
    return out


def head_class(name: str) -> type:
    if name not in _heads:
        _heads[name] = getattr(importlib.import_module(f"losses.{name}"), spec(name)["head"])
    return _heads[name]
