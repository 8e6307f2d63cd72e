"""A real PostgreSQL for tests: Debian's server binaries, a throw-away cluster on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return found


def _as_postgres(command: list[str]) -> list[str]:
    """The server refuses to run as root; run it as the package's postgres user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="nas-postgres-"))
    data = base / "data"
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(base, account.pw_uid, account.pw_gid)
    subprocess.run(
        _as_postgres([_binary("initdb"), "-D", str(data), "-U", "nas", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = base / "server.log"
    process = subprocess.Popen(
        _as_postgres(
            [
                _binary("postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(base),
                "-c",
                "fsync=off",
            ]
        ),
        stdout=log.open("wb") if os.geteuid() != 0 else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"postgresql+psycopg://nas@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 60
    while (
        subprocess.run([_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode != 0
    ):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{port}")
        time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
