-- Version 2 of the ops schema of cryptopi_batch: each runner's pid namespace. Runners that
-- share a host name but not a pid namespace (containers on the host's network, which take
-- its name) must not judge each other alive or dead by pid. NULL: not known (a runner of
-- version 1, or a system without pid namespaces).
ALTER TABLE ops.backfill_workers ADD COLUMN pid_namespace text;
