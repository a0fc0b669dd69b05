"""The root ``tidepool`` command: global switches and the subcommands."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup, TyperOption

from tidepool_cli import __version__
from tidepool_cli.cli.commands import build, compact, count, delete, export, get, ingest, query, stats
from tidepool_cli.cli.output import Settings


def _set_global(ctx, param, value: bool) -> None:
    if value:
        setattr(Settings, param.name, True)


class GlobalOptionsGroup(TyperGroup):
    """The root group; every subcommand also accepts ``--quiet``/``-q`` and ``--debug``.

    So ``tidepool ingest idx --input x.npy -q`` works as ``tidepool -q ingest ...`` does,
    as shell users expect from one more flag typed at the end of a command line.
    """

    def get_command(self, ctx, cmd_name: str):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not any(p.name == "quiet" for p in cmd.params):
            cmd.params += [
                TyperOption(param_decls=["--quiet", "-q", "quiet"], is_flag=True, default=False, expose_value=False,
                            callback=_set_global, help="No progress bars or summaries on stderr (also before the command)."),
                TyperOption(param_decls=["--debug", "debug"], is_flag=True, default=False, expose_value=False,
                            callback=_set_global, help="Show tracebacks (also before the command; TIDEPOOL_DEBUG=1)."),
            ]
        return cmd


app = typer.Typer(
    name="tidepool",
    cls=GlobalOptionsGroup,
    help="A vector database in one directory: ingest, compact, index and query from the shell.",
    no_args_is_help=True,
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
    """Global options go before or after the subcommand: ``tidepool --quiet ingest ...``."""
    Settings.quiet = quiet
    Settings.debug = debug or Settings.debug


for module in (ingest, delete, compact, build, query, get, export, count, stats):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="tidepool")
