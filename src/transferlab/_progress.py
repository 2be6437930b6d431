"""Progress bars and status lines on stderr (stdout stays clean for --json)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
STATUS_EVERY = 5.0  # seconds between status lines when no progress bar can be drawn


class Reporter:
    """Shows progress bars and one-line messages, or nothing when ``enabled`` is False (library use, tests)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def info(self, message: str) -> None:
        """Print one status line."""
        if self.enabled:
            self.console.print(message)

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar; yields ``advance(n)``. Bars draw only on a terminal; without one (a log, a pipe, CI) a
        status line every few seconds says how far it got, so a long job never looks hung."""
        if not self.enabled or total <= 0:
            yield lambda n: None
            return
        if not self.console.is_terminal:
            yield self._status_lines(description, total)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n: bar.advance(tid, n)

    def _status_lines(self, description: str, total: int, every: float = STATUS_EVERY) -> Callable[[int], None]:
        """``advance(n)`` that prints ``description: done/total (pct)`` when ``every`` seconds have passed."""
        import time

        state = {"done": 0, "last": time.monotonic()}

        def advance(n: int) -> None:
            state["done"] += n
            now = time.monotonic()
            if now - state["last"] >= every and state["done"] < total:
                state["last"] = now
                done = state["done"]
                self.console.print(f"{description}: {done}/{total} ({done / total:.0%})")

        return advance

    def wrap(self, iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
        """Iterate with a progress bar."""
        with self.task(description, total) as advance:
            for item in iterable:
                yield item
                advance(1)
