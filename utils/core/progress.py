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


class SeriesClock:
    """Time left in a series of runs (the seeds study, the grid), one line per finished run.

    Runs trained by this call set the pace. Before the first of them ends, the pace is the recorded
    train + eval seconds of the runs reused from disk (a resumed study knows its runs' cost); with neither,
    the ETA is unknown rather than 0."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.trained, self.t0 = total, 0, 0, time.perf_counter()
        self.recorded: list[float] = []

    @property
    def reused(self) -> int:
        return len(self.recorded)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, metrics: dict[str, float], reused: bool) -> str:
        """Count one finished run (its metrics.json); '(X min so far, ETA Y min)'."""
        self.done += 1
        if reused:
            self.recorded.append(float(metrics.get("train_seconds", 0.0)) + float(metrics.get("eval_seconds", 0.0)))
        else:
            self.trained += 1
        spent, left = self.elapsed(), self.total - self.done
        if self.trained:
            eta = f"ETA {spent / self.trained * left / 60:.0f} min"
        elif self.recorded and left:
            eta = f"ETA {sum(self.recorded) / len(self.recorded) * left / 60:.0f} min at the reused runs' pace"
        else:
            eta = "ETA 0 min" if not left else "ETA unknown"
        return f"({spent / 60:.1f} min so far, {eta})"
