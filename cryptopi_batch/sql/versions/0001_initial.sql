-- Version 1 of the ops schema of cryptopi_batch. Applied under a transaction-scoped
-- advisory lock, in one transaction with the version bump (see schema.ensure_schema).

-- The seed's tracking table: created when missing, adopted as it is when present.
CREATE TABLE IF NOT EXISTS ops.migrations (
    id serial PRIMARY KEY,
    filename text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per batched migration run.
CREATE TABLE ops.backfills (
    name            text PRIMARY KEY,
    filename        text NOT NULL,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'paused', 'completed', 'failed', 'cancelled')),
    table_name      text NOT NULL,
    key_columns     text[] NOT NULL,
    key_types       text[] NOT NULL,
    end_key         text[],            -- the key space's upper end, fixed at start; NULL: empty
    frontier        text[],            -- upper bound of the last range handed out
    exhausted       boolean NOT NULL DEFAULT false,  -- every range up to end_key handed out
    batch_size      integer NOT NULL,  -- size of the next range to hand out
    rows_processed  bigint NOT NULL DEFAULT 0,  -- rows the work changed
    keys_done       bigint NOT NULL DEFAULT 0,  -- keys covered by committed batches
    keys_estimate   bigint,            -- planner's estimate of the keys in the run
    batches_done    integer NOT NULL DEFAULT 0,
    source_checksum text NOT NULL,
    direction       text NOT NULL DEFAULT 'up' CHECK (direction IN ('up', 'down')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    waiting_reason  text
);

-- One row per claimed key range. A range is handed out once (from the frontier); a
-- 'running' range whose lease lapsed, or a 'pending' remainder of a split, is claimed again.
CREATE TABLE ops.backfill_batches (
    id           bigserial PRIMARY KEY,
    backfill     text NOT NULL REFERENCES ops.backfills (name) ON DELETE CASCADE,
    lower_key    text[],               -- exclusive; NULL: from the start of the key space
    upper_key    text[] NOT NULL,      -- inclusive
    keys         bigint,               -- keys in the range when it was claimed
    status       text NOT NULL CHECK (status IN ('pending', 'running', 'done')),
    worker       uuid,                 -- owner token; the commit checks it (fencing)
    lease_until  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    rows         bigint,
    claimed_at   timestamptz,
    finished_at  timestamptz,
    duration_ms  double precision,     -- the work's own time, without waits
    last_error   text
);
CREATE INDEX backfill_batches_open ON ops.backfill_batches (backfill, id)
    WHERE status <> 'done';
CREATE INDEX backfill_batches_finished ON ops.backfill_batches (backfill, finished_at);

-- One row per runner process (a host may run several).
CREATE TABLE ops.backfill_workers (
    token        uuid PRIMARY KEY,
    backfill     text NOT NULL REFERENCES ops.backfills (name) ON DELETE CASCADE,
    host         text NOT NULL,
    pid          integer NOT NULL,
    workers      integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);
CREATE INDEX backfill_workers_live ON ops.backfill_workers (backfill) WHERE stopped_at IS NULL;
