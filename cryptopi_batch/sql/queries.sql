-- Every static query of the ops schema and of the catalog, by name. store.py loads them
-- with `query(name)`. Queries over the migration's own table depend on its key and are
-- built in store.py.

-- schema_version --
SELECT to_regclass('ops.batch_schema_version') IS NOT NULL AS present;

-- schema_version_read --
SELECT version FROM ops.batch_schema_version WHERE component = 'cryptopi_batch';

-- get_backfill --
SELECT * FROM ops.backfills WHERE name = $1;

-- lock_backfill --
SELECT * FROM ops.backfills WHERE name = $1 FOR UPDATE;

-- insert_backfill --
INSERT INTO ops.backfills (name, filename, table_name, key_columns, key_types, end_key,
                           frontier, exhausted, batch_size, keys_estimate, source_checksum,
                           direction)
VALUES ($1, $2, $3, $4, $5, $6::text[], NULL, $6::text[] IS NULL, $7, $8, $9, $10)
ON CONFLICT (name) DO NOTHING;

-- delete_backfill --
DELETE FROM ops.backfills WHERE name = $1;

-- reopen_backfill --
UPDATE ops.backfills
   SET status = 'running', last_error = NULL, waiting_reason = NULL, updated_at = now(),
       source_checksum = $2, batch_size = $3
 WHERE name = $1
RETURNING *;

-- catch_up_backfill --
UPDATE ops.backfills
   SET status = 'running', end_key = $2, exhausted = false, completed_at = NULL,
       frontier = COALESCE(frontier, end_key), updated_at = now(),
       keys_estimate = keys_done + $3
 WHERE name = $1;

-- register_worker --
-- Retried after a lost connection: the row may be there already.
INSERT INTO ops.backfill_workers (token, backfill, host, pid, workers, pid_namespace)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (token) DO NOTHING;

-- live_workers_on_host --
-- Only those whose pid means a process here: the same host and the same pid namespace
-- (both unknown counts as the same: a system without namespaces).
SELECT token, pid FROM ops.backfill_workers
 WHERE backfill = $1 AND host = $2 AND stopped_at IS NULL AND token <> $3
   AND pid_namespace IS NOT DISTINCT FROM $4;

-- retire_workers --
-- Workers known dead (their process is gone): release their ranges at once instead of
-- waiting for the leases to lapse.
WITH gone AS (
    UPDATE ops.backfill_workers SET stopped_at = now()
     WHERE token = ANY($1::uuid[]) AND stopped_at IS NULL
    RETURNING token)
UPDATE ops.backfill_batches SET lease_until = now() - interval '1 microsecond'
 WHERE worker IN (SELECT token FROM gone) AND status = 'running';

-- stop_worker --
-- Its workers have ended: a range it still holds (the batch that failed, or one claimed
-- as it stopped) is handed back at once instead of waiting for the lease to lapse. A
-- batch that did commit is 'done' and stays so; a late commit is fenced by `worker`.
WITH w AS (
    UPDATE ops.backfill_workers SET stopped_at = now() WHERE token = $1)
UPDATE ops.backfill_batches SET status = 'pending', worker = NULL, lease_until = NULL
 WHERE worker = $1 AND status = 'running';

-- heartbeat --
-- (Ids travel as text[]: asyncpg knows that array type without asking the server.)
-- Extends the leases of the ranges this runner's workers hold ($4: not every range under its
-- token: see release_orphans) and returns the control state the workers obey.
WITH w AS (
    UPDATE ops.backfill_workers SET heartbeat_at = now() WHERE token = $1),
l AS (
    UPDATE ops.backfill_batches SET lease_until = now() + make_interval(secs => $3)
     WHERE worker = $1 AND status = 'running' AND id = ANY($4::text[]::bigint[]))
SELECT status, rows_processed, keys_done, batches_done FROM ops.backfills WHERE name = $2;

