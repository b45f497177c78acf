"""Fill matrices.dyn_values.confidence with 1.0 where it is missing."""

from cryptopi_batch import Backfill

migration = Backfill(
    table="matrices.dyn_values",
    key="id",
    batch_size=10_000,
    sql="UPDATE matrices.dyn_values SET confidence = 1.0 WHERE {range} AND confidence IS NULL",
)
