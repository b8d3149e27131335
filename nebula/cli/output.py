"""Printing for the CLI: aligned tables for people, `--json` for scripts; and the options every
API command shares. Imports only click (commands import it before anything heavy)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def api_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--token", help="Admin API token [NEBULA_TOKEN]")(f)
    f = click.option(
        "--server", "url", help="Nebula's URL [NEBULA_URL, default http://127.0.0.1:8000]"
    )(f)
    return f


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON")(f)
