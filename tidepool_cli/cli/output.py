"""Where output goes: data on stdout, everything else (bars, summaries, errors) on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import typer

from tidepool_cli.errors import IndexRecoveryWarning, TidepoolError


class Settings:
    """Global CLI switches, set by the root callback."""

    quiet: bool = False
    debug: bool = bool(os.environ.get("TIDEPOOL_DEBUG"))


def console():
    """A Rich console on stdout that stops like every other output when stdout closes.

    Rich's own reaction to a closed pipe is ``SystemExit(1)``; this one raises
    BrokenPipeError, which :func:`handle_errors` turns into a quiet exit 141.
    """
    from rich.console import Console

    class _PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _PipeConsole()


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def info(message: str) -> None:
    """A human-readable line on stderr, unless --quiet."""
    if not Settings.quiet:
        sys.stderr.write(message + "\n")


def warn(message: str) -> None:
    """A warning line on stderr (shown even with --quiet)."""
    sys.stderr.write(f"Warning: {message}\n")


_show_warning = warnings.showwarning


def _show_recovery(message, category, filename, lineno, file=None, line=None) -> None:
    """Print the storage layer's recovery warnings as one ``Warning: ...`` line."""
    if issubclass(category, IndexRecoveryWarning):
        warn(str(message))
    else:
        _show_warning(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Translate errors into one ``Error: ...`` line and the documented exit code."""
    warnings.showwarning = _show_recovery
    try:
        yield
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
    except TidepoolError as exc:
        if Settings.debug:
            traceback.print_exc()
        sys.stderr.write(f"Error: {exc}\n")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted\n")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # stdout was closed early (`tidepool query ... | head`): stop quietly, like any
        # Unix tool killed by SIGPIPE, and keep Python from complaining at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug: say so, keep the traceback for --debug
        if Settings.debug:
            traceback.print_exc()
        sys.stderr.write(f"Error: internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it\n")
        raise typer.Exit(1) from None


class TqdmProgress:
    """:class:`~tidepool_cli.ops.progress.Progress` shown as tqdm bars on stderr.

    Silent when stderr is not a terminal or with --quiet.
    """

    def __init__(self) -> None:
        self.enabled = not Settings.quiet and sys.stderr.isatty()
        self.bar = None

    def start(self, label: str, total: int | None, unit: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=f" {unit}", unit_scale=True, file=sys.stderr, leave=False)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