-- set_waiting --
-- This runner's reason to wait ($2; NULL: it works) and, shown once for the run, the run's:
-- set while every live runner of it waits (a heartbeat within $5 seconds), with when its
-- window opens next ($4; NULL: not a window's wait), else cleared. After lock_backfill in
-- the same transaction: runners that start waiting at once each see the other's reason.
WITH w AS (
    UPDATE ops.backfill_workers SET waiting_reason = $2 WHERE token = $1),
working AS (
    SELECT EXISTS (SELECT FROM ops.backfill_workers o
                    WHERE o.backfill = $3 AND o.token <> $1 AND o.stopped_at IS NULL
                      AND o.waiting_reason IS NULL
                      AND o.heartbeat_at > now() - make_interval(secs => $5)) AS busy)
UPDATE ops.backfills
   SET waiting_reason = CASE WHEN NOT (SELECT busy FROM working) THEN $2::text END,
       next_window_at = CASE WHEN NOT (SELECT busy FROM working) AND $2::text IS NOT NULL
                             THEN $4::timestamptz END
 WHERE name = $3;

-- release_orphans --
-- After the runner lost its connection to the server (a restart, a failover): ranges under
-- its token that none of its workers holds go back to pending at once. They exist when a
-- batch's asynchronous commit, seen to succeed, was lost with the server while the claim
-- of its range, an earlier commit, survived. A worker that does hold a range released here
-- by a race fails the fencing check at its checkpoint and rolls back.
UPDATE ops.backfill_batches SET status = 'pending', worker = NULL, lease_until = NULL
 WHERE backfill = $2 AND worker = $1 AND status = 'running'
   AND NOT (id = ANY($3::text[]::bigint[]));

-- claim_open --
-- A pending remainder, or a range whose owner's lease lapsed. SKIP LOCKED: ranges, not
-- rows of the user's table, so nothing falls behind a cursor.
UPDATE ops.backfill_batches b
   SET status = 'running', worker = $2, claimed_at = now(),
       lease_until = now() + make_interval(secs => $3)
 WHERE b.id = (SELECT id FROM ops.backfill_batches
                WHERE backfill = $1
                  AND (status = 'pending' OR (status = 'running' AND lease_until < now()))
                ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
   -- Only for a running run (the frontier's claims check the same): paused, cancelled or
   -- failed, no new batch starts.
   AND EXISTS (SELECT FROM ops.backfills f WHERE f.name = $1 AND f.status = 'running')
RETURNING id, lower_key, upper_key, keys, attempts;

-- batch_state --
SELECT status, worker, rows, lower_key, upper_key FROM ops.backfill_batches WHERE id = $1;

-- split_batch --
WITH s AS (
    UPDATE ops.backfill_batches SET upper_key = $3, keys = $4
     WHERE id = $1 AND worker = $2 AND status = 'running' AND upper_key = $5::text[]
    RETURNING backfill, keys),
f AS (
    UPDATE ops.backfills SET batch_size = LEAST(batch_size, $4)
     WHERE name = (SELECT backfill FROM s))
INSERT INTO ops.backfill_batches (backfill, lower_key, upper_key, keys, status)
SELECT backfill, $3, $5, GREATEST($6 - $4, 0), 'pending' FROM s
RETURNING id;

-- batch_failed --
WITH b AS (
    UPDATE ops.backfill_batches SET attempts = $3, last_error = $4
     WHERE id = $1 AND worker = $2)
UPDATE ops.backfills SET last_error = $4, last_error_at = now(), updated_at = now()
 WHERE name = $5;


-- fail_backfill --
UPDATE ops.backfills SET status = 'failed', last_error = $2, last_error_at = now(),
       updated_at = now()
 WHERE name = $1 AND status = 'running';

-- open_batches --
SELECT count(*) AS open FROM ops.backfill_batches WHERE backfill = $1 AND status <> 'done';

-- finalize --
-- Completes the run and records it in ops.migrations in one transaction, once.
WITH done AS (
    UPDATE ops.backfills
       SET status = 'completed', completed_at = now(), updated_at = now(),
           waiting_reason = NULL, keys_estimate = keys_done
     WHERE name = $1 AND status = 'running' AND exhausted
       AND NOT EXISTS (SELECT 1 FROM ops.backfill_batches
                        WHERE backfill = $1 AND status <> 'done')
    RETURNING name)
-- ($2::text: the seed's filename may be a varchar, see preflight.MIGRATIONS_SHAPE.)
INSERT INTO ops.migrations (filename)
SELECT $2::text FROM done
 WHERE NOT EXISTS (SELECT 1 FROM ops.migrations WHERE filename = $2::text)
RETURNING id;

-- record_window --
-- The window (normalised) and zone a run was last started with; NULL: any time.
UPDATE ops.backfills SET window_spec = $2, window_timezone = $3 WHERE name = $1;

-- record_budgets --
-- The budgets a runner was started with ($2 rows/s, $3 WAL bytes/s; NULL: the stored one
-- stays): the run keeps them for every runner and every resume.
UPDATE ops.backfills
   SET max_rows_per_second = COALESCE($2, max_rows_per_second),
       max_wal_bytes_per_second = COALESCE($3, max_wal_bytes_per_second)
 WHERE name = $1;

-- set_status --
UPDATE ops.backfills SET status = $2, updated_at = now()
 WHERE name = $1 AND status = ANY($3::text[])
RETURNING status;

-- live_runners --
SELECT count(*) FROM ops.backfill_workers
 WHERE backfill = $1 AND stopped_at IS NULL
   AND heartbeat_at > now() - make_interval(secs => $2);

-- status_rows --
SELECT f.*,
       (SELECT count(*) FROM ops.backfill_workers w
         WHERE w.backfill = f.name AND w.stopped_at IS NULL
           AND w.heartbeat_at > now() - make_interval(secs => $2)) AS live_workers,
       r.keys / r.seconds AS recent_keys_rate,
       r.rows / r.seconds AS recent_rows_rate,
       extract(epoch FROM f.updated_at - f.started_at) AS elapsed
  FROM ops.backfills f
  -- keys and rows per second over the last minute of work (of the last run, if stopped):
  -- from the first of those batches' commit to the last's, the batches after the first
  -- (first claim to commit would leave out the pause after the last batch: a paced run's
  -- rate would come out too high); one batch alone, from its claim
  LEFT JOIN LATERAL (
       SELECT CASE WHEN w.n > 1 THEN w.keys - w.first_keys ELSE w.keys END AS keys,
              CASE WHEN w.n > 1 THEN w.rows - w.first_rows ELSE w.rows END AS rows,
              GREATEST(extract(epoch FROM w.last_at - CASE WHEN w.n > 1 THEN w.first_at
                                                           ELSE w.claimed_at END), 0.001)
                  AS seconds
         FROM (SELECT count(*) AS n, sum(b.keys)::float8 AS keys, sum(b.rows)::float8 AS rows,
                      (array_agg(b.keys ORDER BY b.finished_at))[1]::float8 AS first_keys,
                      (array_agg(b.rows ORDER BY b.finished_at))[1]::float8 AS first_rows,
                      min(b.finished_at) AS first_at, max(b.finished_at) AS last_at,
                      min(b.claimed_at) AS claimed_at
                 FROM ops.backfill_batches b
                WHERE b.backfill = f.name AND b.status = 'done'
                  AND b.finished_at > (SELECT max(l.finished_at) FROM ops.backfill_batches l
                                        WHERE l.backfill = f.name) - interval '60 seconds') w
        WHERE w.n > 0) r ON true
 WHERE $1::text IS NULL OR f.name = $1
 ORDER BY f.name;

-- status_runners --
-- Every run's (or $1's) live runners: not stopped, a heartbeat within $2 seconds. The
-- waiting reason through to_jsonb: a version 1 or 2 ops schema has no such column, and
-- status reads those too.
SELECT w.backfill, w.host, w.pid, w.workers, to_jsonb(w) ->> 'waiting_reason' AS waiting_reason
  FROM ops.backfill_workers w
 WHERE ($1::text IS NULL OR w.backfill = $1) AND w.stopped_at IS NULL
   AND w.heartbeat_at > now() - make_interval(secs => $2)
 ORDER BY w.backfill, w.started_at, w.host, w.pid;

-- is_applied --
SELECT EXISTS (SELECT FROM ops.migrations WHERE filename = $1);

-- applied_filenames --
SELECT DISTINCT filename FROM ops.migrations;

-- claim_settings --
-- A claim's own transaction: its settings, and the server session and transaction it runs
-- in (the session to end if its connection goes silent).
SELECT pg_backend_pid() AS pid, now() AS xact_start,
       set_config('synchronous_commit', 'off', true),
       set_config('lock_timeout', $1, true),
       set_config('statement_timeout', $2, true);

-- batch_settings --
-- A batch transaction's settings on a connection whose server session may change from one
-- transaction to the next (a pooler): sent as a statement of their own, which also names
-- the session and the transaction in pg_stat_activity (see sessions.py).
SELECT pg_backend_pid() AS pid, now() AS xact_start,
       set_config('lock_timeout', $1, true),
       set_config('statement_timeout', $2, true),
       set_config('idle_in_transaction_session_timeout', $3, true),
       set_config('synchronous_commit', $4, true);

-- session_identity --
-- A connection straight to the server keeps its session: named once by pid and start.
SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid();

-- end_sessions --
-- Sessions to end, each named by its pid and either its start (the whole session) or its
-- transaction's start (only while still in that transaction).
SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
  JOIN unnest($1::int[], $2::timestamptz[], $3::bool[]) AS b(pid, at, whole)
    ON a.pid = b.pid
   AND CASE WHEN b.whole THEN a.backend_start ELSE a.xact_start END = b.at;

-- inspect_target --
-- The migration's table ($1 its schema, NULL: the search path's; $2 its name): its key
-- columns $3 (in the key's order; a NULL type: no such column), whether a unique index
-- covers exactly the key (its columns, in order, with no predicate and no expressions:
-- only then is "key > cursor" a total order over the rows), and the privileges of $4 it
-- lacks: one round trip. (Only text[] among the arrays: asyncpg knows it without asking
-- the server; a bool[] or an int8[] costs each new connection a type introspection
-- query, ~5 ms on a cold one.)
SELECT c.oid::regclass::text AS table_name, c.reltuples::bigint AS estimate,
       k.types, k.nullable,
       EXISTS (
           SELECT FROM pg_index i
            WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
              AND i.indnkeyatts = cardinality($3::text[])
              AND (SELECT array_agg(a.attname::text ORDER BY x.n)
                     FROM unnest(i.indkey) WITH ORDINALITY AS x(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = x.attnum
                    WHERE x.n <= i.indnkeyatts) = $3::text[]) AS unique_index,
       ARRAY(SELECT p FROM unnest($4::text[]) WITH ORDINALITY AS q(p, n)
              WHERE NOT has_table_privilege(c.oid, p) ORDER BY q.n) AS missing_privileges
  FROM pg_class c
  JOIN pg_namespace ns ON ns.oid = c.relnamespace
 CROSS JOIN LATERAL (
       SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY w.n) AS types,
              COALESCE(array_agg(w.name ORDER BY w.n) FILTER (WHERE NOT a.attnotnull),
                       '{}') AS nullable
         FROM unnest($3::text[]) WITH ORDINALITY AS w(name, n)
         LEFT JOIN pg_attribute a
           ON a.attrelid = c.oid AND a.attname = w.name AND a.attnum > 0
          AND NOT a.attisdropped) k
 WHERE c.relname = $2 AND ns.nspname = COALESCE($1, current_schema())
   AND c.relkind IN ('r', 'p');

-- relkind --
-- What a name that is not a table is instead (for the message).
SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1);

-- count_rows --
-- A table never analysed, counted once at a run's first start. The table: its quoted
-- name from the catalog, put in by str.format (target.estimate_rows).
SELECT count(*) FROM {table};

-- read_only --
-- The pre-flight's transaction: whatever it checks, the server holds it to writing nothing.
SET TRANSACTION READ ONLY;

-- preflight_session --
-- The server session a run's checks see, and the seed's ops.migrations. pid: the server
-- process's own (a pooler announces its own at connect). standby, read_only: whether the
-- server or the session's default refuses writes (the checks' own transaction is read
-- only, whatever the default). The columns of ops.migrations,
-- when it exists: their names and types, and those that an INSERT of the file name alone
-- fills (nullable, or with a default, an identity or a generation expression).
WITH m AS (
    SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type,
           NOT a.attnotnull OR a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
               AS filled,
           a.attnum
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass('ops.migrations') AND a.attnum > 0
       AND NOT a.attisdropped)
SELECT pg_backend_pid() AS pid,
       pg_is_in_recovery() AS standby,
       current_setting('default_transaction_read_only')::boolean AS read_only,
       to_regclass('ops.migrations') IS NOT NULL AS migrations,
       ARRAY(SELECT name FROM m ORDER BY attnum) AS migrations_columns,
       ARRAY(SELECT type FROM m ORDER BY attnum) AS migrations_types,
       ARRAY(SELECT name FROM m WHERE filled ORDER BY attnum) AS migrations_filled;

-- explain --
-- The pre-flight's privilege check of a migration's statement (its SQL with the range
-- expanded, put in by str.format): EXPLAIN starts the executor, which checks the
-- privileges the statement needs, column by column; nothing runs.
EXPLAIN {statement}

-- migrations_table --
SELECT to_regclass('ops.migrations') IS NOT NULL;

-- health_wal --
-- The primary's WAL position in bytes (the WAL rate, and replica lag's estimate), and
-- the server's max_connections (the default limit of active connections). The insert
-- position: WAL committed asynchronously (a batch's default) waits up to wal_writer_delay
-- in memory before the write position passes it, and a rate from the write position
-- under-counts a burst (a WAL budget then lets the next one run over).
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8 AS position,
       current_setting('max_connections')::int AS max_connections;

-- health_replicas --
-- Replica lag seen on the primary, one row per standby streaming from it: replay lag in
-- time (NULL when idle or not yet measured) and in bytes, the replay position, and how
-- old the standby's last report of it is. A role without pg_read_all_stats sees the rows
-- with these columns NULL.
SELECT application_name AS name,
       extract(epoch FROM replay_lag)::float8 AS seconds,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS bytes,
       pg_wal_lsn_diff(replay_lsn, '0/0')::float8 AS replay_position,
       GREATEST(extract(epoch FROM now() - reply_time), 0)::float8 AS reply_age
  FROM pg_stat_replication;

-- health_replica_side --
-- Replica lag seen on a standby: 0 once it has replayed all it received, else the age of
-- the last transaction it replayed; its replay position; whether it is a standby at all.
SELECT pg_is_in_recovery() AS standby,
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
            THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
        END::float8 AS seconds,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::float8 AS replay_position;

-- health_xmin_holders --
-- What holds back the xmin horizon, other than cryptopi_batch's own sessions ($1 its
-- application_name): transactions with an xid or a snapshot (client backends; a walsender's is a
-- standby's hot_standby_feedback), prepared transactions, replication slots. seconds:
-- the transaction's age, NULL where the server does not know it (a walsender, a slot:
-- the sampler counts from when it first saw that xmin).
SELECT 'pid ' || pid AS who, COALESCE(backend_xmin, backend_xid)::text AS xmin,
       extract(epoch FROM now() - xact_start)::float8 AS seconds
  FROM pg_stat_activity
 WHERE (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) AND pid <> pg_backend_pid()
   AND backend_type IN ('client backend', 'walsender')
   AND application_name IS DISTINCT FROM $1
