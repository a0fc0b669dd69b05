"""Progress reporting from operations, without printing: the caller supplies the display."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of a long operation (the CLI shows it as a tqdm bar on stderr)."""

    def start(self, label: str, total: int | None, unit: str) -> None:
        """A new phase begins; ``total`` units of work, or None if unknown."""

    def advance(self, n: int) -> None:
        """``n`` more units are done."""

    def finish(self) -> None:
        """The current phase is over."""


class _NullProgress:
    """Discards progress (the default of every operation)."""

    def start(self, label: str, total: int | None, unit: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


NULL_PROGRESS: Progress = _NullProgress()
