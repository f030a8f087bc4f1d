"""A throwaway PostgreSQL server for tests: `initdb` into a fresh directory, `pg_ctl start` on 127.0.0.1 at a free
port (its Unix socket inside that directory, so nothing else on the machine is touched), one database per test
module, stopped and deleted at the end of the session.

PostgreSQL refuses to run as root (CI's user), so as root every server command runs as an unprivileged account
(`postgres` where Debian's package created it, else `nobody`) through `runuser`. The suite skips, saying why, only
when no PostgreSQL binaries are found (`.ci/run` installs them from Debian's packages) or psycopg is missing.

Use: `from tests._postgres import postgres_server, postgres_url  # noqa: F401` in a test module, then take the
`postgres_url` fixture (a `postgresql+psycopg://` URL of an empty database of its own).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

START_TIMEOUT_S = 60


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<version>/bin."""
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found and (Path(found).resolve().parent / "initdb").exists():
            return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The account the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL")


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # holds data/, the socket and the log
    port: int
    user: str | None  # OS account the server runs as (None: this process's)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", self.user, "--"] if self.user else []) + list(args)

    def run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    def start(self, *, durable: bool = False) -> None:
        """Tests run without durability (fsync and synchronous commits off: faster, and a test's data dies with it);
        `durable=True` keeps PostgreSQL's defaults, as a benchmark of commit latency needs."""
        self.run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "nas", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--locale=C")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                "-c max_connections=200" + ("" if durable else
                                            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"))
        self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w",
                 "-t", str(START_TIMEOUT_S), "start")

    def stop(self) -> None:
        subprocess.run(self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                 "stop"), capture_output=True, timeout=START_TIMEOUT_S)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://nas@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=nas dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def skip_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here (None: they can)."""
    if find_bin_dir() is None:
        return ("no PostgreSQL server binaries (initdb/pg_ctl) on PATH or under /usr/lib/postgresql/*/bin; "
                "install them with `apt-get install -y --no-install-recommends postgresql` (.ci/run does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]' or '.[postgres]')"
    return None


@contextmanager
def running_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A server started in a fresh directory, stopped and deleted on exit (see `PostgresServer.start`)."""
    user = _run_as()
    # as root the server's account must reach its directory: /tmp, not a TMPDIR that only root may enter
    root = Path(tempfile.mkdtemp(prefix="nas-pg-", dir="/tmp" if user else None))
    if user:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(find_bin_dir(), root, _free_port(), user)
    try:
        server.start(durable=durable)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """An empty database of this test's own on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
