"""ConnectionSettings: a DSN's password never survives into a message (redact()), and the
statement cache the environment asks for."""

from __future__ import annotations

from typing import cast
from urllib.parse import quote

import asyncpg
import pytest

from cryptopi_batch.db import (
    DIRECT_STATEMENT_CACHE,
    STATEMENT_CACHE_ENV,
    ConnectionSettings,
    InvalidDsn,
    check_url,
    let_go,
    parse_dsn,
)
from cryptopi_batch.errors import UsageError

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _no_pgpassword(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)


def messages_about(dsn: str, *secrets: str) -> list[str]:
    """Messages a connect failure could produce: the DSN itself, the password alone."""
    return [
        f"cannot connect to PostgreSQL: {dsn}",
        f"invalid DSN {dsn!r}: bad port",
        *(f"password {s} rejected" for s in secrets),
        *(f"{s}" for s in secrets),
    ]


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_url_password_is_redacted(scheme):
    dsn = f"{scheme}://alice:{SECRET}@db.example:5432/app"
    settings = ConnectionSettings(dsn=dsn)
    for message in messages_about(dsn, SECRET):
        redacted = settings.redact(message)
        assert SECRET not in redacted
        assert "***" in redacted


def test_url_redaction_keeps_the_rest_of_the_message():
    dsn = f"postgresql://alice:{SECRET}@db.example:5432/app"
    redacted = ConnectionSettings(dsn=dsn).redact(f"cannot connect: {dsn} refused")
    assert redacted == "cannot connect: postgresql://alice:***@db.example:5432/app refused"


def test_userinfo_of_any_url_is_redacted_even_from_another_dsn():
    """A message may quote a DSN other than ours (a replica, a typo): its userinfo goes too."""
    other = "postgresql://bob:hunter2@replica/app"
    redacted = ConnectionSettings(dsn="postgresql://alice@db/app").redact(f"see {other}")
    assert "hunter2" not in redacted


def test_query_parameter_password_is_redacted():
    dsn = f"postgresql://alice@db.example/app?sslmode=require&password={SECRET}&x=1"
    settings = ConnectionSettings(dsn=dsn)
    for message in messages_about(dsn, SECRET):
        assert SECRET not in settings.redact(message)


def test_key_value_password_is_redacted():
    dsn = f"host=db.example user=alice password={SECRET} dbname=app"
    settings = ConnectionSettings(dsn=dsn)
    for message in messages_about(dsn, SECRET):
        assert SECRET not in settings.redact(message)


def test_pgpassword_from_the_environment_is_redacted(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", SECRET)
    for settings in (
        ConnectionSettings(dsn=None),
        ConnectionSettings(dsn="postgresql://alice@db/app"),
    ):
        assert settings.redact(f"auth failed with {SECRET} for alice") == (
            "auth failed with *** for alice"
        )


@pytest.mark.parametrize("where", ["userinfo", "query"])
@pytest.mark.parametrize("password", ["p@ss/w:rd", "pa ss%word", "üñí©ødé", "a&b=c?d#e"])
def test_url_encoded_password_is_redacted_in_both_forms(password, where):
    encoded = quote(password, safe="")
    assert encoded != password
    dsn = (
        f"postgresql://alice:{encoded}@db.example/app"
        if where == "userinfo"
        else f"postgresql://alice@db.example/app?password={encoded}"
    )
    settings = ConnectionSettings(dsn=dsn)
    for message in messages_about(dsn, password, encoded):
        redacted = settings.redact(message)
        assert password not in redacted
        assert encoded not in redacted


def test_secrets_lists_every_source(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "from-env")
    settings = ConnectionSettings(dsn="postgresql://a:from-url@h/d?password=from-query")
    assert {"from-env", "from-url", "from-query"} <= set(settings.secrets())


def test_no_password_means_nothing_is_redacted():
    settings = ConnectionSettings(dsn="postgresql://alice@db.example/app")
    assert settings.secrets() == []
    message = "cannot connect to PostgreSQL: connection refused"
    assert settings.redact(message) == message


def test_a_dsn_that_is_not_a_url_does_not_break_redaction():
    settings = ConnectionSettings(dsn="postgresql://alice:pw@[::1/app")  # bad IPv6 literal
    assert "pw@" not in settings.redact("failed: postgresql://alice:pw@[::1/app")


def test_an_encoded_password_is_replaced_whole_not_around_its_decoded_form():
    """The decoded `ab%` is a prefix of the encoded `ab%25`: the longer goes first, so
    nothing of either is left behind."""
    dsn = "postgresql://alice:ab%25@db/app"
    assert ConnectionSettings(dsn=dsn).redact("tried ab%25 and ab%") == "tried *** and ***"


def test_a_quoted_key_value_password_is_redacted_whole():
    dsn = "host=db user=alice password='two words \\' and more' dbname=app"
    settings = ConnectionSettings(dsn=dsn)
    assert settings.redact("rejected: two words ' and more") == "rejected: ***"


# --- libpq's key=value DSNs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "options"),
    [
        (
            "host=db.internal port=5433 dbname=app user=alice password=pw sslmode=require",
            {
                "host": "db.internal",
                "port": 5433,
                "database": "app",
                "user": "alice",
                "password": "pw",
                "ssl": "require",
            },
        ),
        (
            "  host = /var/run/postgresql   dbname='my app' ",
            {"host": "/var/run/postgresql", "database": "my app"},
        ),
        ("password='it\\'s \\\\ fine'", {"password": "it's \\ fine"}),
        ("hostaddr=10.0.0.5 connect_timeout=3 application_name=x", {"host": "10.0.0.5"}),
    ],
)
def test_a_key_value_dsn_becomes_connect_arguments(dsn: str, options: dict[str, object]):
    assert parse_dsn(dsn) == (None, options)


