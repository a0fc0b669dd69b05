"""The root ``tidepool`` command: global switches and the subcommands."""

from __future__ import annotations

from typing import Annotated

import typer

from tidepool_cli import __version__
from tidepool_cli.cli.commands import build, compact, delete, ingest, query, stats
from tidepool_cli.cli.output import Settings

app = typer.Typer(
    name="tidepool",
    help="A vector database in one directory: ingest, compact, index and query from the shell.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tidepool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also TIDEPOOL_DEBUG=1).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Global options come before the subcommand: ``tidepool --quiet ingest ...``."""
    Settings.quiet = quiet
    Settings.debug = debug or Settings.debug


for module in (ingest, delete, compact, build, query, stats):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
