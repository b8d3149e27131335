"""Printing for the CLI: aligned tables for people, `-o json|yaml` for scripts, `-o wide` for
more columns.

Every command that prints takes `output_options` (`-o/--output` and `--json`, the older
spelling of `-o json`). The choice is kept on the click context, so `emit_json` prints what was
asked for and `wide()` tells a table command to add its extra columns; a command only asks
`as_json` ("structured output wanted") and calls `emit_json`. The options every API command
shares (`api_options`) live here too. Imports only click and the standard library: every
command's --help loads this module.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import click

FORMATS = ("table", "wide", "json", "yaml")
_KEY = "nebula.output"


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """-o/--output and --json; the command receives `as_json` (json or yaml wanted)."""

    @functools.wraps(f)
    def run(*args: Any, output: str | None, as_json: bool, **kwargs: Any) -> Any:
        if as_json and output not in (None, "json"):
            raise click.UsageError(f"--json and -o {output}: say one")
        chosen = "json" if as_json else (output or "table")
        click.get_current_context().meta[_KEY] = chosen
        return f(*args, as_json=chosen in ("json", "yaml"), **kwargs)

    run = click.option("--json", "as_json", is_flag=True, help="Print JSON (same as -o json)")(run)
    run = click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        help="table (default), wide (more columns), json or yaml",
    )(run)
    return run


def chosen_format() -> str:
    ctx = click.get_current_context(silent=True)
    return str(ctx.meta.get(_KEY, "table")) if ctx is not None else "table"


def wide() -> bool:
    return chosen_format() == "wide"


def emit_json(data: Any) -> None:
    """The answer as the command was asked to print it: YAML for -o yaml, else JSON."""
    if chosen_format() == "yaml":
        click.echo(to_yaml(data), nl=False)
    else:
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


# -- YAML ----------------------------------------------------------------------------------------
# A small block-style writer for JSON data (no dependency for one output format). A string is
# written plain only when no YAML reader could take it for anything else; otherwise it is
# double-quoted as JSON writes it, which YAML reads the same.

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+-]*")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        # YAML 1.1 readers (PyYAML) take a float only with a dot: 1e+100 would be a string.
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return _quoted(text)


def _printable(ch: str) -> bool:
    """What YAML lets stand as itself in a double-quoted scalar (no line breaks: they fold)."""
    code = ord(ch)
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or (0xE000 <= code <= 0xFFFD and code != 0xFEFF)
        or code >= 0x10000
    ) and ch not in "\u2028\u2029"


def _quoted(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif _printable(ch):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _lines(value: Any, indent: str) -> list[str]:
    if isinstance(value, dict) and value:
        out = []
        for key in sorted(value, key=str):
            item = value[key]
            if isinstance(item, dict | list) and item:
                out.append(f"{indent}{_scalar(str(key))}:")
                out.extend(_lines(item, indent + "  "))
            else:
                out.append(f"{indent}{_scalar(str(key))}: {_flow(item)}")
        return out
    if isinstance(value, list) and value:
        out = []
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _lines(item, indent + "  ")
                out.append(f"{indent}- {nested[0].lstrip()}")
                out.extend(nested[1:])
            else:
                out.append(f"{indent}- {_flow(item)}")
        return out
    return [indent + _flow(value)]


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(data: Any) -> str:
    return "\n".join(_lines(data, "")) + "\n"


# --json and -o (output_options), under the older name commands use.
json_option = output_options