@pytest.mark.parametrize("dsn", ["postgresql://a:b@h:1/d", "postgres://h/d", None])
def test_a_url_or_no_dsn_passes_as_it_is(dsn: str | None):
    assert parse_dsn(dsn) == (dsn, {})


@pytest.mark.parametrize(
    ("dsn", "complaint"),
    [
        ("host=db options=-cfoo=bar", "unsupported key at character 9"),
        ("host=db port=five", "port is not a number"),
        ("host=db 'stray'", "not key=value pairs at character 9"),
        ("password=secret host", "not key=value pairs"),
    ],
)
def test_a_key_value_dsn_it_cannot_take_is_one_clear_error(dsn: str, complaint: str):
    with pytest.raises(ValueError, match="invalid DSN") as info:
        parse_dsn(dsn)
    assert complaint in str(info.value)
    assert "secret" not in str(info.value)


# --- the statement cache: decided per run unless the environment says ---------------------


@pytest.mark.parametrize(("value", "size"), [(None, None), ("0", 0), ("50", 50), (" 7 ", 7)])
def test_the_statement_cache_comes_from_the_environment_or_is_left_undecided(
    monkeypatch: pytest.MonkeyPatch, value: str | None, size: int | None
) -> None:
    if value is None:
        monkeypatch.delenv(STATEMENT_CACHE_ENV, raising=False)
    else:
        monkeypatch.setenv(STATEMENT_CACHE_ENV, value)
    settings = ConnectionSettings.from_env("postgresql://h/db")
    assert settings.statement_cache_size == size
    decided = (
        settings.behind_pooler(True).statement_cache_size,
        settings.behind_pooler(False).statement_cache_size,
    )
    # Undecided: none behind a pooler, a cache on a direct connection; given: as given.
    assert decided == ((0, DIRECT_STATEMENT_CACHE) if size is None else (size, size))


@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_a_statement_cache_that_is_not_a_count_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(STATEMENT_CACHE_ENV, value)
    with pytest.raises(UsageError, match=STATEMENT_CACHE_ENV):
        ConnectionSettings.from_env(None)


# --- no parse error quotes any part of a password ------------------------------------------

PASSWORD = "S3cr/et#Pw?x@Q"


def pieces(secret: str, size: int = 4) -> set[str]:
    """Every run of ``size`` characters of ``secret``."""
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


# A password with the characters that end a URL's parts, raw, and pieces of it; what each
# DSN must be refused for, in words that quote none of it.
BAD_DSNS = {
    "url-all": (f"postgresql://alice:{PASSWORD}@db:5432/app", "an '@' after the URL's host"),
    "url-slash": ("postgresql://alice:S3cr/etPw@db/app", "an '@' after the URL's host"),
    "url-hash": ("postgresql://alice:S3cr#etPw@db/app", "an '@' after the URL's host"),
    "url-question": ("postgresql://alice:S3cr?etPw@db/app", "an '@' after the URL's host"),
    "url-at": ("postgresql://alice:S3cr@etPw@db/app", "more than one '@'"),
    "url-digits-slash": ("postgresql://alice:1234/S3cretPw@db/app", "an '@' after"),
    "url-bracket": ("postgresql://alice:S3cr[etPw@db/app", "'[' or ']'"),
    "url-port": ("postgresql://alice:S3cretPw@db:S3cr/app", "port is not a number"),
    "url-port-range": ("postgresql://alice:S3cretPw@db:99999/app", "port is not a number"),
    "url-query": ("postgresql://db/app?password=S3cr&etPw", "query is not name=value"),
    "url-scheme": ("S3cr://alice:etPw@db/app", "starts with postgresql://"),
    "kv-space": ("host=db password=S3cr etPw", "not key=value pairs at character 23"),
    "kv-key": ("host=db password=S3cr etPw=1", "unsupported key at character 23"),
    "kv-quote": ("host=db password='S3cr/et#Pw", "not key=value pairs at character 18"),
    "kv-port": ("host=db port=S3cretPw password=S3cretPw", "port is not a number"),
}