UNION ALL
SELECT 'prepared transaction ' || quote_literal(gid), transaction::text,
       extract(epoch FROM now() - prepared)::float8
  FROM pg_prepared_xacts
UNION ALL
SELECT 'replication slot ' || slot_name, COALESCE(xmin, catalog_xmin)::text, NULL
  FROM pg_replication_slots
 WHERE COALESCE(xmin, catalog_xmin) IS NOT NULL;

-- health_blocked --
-- The longest-waiting session blocked by one of cryptopi_batch's sessions ($1 its
-- application_name), not one of its own: how long it has waited (since its lock wait
-- began, else since its statement did), its pid and the blocker's. Only lock waiters are
-- asked pg_blocking_pids().
WITH waiting AS MATERIALIZED (
    SELECT a.pid, COALESCE((SELECT min(l.waitstart) FROM pg_locks l
                             WHERE l.pid = a.pid AND NOT l.granted), a.query_start) AS since
      FROM pg_stat_activity a
     WHERE a.wait_event_type = 'Lock' AND a.application_name IS DISTINCT FROM $1)
SELECT extract(epoch FROM now() - w.since)::float8 AS seconds, w.pid,
       b.pid AS blocker
  FROM waiting w
 CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
  JOIN pg_stat_activity b ON b.pid = bp.pid AND b.application_name = $1
 ORDER BY 1 DESC
 LIMIT 1;

