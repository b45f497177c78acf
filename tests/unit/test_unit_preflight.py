"""The pre-flight's decisions that need no server: the shape of ops.migrations, the
message for a read-only server."""

from __future__ import annotations

import pytest

from cryptopi_batch.preflight import migrations_shape_problems, read_only_message

SEED = {"id": "integer", "filename": "text", "applied_at": "timestamp with time zone"}
SEED_FILLED = {"id", "applied_at"}  # serial, DEFAULT now()


@pytest.mark.parametrize(
    ("columns", "filled"),
    [
        (SEED, SEED_FILLED),
        ({**SEED, "id": "bigint"}, SEED_FILLED),  # bigserial, or an identity
        ({**SEED, "filename": "character varying(255)"}, SEED_FILLED),
        ({**SEED, "applied_at": "timestamp without time zone"}, SEED_FILLED),
        ({**SEED, "checksum": "text"}, {*SEED_FILLED, "checksum"}),  # nullable
        ({**SEED, "applied_by": "text"}, {*SEED_FILLED, "applied_by"}),  # with a default
        ({**SEED}, {"id", "applied_at", "filename"}),  # a nullable filename
    ],
    ids=["seed", "bigint_id", "varchar", "timestamp", "nullable_extra", "default_extra", "null"],
)
def test_shapes_a_run_can_record_into(columns: dict[str, str], filled: set[str]) -> None:
    assert migrations_shape_problems(columns, filled) == []


@pytest.mark.parametrize(
    ("columns", "filled", "problems"),
    [
        (
            {"id": "integer", "name": "text", "applied_at": "timestamp with time zone"},
            {"id", "applied_at", "name"},
            ["no column filename"],
        ),
        ({**SEED, "filename": "integer"}, SEED_FILLED, ["filename is integer, not text"]),
        ({**SEED, "id": "uuid"}, SEED_FILLED, ["id is uuid, not an integer"]),
        (
            {"filename": "text", "applied_at": "timestamp with time zone"},
            {"applied_at"},
            ["no column id"],
        ),
        (SEED, {"applied_at"}, ["id has no default"]),
        ({"id": "integer", "filename": "text"}, {"id"}, ["no column applied_at"]),
        ({**SEED, "applied_at": "date"}, SEED_FILLED, ["applied_at is date, not timestamptz"]),
        (
            {**SEED, "checksum": "text"},
            SEED_FILLED,
            ["checksum is NOT NULL without a default"],
        ),
        ({}, set(), ["no column id", "no column filename", "no column applied_at"]),
    ],
    ids=[
        "no_filename",
        "integer_filename",
        "uuid_id",
        "no_id",
        "id_without_default",
        "no_applied_at",
        "date_applied_at",
        "not_null_extra",
        "no_columns",
    ],
)
def test_shapes_a_run_cannot_record_into_are_named(
    columns: dict[str, str], filled: set[str], problems: list[str]
) -> None:
    assert migrations_shape_problems(columns, filled) == problems


def test_a_standby_is_named_as_a_replica() -> None:
    """pg_is_in_recovery(): the DSN points at a replica (no replica in the suite: the
    branch is the same check as above, with this message)."""
    message = read_only_message(standby=True)
    assert message.startswith("the server is read-only: ")
    assert "the DSN points at a replica" in message


def test_a_read_only_session_is_not_called_a_replica() -> None:
    message = read_only_message(standby=False)
    assert message.startswith("the session is read-only: default_transaction_read_only is on")
    assert "replica" not in message
