"""`POST /api/v1/packages/verify`: re-hash every stored payload file and report those whose
bytes no longer match the SHA-256 recorded at upload (or that are gone).

A stored file is named by its SHA-256 and never rewritten, so a mismatch is a disk's or a
person's doing, and hosts fetching it would fail their hash check (error 10) one by one: this
finds it first. Files are hashed one at a time in a worker thread, so the event loop keeps
serving hosts meanwhile. A POST (admin only): it reads every payload byte from the disk.
Imports nebula.store and nebula.web.keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from nebula.store.db import transaction
from nebula.store.packages import stored_files
from nebula.web.keys import BLOBS, READ_SESSIONS
from nebula.web.openapi.spec import doc, ref


@doc("Re-hash every stored payload file; list those that no longer match", ref("Verification"))
async def verify_packages(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        files: list[dict[str, Any]] = [
            {
                "package": package.id,
                "version": package.version,
                "arch": package.arch,
                "name": f.name,
                "sha256": f.sha256,
                "size": f.size,
            }
            for package, f in await stored_files(session)
        ]
    blobs = request.app[BLOBS]
    bad: list[dict[str, Any]] = []
    hashed: dict[str, str | None] = {}  # packages share files: each blob is read once
    for entry in files:
        sha = entry["sha256"]
        if sha not in hashed:
            hashed[sha] = await asyncio.to_thread(blobs.rehash, sha)
        found = hashed[sha]
        if found == sha:
            continue
        problem = "missing" if found is None else f"sha256 is now {found}"
        bad.append({**entry, "path": str(blobs.path(sha)), "problem": problem})
    return web.json_response({"checked": len(files), "blobs": len(hashed), "bad": bad})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/packages/verify", verify_packages)