-- health_active --
-- Active client sessions other than cryptopi_batch's own ($1 its application_name).
SELECT count(*)::int FROM pg_stat_activity
 WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND application_name IS DISTINCT FROM $1;

-- health_wraparound --
-- An autovacuum that prevents wraparound, running on the table $1: its pid, or no row.
-- (Another role's query text reads '<insufficient privilege>' without pg_read_all_stats:
-- such a vacuum is not recognised.) The view lists every database's vacuums: a table of
-- another database may have the same oid.
SELECT v.pid FROM pg_stat_progress_vacuum v
  JOIN pg_stat_activity a ON a.pid = v.pid
 WHERE v.datname = current_database() AND v.relid = to_regclass($1)
   AND a.query LIKE '%(to prevent wraparound)%'
 LIMIT 1;

-- health_budget --
-- The run's budgets and counters, and the worker tasks of its live runners (a heartbeat
-- within $2 seconds), for each runner's share.
SELECT f.max_rows_per_second, f.max_wal_bytes_per_second, f.rows_processed,
       (SELECT COALESCE(sum(w.workers), 0)::int FROM ops.backfill_workers w
         WHERE w.backfill = f.name AND w.stopped_at IS NULL
           AND w.heartbeat_at > now() - make_interval(secs => $2)) AS live_workers
  FROM ops.backfills f
 WHERE f.name = $1;

