-- Version 3 of the ops schema of cryptopi_batch: what off-peak windows, the budgets every
-- runner of a migration shares, and the migrate flow keep.
ALTER TABLE ops.backfills
    -- The window the run was last started with (as given, normalised) and its zone; NULL:
    -- any time. A runner started with another window is told so and keeps its own.
    ADD COLUMN window_spec text,
    ADD COLUMN window_timezone text,
    -- While every runner waits outside the window: when it opens next.
    ADD COLUMN next_window_at timestamptz,
    -- Budgets for the migration as a whole, shared by its live runners by their workers.
    ADD COLUMN max_rows_per_second double precision,
    ADD COLUMN max_wal_bytes_per_second double precision;

-- Each runner's own reason to wait, if any (status shows the run's once).
ALTER TABLE ops.backfill_workers ADD COLUMN waiting_reason text;

-- Every migration file applied, with its kind and the checksum of its content then: a file
-- changed after it was applied is flagged. ops.migrations keeps the seed's columns.
CREATE TABLE ops.migration_files (
    filename   text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('sql', 'py')),
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
