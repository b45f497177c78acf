"""Normalise matrices.dyn_values.note in Python: trimmed and lower case."""

from cryptopi_batch import Backfill, Batch


async def normalise(batch: Batch) -> int:
    rows = await batch.fetch("SELECT id, note FROM matrices.dyn_values WHERE {range}")
    fixed = [
        (r["id"], r["note"].strip().lower())
        for r in rows
        if r["note"] and r["note"] != r["note"].strip().lower()
    ]
    await batch.execute(
        "UPDATE matrices.dyn_values d SET note = u.note"
        " FROM unnest($1::bigint[], $2::text[]) AS u(id, note) WHERE d.id = u.id",
        [i for i, _ in fixed],
        [n for _, n in fixed],
    )
    return len(fixed)


migration = Backfill(table="matrices.dyn_values", key="id", batch_size=5_000, process=normalise)