-- demo_reset --
-- The demo starts over: its table and the ops schema, in the demo's own server only.
DROP SCHEMA IF EXISTS ops CASCADE; DROP TABLE IF EXISTS matrices.dyn_values;

-- demo_schema --
-- The seed's table, as the demo and the benchmarks build it.
CREATE SCHEMA IF NOT EXISTS matrices;
CREATE TABLE matrices.dyn_values (
    id bigint PRIMARY KEY,
    matrix_id integer NOT NULL,
    value double precision NOT NULL,
    confidence numeric,
    note text
);

-- demo_rows --
-- $1 rows with confidence NULL (what the example migration fills).
INSERT INTO matrices.dyn_values (id, matrix_id, value, note)
SELECT g, g % 1000, random(), CASE WHEN g % 7 = 0 THEN ' Mixed Case ' END
  FROM generate_series(1, $1::bigint) AS g;

-- demo_analyze --
ANALYZE matrices.dyn_values;

-- migrate_lock --
-- migrate's lock on one file ($1: a key from its name), until its transaction ends
-- (PgBouncer-safe): two migrate never apply a file at once; the second waits (without a
-- lock timeout), then finds it applied.
SELECT set_config('lock_timeout', '0', true), pg_advisory_xact_lock($1::bigint);

-- migrate_try_lock --
SELECT pg_try_advisory_xact_lock($1::bigint);

