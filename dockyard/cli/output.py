"""`-o json|table|tsv` output, as `az` offers it."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Sequence
from typing import Any

import typer


class OutputFormat(enum.StrEnum):
    json = "json"
    table = "table"
    tsv = "tsv"


output_option: Any = typer.Option(OutputFormat.json, "--output", "-o", help="Output format.")


def _cell(value: Any, *, nested: bool = False) -> str:
    """One table or TSV cell: lists as ``a, b``, objects as ``key=value`` pairs, never raw JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        separator = "; " if any(isinstance(v, dict) for v in value) else ("," if nested else ", ")
        text = separator.join(_cell(v, nested=True) for v in value)
        return f"[{text}]" if nested and separator == "; " else text
    if isinstance(value, dict):
        text = " ".join(f"{k}={_cell(v, nested=True)}" for k, v in value.items() if v not in (None, [], {}))
        return f"({text})" if nested and len(value) > 1 else text
    return str(value)


def emit(data: Any, output: OutputFormat, columns: Sequence[str] | None = None) -> None:
    """Print ``data`` (a dict, a list of dicts, or a list of scalars) in the chosen format."""
    if output is OutputFormat.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    if rows and not isinstance(rows[0], dict):
        rows = [{"result": row} for row in rows]
        columns = ["result"]
    columns = list(columns or (rows[0].keys() if rows else []))
    if output is OutputFormat.tsv:
        for row in rows:
            sys.stdout.write("\t".join(_cell(row.get(c)) for c in columns) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*[c[:1].upper() + c[1:] for c in columns], box=None, header_style="bold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    Console(width=200).print(table)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error to stderr; return the Exit to raise."""
    typer.echo(f"ERROR: {message}", err=True)
    return typer.Exit(code)
