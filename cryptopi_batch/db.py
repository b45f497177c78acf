"""Connections: where the DSN comes from, how a connection is opened, and how connect
errors become one clear line without the password."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg

from .errors import ConnectionFailed, PermissionDenied, UsageError
from .transactions import Connection

CONNECT_TIMEOUT = 10.0
APPLICATION_NAME = "cryptopi_batch"


class InvalidDsn(ValueError):
    """A DSN that cannot be used, said in words of our own: which part is wrong, never its
    text (any part of a DSN may be a piece of its password, once a misplaced character
    moved the boundaries)."""


_ENCODE = " (in a user name or password, percent-encode / ? # @ [ ]: %2F %3F %23 %40 %5B %5D)"

# libpq's key=value form: key = value pairs, a value bare or single-quoted ('' and \'
# inside quotes, \\ for a backslash).
_KEY_VALUE = re.compile(r"\s*(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s']*))")
# The keys asyncpg takes as connect() arguments, by their libpq names.
_LIBPQ_KEYS = {
    "host": "host",
    "hostaddr": "host",
    "port": "port",
    "dbname": "database",
    "user": "user",
    "password": "password",
    "passfile": "passfile",
    "sslmode": "ssl",
    "connect_timeout": None,
    "application_name": None,
}


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def check_url(dsn: str) -> None:  # noqa: PLR0912 -- a branch per URL part, each its own message
    """Raise :class:`InvalidDsn` for a URL that asyncpg would misread or refuse with a
    message quoting it. The URL is split here as asyncpg splits it (the authority ends at
    the first ``/``, ``?`` or ``#``; user and password end at its first ``@``): a password
    holding one of those characters unencoded leaves an ``@`` after the authority, or two
    in it, or a port that is not a number."""
    scheme, _, after = dsn.partition("://")
    if scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidDsn("invalid DSN: a URL starts with postgresql:// or postgres://")
    authority = re.match(r"[^/?#]*", after)
    assert authority is not None  # matches the empty string at least
    netloc, rest = authority.group(), after[authority.end() :]
    if "@" in rest:
        raise InvalidDsn(f"invalid DSN: an '@' after the URL's host{_ENCODE}")
    if netloc.count("@") > 1:
        raise InvalidDsn(f"invalid DSN: more than one '@' in the URL's user and host{_ENCODE}")
    userinfo, _, hosts = netloc.rpartition("@")
    if "[" in userinfo or "]" in userinfo:  # urllib takes them for an IPv6 address's
        raise InvalidDsn(f"invalid DSN: a '[' or ']' in the URL's user or password{_ENCODE}")
    for host in hosts.split(",") if hosts else []:
        if host.startswith("["):
            m = re.fullmatch(r"\[[^\]]+\](?::([^:]*))?", host)
            port = m.group(1) if m else None
            if m is None or "[" in host[1:]:
                raise InvalidDsn(f"invalid DSN: a host of the URL is not valid{_ENCODE}")
        else:
            name, _, port = host.partition(":")
            if (not name and len(hosts.split(",")) > 1) or "[" in host or "]" in host:
                raise InvalidDsn(f"invalid DSN: a host of the URL is not valid{_ENCODE}")
        if port and not _is_port(unquote(port)):
            raise InvalidDsn(
                f"invalid DSN: the URL's port is not a number from 1 to 65535{_ENCODE}"
            )
    query = rest.partition("?")[2].partition("#")[0] if "?" in rest.partition("#")[0] else ""
    for field in query.split("&") if query else []:
        key, equals, value = field.partition("=")
        if not equals or not key:
            raise InvalidDsn("invalid DSN: the URL's query is not name=value pairs")
        if key == "port" and not all(_is_port(p) for p in unquote(value).split(",")):
            raise InvalidDsn("invalid DSN: the URL's port= is not a number from 1 to 65535")


def parse_dsn(dsn: str | None) -> tuple[str | None, dict[str, Any]]:
    """``(url, connect() arguments)`` for a URL (as is, once :func:`check_url` passed it),
    libpq's ``key=value`` form (as arguments; asyncpg reads URLs only), or ``None``
    (libpq's ``PG*`` variables). Raises :class:`InvalidDsn` for what cannot be used.
    ``connect_timeout`` and ``application_name`` are ours to set and are ignored."""
    if dsn is None or not dsn.strip():
        return dsn, {}
    if "://" in dsn:
        check_url(dsn)
        return dsn, {}
    options: dict[str, Any] = {}
    pos = 0
    while pos < len(dsn) and dsn[pos:].strip():
        at = len(dsn) - len(dsn[pos:].lstrip()) + 1
        m = _KEY_VALUE.match(dsn, pos)
        if m is None:
            raise InvalidDsn(f"invalid DSN: not key=value pairs at character {at}")
        key, quoted, bare = m.groups()
        if key not in _LIBPQ_KEYS:
            raise InvalidDsn(
                f"invalid DSN: unsupported key at character {at} (keys taken: "
                + ", ".join(_LIBPQ_KEYS)
                + ")"
            )
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        name = _LIBPQ_KEYS[key]
        if name == "port" and not _is_port(value):
            raise InvalidDsn("invalid DSN: port is not a number from 1 to 65535")
        if name is not None:
            options[name] = int(value) if name == "port" else value
        pos = m.end()
    return None, options


STATEMENT_CACHE_ENV = "CRYPTOPI_BATCH_STATEMENT_CACHE"
DIRECT_STATEMENT_CACHE = 100


def is_pooled(server_pid: int, conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` reaches the server through a pooler: its server session's own pid
    (``pg_backend_pid()``) is not the one announced at connect, which a pooler announces
    itself."""
    return server_pid != conn.get_server_pid()


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach PostgreSQL. ``dsn`` ``None`` means libpq's ``PG*`` variables.

    ``statement_cache_size`` is asyncpg's prepared-statement cache; ``None`` lets the
    connection decide (:meth:`behind_pooler`): a cache on a direct connection, none behind
    a pooler in transaction mode, where a statement prepared in one transaction is gone
    (or another client's) in the next.
    """

    dsn: str | None = None
    statement_cache_size: int | None = None
    application_name: str = APPLICATION_NAME

    @classmethod
    def from_env(cls, dsn: str | None = None) -> ConnectionSettings:
        """``--dsn``, else $DATABASE_URL, else libpq's ``PG*`` variables (asyncpg reads them).

        $CRYPTOPI_BATCH_STATEMENT_CACHE sets the cache size instead of letting each run
        decide: ``0`` never prepares a statement for reuse; more than 0 also behind a pooler
        (PgBouncer 1.21 and later can keep prepared statements in transaction mode).
        """
        cache = os.environ.get(STATEMENT_CACHE_ENV, "").strip()
        if cache and not cache.isdigit():
            raise UsageError(
                f"${STATEMENT_CACHE_ENV} must be a number of statements (0 for none), not {cache!r}"
            )
        return cls(
            dsn=dsn or os.environ.get("DATABASE_URL") or None,
            statement_cache_size=int(cache) if cache else None,
        )

    def behind_pooler(self, pooled: bool) -> ConnectionSettings:
        """These settings with the cache decided, for a server reached through a pooler
        (``pooled``) or directly; a size given explicitly stays."""
        if self.statement_cache_size is not None:
            return self
        return replace(self, statement_cache_size=0 if pooled else DIRECT_STATEMENT_CACHE)

    def secrets(self) -> list[str]:
        """Every password this configuration could put in a message: the DSN's (also as a
        misread URL would split it), $PGPASSWORD's and the password file's, longest
        first."""
        found = [os.environ.get("PGPASSWORD", "")]
        passfile: str | None = os.environ.get("PGPASSFILE")
        if self.dsn:
            # A URL's user and password, wherever asyncpg or urllib would end them: from
            # the first ':' after '://' to the last '@'.
            userinfo = self.dsn.partition("://")[2].rpartition("@")[0]
            found.append(userinfo.partition(":")[2])
            found += re.findall(r"password=([^\s&]+)", self.dsn)
            found += re.findall(r"password\s*=\s*'((?:[^'\\]|\\.)*)", self.dsn)
            with contextlib.suppress(ValueError):  # key=value, quoted: the whole value
                options = parse_dsn(self.dsn)[1]
                found.append(options.get("password", ""))
                passfile = options.get("passfile", passfile)
        found += _passfile_passwords(passfile)
        # A URL carries a password percent-encoded and a message may show either form.
        return sorted({s for s in (*found, *map(unquote, found)) if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with any URL's password, and every password of this configuration and
        every piece of one a parser could cut out of it (see :func:`_pieces`), replaced
        by ``***``."""
        text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
        return _mask(text, self.secrets())

    async def connect(self, *, timeout: float = CONNECT_TIMEOUT) -> Connection:
        """Open a connection; raises the driver's errors untranslated (the retry layer
        classifies them)."""
        url, options = parse_dsn(self.dsn)
        # Undecided (see behind_pooler): no cache, which is safe either way. A connection
        # opened before the decision runs its statements as unnamed ones, each prepared
        # again where it is used (inside one transaction, behind a pooler).
        cache = 0 if self.statement_cache_size is None else self.statement_cache_size
        conn: Connection = await asyncpg.connect(
            url,
            timeout=timeout,
            statement_cache_size=cache,
            server_settings={"application_name": self.application_name},
            connection_class=Connection,
            **options,
        )
        return conn

    async def connect_or_fail(self) -> Connection:
        """Open the first connection of a command: any failure is :class:`ConnectionFailed`
        (exit 2) with one line that names no password. A DSN or setting that the driver
        refuses is never quoted, nor the driver's words about it (they quote the DSN)."""
        try:
            return await self.connect()
        except InvalidDsn as exc:
            raise ConnectionFailed(f"cannot connect to PostgreSQL: {exc}") from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(self.redact(f"cannot connect: {exc}")) from None
        except (ValueError, TypeError, OverflowError) as exc:
            # Before any network: asyncpg's verdict on the DSN or the PG* variables (its
            # ClientConfigurationError is a ValueError too), or the socket's on a port.
            raise ConnectionFailed(
                f"cannot connect to PostgreSQL: the DSN or the PG* variables were refused"
                f" ({type(exc).__name__}; its message is not shown: it may quote a password)"
            ) from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {CONNECT_TIMEOUT:g} s"
            raise ConnectionFailed(self.redact(f"cannot connect to PostgreSQL: {reason}")) from None


_ENDS_A_PART = re.compile(r"[/?#@:&\[\]\s=,;]")
"""Where a parser ends a part of a DSN (a URL's host, port, path, query field or fragment;
a key/value pair): a misread DSN's parts are the pieces of its password between these."""


def _pieces(secret: str) -> set[str]:
    """``secret`` and each piece of it of 4 or more characters that starts at its start or
    after an :data:`_ENDS_A_PART` character and ends at its end or before one."""
    starts = [0] + [m.end() for m in _ENDS_A_PART.finditer(secret)]
    ends = [m.start() for m in _ENDS_A_PART.finditer(secret)] + [len(secret)]
    found = {secret[a:b] for a in starts for b in ends if b - a >= 4}
    return found | {secret}


def _mask(text: str, secrets: list[str]) -> str:
    """``text`` with each stretch covered by a secret or a piece of one as ``***``."""
    covered = [False] * len(text)
    for piece in {p for secret in secrets for p in _pieces(secret)}:
        at = text.find(piece)
        while at != -1:
            covered[at : at + len(piece)] = [True] * len(piece)
            at = text.find(piece, at + 1)
    out: list[str] = []
    for i, char in enumerate(text):
        if not covered[i]:
            out.append(char)
        elif i == 0 or not covered[i - 1]:
            out.append("***")
    return "".join(out)


def _passfile_passwords(passfile: str | None) -> list[str]:
    """The passwords in libpq's password file (``passfile``, else ~/.pgpass): the fifth
    field of each line, ``\\:`` and ``\\\\`` unescaped. Unreadable: none."""
    path = Path(passfile) if passfile else Path.home() / ".pgpass"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except (OSError, RuntimeError):  # RuntimeError: no home directory
        return []
    found = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            fields = re.split(r"(?<!\\):", line, maxsplit=4)
            if len(fields) == 5:  # another line is no entry (the driver refuses the file)
                found.append(fields[4].replace("\\:", ":").replace("\\\\", "\\"))
    return found


async def close_quietly(conn: asyncpg.Connection | None, timeout: float = 2.0) -> None:
    """Close a connection whose state may be unknown; terminate it if closing stalls."""
    if conn is None or conn.is_closed():
        return
    try:
        await conn.close(timeout=timeout)
    except Exception:
        # The connection is unusable either way; never let cleanup mask the real error.
        conn.terminate()


async def let_go(conn: asyncpg.Connection | None) -> None:
    """Done with ``conn``: idle, it is dropped without waiting for the server to see it
    off (the backend ends quietly on the closed socket; ~1-2 ms less per connection at a
    run's end); in a transaction, it is closed as :func:`close_quietly` does."""
    if conn is None or conn.is_closed():
        return
    if conn.is_in_transaction():
        await close_quietly(conn)
    else:
        conn.terminate()


def pg_interval(seconds: float) -> str:
    """A duration as a GUC value in milliseconds (``0`` disables a timeout)."""
    return f"{max(0, round(seconds * 1000))}ms"
