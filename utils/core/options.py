"""The one option parser: `--name=value` for every command, script and benchmark, torch-free.

    own = {"seeds": Option("3", "how many seeds, or a list", int), "reuse": Option("false", "...", bool)}
    opts, rest = split(args, own)      # typed values of own options; the rest for the caller

One boolean syntax everywhere: true or false (any case). Field overrides (`--lr=1e-3`) go through the
same value parser (utils/core/config.parse_value, beside the fields it types); every error is a
ConfigError naming the option.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from utils.core.config import parse_value
from utils.core.errors import ConfigError, UserError


@dataclass(frozen=True)
class Option:
    default: str | None  # as typed on the command line; None = required
    help: str
    kind: type = str  # str, int, float or bool


def split(args: list[str], own: dict[str, Option]) -> tuple[dict[str, Any], list[str]]:
    """Typed values of the options in `own` (their defaults where not given) and the other arguments, in order.
    A required option that is missing is a ConfigError."""
    given: dict[str, str] = {}
    rest = []
    for a in args:
        name, sep, value = a.removeprefix("--").partition("=")
        if a.startswith("--") and sep and name in own:
            given[name] = value
        else:
            rest.append(a)
    out: dict[str, Any] = {}
    for name, opt in own.items():
        text = given.get(name, opt.default)
        out[name] = None if text is None else parse_value(name, text, opt.kind)
    return out, rest


def refuse_rest(where: str, rest: list[str], own: dict[str, Option]) -> None:
    if rest:
        raise ConfigError(f"{where}: cannot use '{rest[0]}'; its options are "
                          f"{', '.join(f'--{k}' for k in own)}.")


def describe(own: dict[str, Option]) -> str:
    """--help lines: --name=default, then the meaning."""
    return "\n".join(f"  {f'--{k}=' + ('...' if o.default is None else o.default):<28} {o.help}"
                     + (" (required)" if o.default is None else "") for k, o in own.items())


def comma_list(name: str, text: str, typ: type = str) -> list:
    """'0,1' -> [0, 1] (typ=int) for option --name, empty items dropped; a ConfigError naming the option."""
    try:
        return [typ(v) for v in text.split(",") if v]
    except ValueError:
        raise ConfigError(f"--{name}={text}: expected comma-separated {typ.__name__} values, e.g. 0,1.") from None


def file_tag(text: str, required: bool = False) -> str:
    """Check a script's --name=TAG, which becomes part of an output file name."""
    if (required or text) and not text.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--name={text}: {'required; ' if required else ''}use letters, digits, '-' and '_' "
                          "(it names the output file).")
    return text


def run_script(main: Callable[[list[str]], None], own: dict[str, Option] | None = None) -> None:
    """Run a `python -m` entry point with sys.argv; --help prints `own`; a user error (a bad option, a missing
    or damaged checkpoint, unreadable data) ends it with a one-line message, exit 2."""
    if own is not None and any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(describe(own))
        sys.exit(0)
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
