"""A PostgreSQL server of the test's own, to stop and start at will (never the shared one).

initdb into a fresh temporary directory, a free port on 127.0.0.1, its socket in that
directory. PostgreSQL refuses to run as root: then every command runs as the `postgres` user
(runuser), which owns the directory. Without the binaries the test is skipped, except in CI,
where it fails (.ci/run installs PostgreSQL).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import IN_CI, free_port


def _bin_dir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


class OwnPostgres:
    """initdb, start, stop, start again; `url` reaches its `nebula` database."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            if IN_CI:
                pytest.fail("CI is set, so PostgreSQL's initdb must be installed")
            pytest.skip("no /usr/lib/postgresql/*/bin/initdb")
        self.bin = bin_dir
        self.as_user: list[str] = []
        self.dir = Path(tempfile.mkdtemp(prefix="nebula-own-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.dir, ignore_errors=True)
                if IN_CI:
                    pytest.fail("running as root without a postgres user to run initdb as")
                pytest.skip("root, and no postgres user to run initdb as")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/nebula"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.dir,
        )
        if done.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N", "-E", "UTF8"
        )
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "nebula")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-t",
            "30",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, new connections refused, as in a restart."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def log(self) -> str:
        try:
            return (self.dir / "log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        try:
            if self.running():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
