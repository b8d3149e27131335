"""The admin API client the CLI uses: --server/--token, NEBULA_URL and NEBULA_TOKEN, or a
context (nebula.cli.contexts).

Errors from the server come back as ClickExceptions carrying the server's own message, and a
server URL that cannot be right (no scheme, or a path) is refused before anything is sent.
Uploads stream from disk: a 1 GiB payload never sits in this process's memory either.
aiohttp and yarl are imported where a request is made, not with this module: every API
command's --help loads it, and must stay fast.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from nebula.cli.contexts import resolve
from nebula.config import client_env

DEFAULT_URL = "http://127.0.0.1:8000"


def base_url(raw: str, source: str) -> str:
    """The server's base URL (scheme, host, port) from what --server or NEBULA_URL (`source`)
    said; a ClickException naming the fix when it is something else.

    Without this, "127.0.0.1:8000" reads as scheme "127.0.0.1" and aiohttp fails with a
    traceback, and a path (".../v1/update/", ".../api") is kept and every route under it 404s.
    """
    from yarl import URL

    example = "http://HOST:PORT"
    try:
        url = URL(raw.strip())
    except ValueError as exc:
        raise click.ClickException(
            f"{source} {raw!r} is not a URL ({exc}): use {example}"
        ) from None
    if url.scheme not in ("http", "https") or not url.host:
        guess = f"http://{raw.strip()}" if "://" not in raw else example
        raise click.ClickException(
            f"{source} {raw!r} needs http:// or https:// and a host: use e.g. {guess}"
        )
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise click.ClickException(
            f"{source} {raw!r} has a path: give the server's base URL, {url.origin()} "
            "(the CLI adds /api/v1/... itself)"
        )
    return str(url.origin())


class ApiClient:
    def __init__(self, url: str | None, token: str | None) -> None:
        env_url, env_token = client_env()
        chosen, chosen_token, source = resolve(url, token, env_url, env_token)
        self.url = base_url(chosen, source or "NEBULA_URL") if chosen else DEFAULT_URL
        self.token = chosen_token
        if not self.token:
            raise click.UsageError(
                "no token: set NEBULA_TOKEN or add a context (`nebula context add`; "
                "tokens come from `nebula token create`)"
            )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                kwargs.setdefault("headers", self._headers())
                async with session.request(method, self.url + path, **kwargs) as resp:
                    body = await resp.read()
                    if resp.status >= 400:
                        raise click.ClickException(_error_text(resp.status, body))
                    if resp.status == 204 or not body:
                        return None
                    return json.loads(body)
            except aiohttp.ClientConnectionError as exc:
                raise click.ClickException(f"cannot reach {self.url}: {exc}") from None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return asyncio.run(self._request(method, path, **kwargs))

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None}
        return self.call("GET", path, params=clean)

    def send(self, method: str, path: str, body: dict[str, Any]) -> Any:
        return self.call(method, path, json=body)

    def upload(self, params: dict[str, str], payload: Path, extensions: Sequence[Path]) -> Any:
        """POST the files as multipart, streamed from disk; a progress bar on stderr when it
        is a terminal, nothing on a pipe (scripts read stdout, logs keep stderr)."""
        import aiohttp

        files = [("payload", payload), *(("extension", e) for e in extensions)]
        bar = None
        if sys.stderr.isatty():
            total = sum(path.stat().st_size for _, path in files)
            bar = click.progressbar(length=total, label="uploading", file=sys.stderr, width=30)

        async def run() -> Any:
            loop = asyncio.get_running_loop()
            handles: list[io.BufferedReader] = []

            def sent(n: int) -> None:
                # aiohttp reads the files in a worker thread: the bar moves in the loop's.
                if bar is not None:
                    loop.call_soon_threadsafe(bar.update, n)

            try:
                form = aiohttp.FormData()
                for field, path in files:
                    counted = _CountedFile(path, sent)
                    handles.append(counted)
                    form.add_field(
                        field, counted, filename=path.name, content_type="application/octet-stream"
                    )
                return await self._request(
                    "POST", "/api/v1/packages/upload", params=params, data=form
                )
            finally:
                for handle in handles:
                    handle.close()

        try:
            return asyncio.run(run())
        finally:
            if bar is not None:
                bar.render_finish()

    def upload_file(self, path: str, params: dict[str, str], file: Path) -> Any:
        """POST the file itself as the body, read from disk in chunks as it is sent."""

        async def run() -> Any:
            with file.open("rb") as handle:
                return await self._request(
                    "POST",
                    path,
                    params=params,
                    data=handle,
                    headers={**self._headers(), "Content-Type": "application/octet-stream"},
                )

        return asyncio.run(run())


class _CountedFile(io.BufferedReader):
    """A file opened for reading that tells `sent` how many bytes each read returned. Still a
    BufferedReader: aiohttp sends it with its size (Content-Length), not chunked."""

    def __init__(self, path: Path, sent: Callable[[int], None]) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._sent = sent

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._sent(len(data))
        return data


def _error_text(status: int, body: bytes) -> str:
    """One line from an error answer: a problem document's `detail` (RFC 9457), the `error` of
    servers before problem documents, or the body's own text (a proxy's page, say)."""
    message = None
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            message = data.get("detail") or data.get("error")
    except (ValueError, UnicodeDecodeError):
        pass
    if not isinstance(message, str) or not message.strip():
        message = body.decode(errors="replace").strip() or "no details"
    return f"server said {status}: {' '.join(message.split())}"
