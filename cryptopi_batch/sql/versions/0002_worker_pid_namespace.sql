-- Version 2 of the ops schema of cryptopi_batch: where each runner's pid means its process
-- (the machine's boot id and the pid namespace). Runners that share a host name but not
-- that (containers on the host's network, which take its name; machines given one name)
-- must not judge each other alive or dead by pid. NULL: not known (a runner of version 1,
-- or a system without either).
ALTER TABLE ops.backfill_workers ADD COLUMN pid_namespace text;
