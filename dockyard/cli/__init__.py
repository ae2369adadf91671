"""The `dockyard` command: serve the registry and manage a running one (az acr-style names)."""

from __future__ import annotations

import typer

from dockyard import __version__
from dockyard.cli import db as db_commands
from dockyard.cli import repository as repository_commands
from dockyard.cli import serve as serve_commands
from dockyard.cli.output import OutputFormat, emit, output_option

app = typer.Typer(
    name="dockyard",
    help="Dockyard: a self-hosted OCI container registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_commands.serve)
app.add_typer(repository_commands.app, name="repository")
app.add_typer(db_commands.app, name="db")


@app.command("version")
def version(output: OutputFormat = output_option) -> None:
    """Print Dockyard's version."""
    emit({"version": __version__}, output, columns=["version"])


def main() -> None:
    """Entry point of the `dockyard` console script."""
    app()
