"""Progress of a long stage, shown in a terminal and in a log file alike.

Usage::

    with Progress(len(rows), "prefopt eval: runs/sft") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))

When stderr is a terminal it draws a rich progress bar there. Otherwise (nohup, a log file, a pipe) it prints
plain lines to stderr, flushed: one when another 10% of `total` is done and 5 s have passed since the last line,
or when 30 s have passed, and a final one when the block ends, as ``prefopt eval: runs/sft 40/120 rows (33%), 52 s``
(a stage of a few seconds prints the final line only).
"""

from __future__ import annotations

import sys
import time


class Progress:
    """`total` units of work named `desc` (`unit` names them in the plain lines); `advance(n)` counts n done."""

    EVERY, GAP = 0.1, 5.0  # a plain line after another 10% of the total, at least 5 s after the last line,
    SECONDS = 30.0  # or after 30 s, whatever was done

    def __init__(self, total: int, desc: str, unit: str = "rows"):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self._bar = self._task = None
        self._start = self._last_time = time.monotonic()
        self._last_done = 0

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as Bar

            self._bar = Bar(console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(self.desc, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.monotonic()
        waited = now - self._last_time
        if (self.done - self._last_done >= self.EVERY * self.total and waited >= self.GAP) or waited >= self.SECONDS:
            self._line(now)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.done != self._last_done or not self.done:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc} {self.done}/{self.total} {self.unit}{share}, {now - self._start:.0f} s",
              file=sys.stderr, flush=True)
        self._last_done, self._last_time = self.done, now
