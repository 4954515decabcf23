"""Progress reporting that suits both a terminal and a CI log.

On a terminal the line is redrawn in place; elsewhere one plain line is
written every ``interval`` seconds (and at the end), never a flood of ``\\r``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
        unit: str = "bytes",
    ) -> None:
        self.label = label
        self.unit = unit  # "bytes" (shown in MB), or a word for counted things ("images")
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.interactive else 5.0)
        self._start = self._last = time.monotonic()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        if self.unit != "bytes":
            total = f" / {self.total:,}" if self.total else ""
            pct = f"{100 * self.done / self.total:.0f}%, " if self.total else ""
            return f"{self.label}: {self.done:,}{total} {self.unit} ({pct}{self.done / elapsed:,.0f}/s)"
        rate = f"{self.done / elapsed / 1e6:.1f} MB/s"
        if self.total:
            pct = 100 * self.done / self.total
            return f"{self.label}: {_mb(self.done)} / {_mb(self.total)} ({pct:.0f}%, {rate})"
        return f"{self.label}: {_mb(self.done)} ({rate})"

    def _emit(self, final: bool = False) -> None:
        if self.interactive:
            self.stream.write("\r\033[K" + self._line() + ("\n" if final else ""))
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def close(self) -> None:
        self._emit(final=True)