-- migrate_guard_lock --
-- The same lock for a file run outside a transaction, held by a second connection's open
-- transaction meanwhile; tried, never waited for (a waiting statement has a snapshot,
-- which the other migrate's CREATE INDEX CONCURRENTLY would wait for): taken, or the
-- transaction fails with lock_not_available. A simple query, with no snapshot left after
-- it (a prepared statement's would stay); the key, an integer of ours, is put in by
-- str.format.
DO $$BEGIN
    IF NOT pg_try_advisory_xact_lock({key}) THEN
        RAISE EXCEPTION USING ERRCODE = 'lock_not_available',
            MESSAGE = 'held by another migrate';
    END IF;
END$$;

-- set_lock_timeout --
-- A file's statements: under the run options' lock timeout, without a statement timeout;
-- for the transaction ($2 true) or the session (a file run outside a transaction).
SELECT set_config('lock_timeout', $1, $2::boolean),
       set_config('statement_timeout', '0', $2::boolean);

-- last_migration_id --
-- ops.migrations' last id as a file's transaction starts (record_sql_file's $4).
SELECT coalesce(max(id), 0)::bigint FROM ops.migrations;

-- record_sql_file --
-- A .sql file applied, in its own transaction: the rows it inserted into ops.migrations
-- itself (as the seed's example does) give way to the one record under its file name.
-- Its rows: inserted since the transaction began ($4, the last id then) by a transaction
-- still in progress, which can only be this one or its subtransactions (another's
-- uncommitted rows are not seen). xmin is widened to a full xid8 around the current one
-- (for rows this recent, within 2^31 of it); the CASE keeps older rows out of that.
WITH own AS (
    DELETE FROM ops.migrations m
     WHERE m.filename <> $1::text
       AND CASE WHEN m.id > $4::bigint THEN
               pg_xact_status((pg_current_xact_id()::text::bigint
                   + ((((m.xmin::text::bigint
                         - (pg_current_xact_id()::text::bigint & 4294967295))
                        + 2147483648) % 4294967296 + 4294967296) % 4294967296
                      - 2147483648))::text::xid8) = 'in progress'
           END),
rec AS (
    INSERT INTO ops.migrations (filename)
    SELECT $1::text WHERE NOT EXISTS (SELECT 1 FROM ops.migrations WHERE filename = $1::text))
INSERT INTO ops.migration_files (filename, kind, checksum)
VALUES ($1, $2, $3)
ON CONFLICT (filename) DO UPDATE SET kind = EXCLUDED.kind, checksum = EXCLUDED.checksum,
       applied_at = now();

-- record_file --
-- A file's kind and checksum, once it is recorded in ops.migrations (a backfill's run
-- records that at its completion); the first record stays.
INSERT INTO ops.migration_files (filename, kind, checksum)
VALUES ($1, $2, $3)
ON CONFLICT (filename) DO NOTHING;

-- forget_migration --
-- A migration rolled back: no longer applied.
DELETE FROM ops.migrations WHERE filename = $1;

-- forget_migration_file --
DELETE FROM ops.migration_files WHERE filename = $1;

-- invalid_indexes --
-- Indexes a failed CREATE INDEX CONCURRENTLY (or REINDEX) leaves invalid.
SELECT format('%I.%I', n.nspname, c.relname) AS name
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT i.indisvalid;

-- migration_files --
SELECT filename, kind, checksum, applied_at FROM ops.migration_files;

-- applied_at --
SELECT filename, max(applied_at) AS applied_at FROM ops.migrations GROUP BY filename;

-- plan_table --
-- What every batch over table $1 (its name as regclass prints it) fires or is held to:
-- its own triggers, the foreign keys from and to it, the publications that carry it, and
-- whether its UPDATEs and DELETEs lack a replica identity (no key, or a default one
-- without a primary key), which logical replication refuses.
WITH t AS (SELECT c.oid, c.relreplident FROM pg_class c WHERE c.oid = to_regclass($1))
SELECT ARRAY(SELECT g.tgname::text FROM pg_trigger g, t
              WHERE g.tgrelid = t.oid AND NOT g.tgisinternal ORDER BY 1) AS triggers,
       ARRAY(SELECT format('%s (to %s)', k.conname, k.confrelid::regclass)
               FROM pg_constraint k, t
              WHERE k.contype = 'f' AND k.conrelid = t.oid ORDER BY 1) AS references_out,
       ARRAY(SELECT format('%s (from %s)', k.conname, k.conrelid::regclass)
               FROM pg_constraint k, t
              WHERE k.contype = 'f' AND k.confrelid = t.oid ORDER BY 1) AS references_in,
       ARRAY(SELECT p.pubname::text FROM pg_publication_tables p, t
              WHERE to_regclass(format('%I.%I', p.schemaname, p.tablename)) = t.oid
              ORDER BY 1) AS publications,
       (SELECT t.relreplident = 'n'
               OR (t.relreplident = 'd' AND NOT EXISTS (
                      SELECT FROM pg_index i WHERE i.indrelid = t.oid AND i.indisprimary))
               OR (t.relreplident = 'i' AND NOT EXISTS (
                      SELECT FROM pg_index i WHERE i.indrelid = t.oid AND i.indisreplident))
          FROM t) AS no_replica_identity;

-- explain_text --
-- plan's EXPLAIN of the first batch (its SQL with the range expanded, put in by
-- str.format), with the bounds as parameters; nothing runs.
EXPLAIN (FORMAT TEXT) {statement}

-- forget_runs --
-- A backfill rolled back: its run and its down run are forgotten with its record, so that
-- the next migrate applies it again, and a later rollback undoes it again.
DELETE FROM ops.backfills WHERE name = $1 OR name = $1 || ':down';

-- server_pid --
-- The server session answering this statement: behind a pooler, not the one announced at
-- connect.
SELECT pg_backend_pid();

-- reset_timeouts --
-- A file run outside a transaction is done: the session's timeouts as they were (a pooled
-- server connection goes on to other clients).
RESET lock_timeout; RESET statement_timeout;

-- migration_files_table --
SELECT to_regclass('ops.migration_files') IS NOT NULL;