@pytest.mark.parametrize("case", list(BAD_DSNS))
def test_a_dsn_that_cannot_be_used_is_refused_without_quoting_it(case: str) -> None:
    dsn, complaint = BAD_DSNS[case]
    with pytest.raises(InvalidDsn) as info:
        parse_dsn(dsn)
    message = str(info.value)
    assert complaint in message
    secret_pieces = pieces(PASSWORD) | pieces("S3cretPw") | pieces("etPw=1")
    assert not {p for p in secret_pieces if p in message}, message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://alice:S3cr%2Fet%23Pw%3Fx%40Q@db:5432/app",
        "postgresql://alice:p:w@db/app",
        "postgresql://alice@[::1]:5432,db2:5433/app?sslmode=require&user=bob%40corp",
        "postgresql:///app?host=/var/run/postgresql&port=5433",
        "postgres://db",
    ],
)
def test_a_url_asyncpg_reads_as_meant_passes_the_check(dsn: str) -> None:
    check_url(dsn)


def test_every_piece_a_parser_could_cut_from_a_password_is_masked(monkeypatch, tmp_path):
    """A misread DSN's parts are pieces of its password between the characters where a
    parser ends a part (here / # ? @): each of 4 characters or more is masked wherever it
    appears; text that merely shares characters with the password is left as it is."""
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    settings = ConnectionSettings(dsn=f"postgresql://alice:{PASSWORD}@db/app")
    for piece in ("S3cr", "et#Pw", "et#Pw?x@Q", "S3cr/et", "Pw?x@Q", PASSWORD):
        text = settings.redact(f"invalid literal for int() with base 10: {piece!r} at db")
        assert text == "invalid literal for int() with base 10: '***' at db", piece
    assert settings.redact("S3c and w?x@ and 3cr/e stay") == "S3c and w?x@ and 3cr/e stay"


def test_passwords_in_the_password_file_are_redacted(monkeypatch, tmp_path):
    passfile = tmp_path / "pgpass"
    passfile.write_text(
        "# host:port:db:user:password\n"
        "db:5432:*:alice:Pgp4ss\\:word\n"
        "not an entry: the driver refuses the file, never quoting it\n"
    )
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    text = ConnectionSettings(dsn="postgresql://alice@db/app").redact(
        "seen Pgp4ss:word; the driver refuses the file"
    )
    assert text == "seen ***; the driver refuses the file"
    # A passfile= in a key/value DSN is read instead.
    other = tmp_path / "other"
    other.write_text("*:*:*:*:KvFil3Secret\n")
    kv = ConnectionSettings(dsn=f"host=db passfile={other}")
    assert "KvFil3Secret" not in kv.redact("KvFil3Secret")


class _Conn:
    """Stands for a connection at a run's end: idle, or with a transaction open."""

    def __init__(self, *, in_transaction: bool) -> None:
        self.in_transaction = in_transaction
        self.how: str | None = None

    def is_closed(self) -> bool:
        return self.how is not None

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    def terminate(self) -> None:
        self.how = "terminated"

    async def close(self, timeout: float | None = None) -> None:
        self.how = "closed"


@pytest.mark.anyio
async def test_an_idle_connection_is_dropped_one_in_a_transaction_is_closed() -> None:
    """At a run's end an idle connection is dropped without waiting for the server's
    goodbye; one with a transaction open (a COMMIT that began the next one) is closed,
    so that the server ends it as a client's goodbye, not as a lost client."""
    idle, busy = _Conn(in_transaction=False), _Conn(in_transaction=True)
    await let_go(cast("asyncpg.Connection", idle))
    await let_go(cast("asyncpg.Connection", busy))
    await let_go(None)
    assert (idle.how, busy.how) == ("terminated", "closed")
