"""A private PostgreSQL server for the tests: a fresh cluster in a temporary folder on a free loopback
port, stopped and deleted afterwards whatever the test did. Skips (one line) where PostgreSQL's
server binaries or the Python driver are missing; `.ci/run` installs both."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian keeps them off PATH, one folder per major version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running() -> Iterator[str]:
    """Start a server; yields its SQLAlchemy URL. Stops it and removes its folder on the way out."""
    # psycopg (3): the driver a bare postgresql:// selects, the one the `postgres` extra installs
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing (pip install -e '.[postgres]')")
    bindir = server_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `.ci/run` installs them")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not pytest's tmp_path: that sits under a root-only folder the postgres user cannot enter, and the
    # socket path must stay short.
    folder = Path(tempfile.mkdtemp(prefix="lightseg-pg-"))
    if as_user:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data = folder / "data"

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], cwd=folder, capture_output=True, text=True, timeout=120, check=check)

    started = False
    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        for _ in range(3):  # another process may take the free port before the server binds it
            port = _free_port()
            # durability off: the cluster is thrown away, and fsyncs would only slow the drivers
            options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off")
            start = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                       "-w", "-t", "60", "start", check=False)
            if start.returncode == 0:
                started = True
                break
        if not started:
            log = (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {start.stderr.strip()} {log[-1000:]}")
        # the URL as the docs write it, no +driver: what a user types
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started and pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False).returncode:
            _kill_postmaster(data)
        shutil.rmtree(folder, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """pg_ctl could not stop it: end the postmaster by the pid it recorded (its children follow it)."""
    try:
        os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
