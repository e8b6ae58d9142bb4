"""The errors a user can meet, in one torch-free module so that every entry point (the ONNX path
included) maps them to exit statuses without importing the training code.

UserError (exit 2): bad input of some kind; the message names the problem and the fix, and nothing
already saved was changed. RunFailed (exit 1): the input was fine but training failed (NaN, chance
level). TrainingInterrupted (128 + signal): stopped by a signal with a resumable checkpoint saved.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """Bad input (values, files, images, checkpoints, a full disk): printed as one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """A bad parameter value, command or option."""


class DataError(UserError):
    """Missing or corrupt data; the message names the folder/file and the fix."""


class ImageError(UserError, ValueError):
    """An image that cannot be read; the message names the file and the fix."""


class CheckpointError(UserError):
    """A checkpoint, gallery or export that cannot be used; the message says why and what to do."""


class WriteError(UserError):
    """A results file or checkpoint could not be written (disk full, permissions...); nothing was replaced."""


class FolderBusy(UserError):
    """Another process holds this model's folders."""


class PretrainedUnavailable(UserError):
    """ImageNet weights were asked for but could not be fetched."""


class RunFailed(Exception):
    """Training ran but failed; exit status 1."""


class NonFiniteLoss(RunFailed):
    """The loss became NaN or infinite; the message names the epoch, the step and the likely fix."""


class ChanceLevel(RunFailed):
    """Training ended without learning (no NaN, but no better than guessing)."""


class TrainingInterrupted(Exception):
    """Stopped by SIGINT/SIGTERM with a resumable checkpoint at `path`; exit status 128 + signum."""

    def __init__(self, path: Path, signum: int, advice: str = "") -> None:
        super().__init__(advice or f"interrupted by {signal.Signals(signum).name}; resumable checkpoint saved to "
                                   f"{path}. Continue with --resume={path} (or --resume=auto).")
        self.path, self.signum = path, signum


_left = [False]  # leave_on_ctrl_c ran: the process is leaving, whether or not its exception got through


def leave_on_ctrl_c(signum: int = signal.SIGINT, frame: object = None) -> NoReturn:
    """SIGINT handler (main's after start-up; training's on the second press): raise KeyboardInterrupt once and
    ignore Ctrl+C from then on: the process is leaving, and a later press landing after main() has returned
    would kill the interpreter by SIGINT (status -2 instead of 130)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _left[0] = True
    raise KeyboardInterrupt


def arm_ctrl_c() -> None:
    """From now on Ctrl+C raises KeyboardInterrupt, once. A press landing in a __del__ (a progress bar being
    collected) raises where Python drops the exception: the hook keeps that quiet, and `check_ctrl_c` raises
    it again at the next place the work checks."""
    _left[0] = False
    signal.signal(signal.SIGINT, leave_on_ctrl_c)
    if getattr(sys.unraisablehook, "quiet_ctrl_c", False):
        return
    default = sys.unraisablehook

    def hook(u: sys.UnraisableHookArgs) -> None:
        if u.exc_type is None or not issubclass(u.exc_type, KeyboardInterrupt):
            default(u)

    hook.quiet_ctrl_c = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def check_ctrl_c() -> None:
    """Raise KeyboardInterrupt if Ctrl+C was pressed and its exception was lost (see arm_ctrl_c); called
    per progress step and before anything is published, so a lost press still stops the work."""
    if _left[0] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
