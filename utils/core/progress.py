"""Progress for long work: a tqdm bar on a terminal, one summary line per stage when the bar is off.

With `--use_tqdm=false` (logs, nohup, CI) nothing redraws: each stage that asks for it prints one line
with its count, time and rate when it ends, and fit prints one line per epoch with an ETA.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from utils.core.errors import check_ctrl_c


def say(msg: str, bar_on: bool) -> None:
    """Print a line without breaking a running tqdm bar."""
    if bar_on:
        tqdm.write(msg)
    else:
        print(msg, flush=True)


class Progress:
    """`update(n)` as work is done; `close()` ends the bar or prints `desc: N unit in T s (rate)`."""

    def __init__(self, total: int, desc: str, unit: str, bar: bool, line: bool = True) -> None:
        self.total, self.desc, self.unit, self.line, self.done = total, desc, unit, line and not bar, 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, disable=not bar,
                        file=sys.stderr)

    def update(self, n: int) -> None:
        check_ctrl_c()
        self.done += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self.line:
            dt = max(time.perf_counter() - self.t0, 1e-9)
            print(f"{self.desc}: {self.done} {self.unit} in {dt:.1f} s ({self.done / dt:.0f} {self.unit}/s)",
                  flush=True)
