"""A throwaway PostgreSQL server for tests and benchmarks: initdb into a directory, start it on
127.0.0.1 on a free port, hand out fresh databases, stop it and leave nothing running.

    with TemporaryPostgres(tmp_dir) as pg:
        url = pg.create_database("t1")     # postgresql+psycopg://postgres@127.0.0.1:PORT/t1

Needs the server binaries (initdb, pg_ctl, postgres: Debian's `postgresql` package) and, when
run as root, a `postgres` system user to run the server as (the server refuses root). Creating
databases needs psycopg 3 (`pip install 'tracker-agent[postgresql]'`).
"""

from __future__ import annotations

import glob
import os
import pwd
import socket
import subprocess
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresUnavailable", "TemporaryPostgres", "find_server_binaries"]

_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/local/bin", "/usr/bin")
_RUN_AS = "postgres"
_START_TIMEOUT_SECONDS = 30


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (or no user to run them as)."""


def find_server_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres (newest version first)."""
    for pattern in _SEARCH:
        for folder in sorted(glob.glob(pattern), reverse=True):
            tools = all(os.access(os.path.join(folder, b), os.X_OK) for b in ("initdb", "pg_ctl"))
            if tools and os.path.exists(os.path.join(folder, "postgres")):
                return Path(folder)
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's `postgresql` package"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryPostgres:
    """A PostgreSQL cluster in `directory` (created), listening on 127.0.0.1 only, trusting
    local connections (no password): for tests, never for data that matters."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.data = self.directory / "data"
        self.port = 0
        self.bin = find_server_binaries()
        self._user = None if os.geteuid() != 0 else self._system_user()

    @staticmethod
    def _system_user() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(_RUN_AS)
        except KeyError as exc:
            raise PostgresUnavailable(
                f"running as root and there is no {_RUN_AS!r} user to run the server as"
            ) from exc

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        user = self._user
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.directory,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            env={**os.environ, "LC_ALL": "C"},
        )
        if result.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed: {result.stderr.strip()[-2000:]}")

    def start(self) -> TemporaryPostgres:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(self.directory, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self.port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c max_connections=200 -c fsync=on -c synchronous_commit=on"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_TIMEOUT_SECONDS),
            "start",
        )
        return self

    def stop(self) -> None:
        if self.port:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.port = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
