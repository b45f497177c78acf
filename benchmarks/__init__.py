"""Benchmarks of ``cryptopi_batch run`` against the hand-written alternatives.

``python -m benchmarks`` (or ``make bench``) starts a throw-away embedded PostgreSQL (or uses
``--dsn``), builds ``matrices.dyn_values`` once as a template database and copies it for
every timed phase, and prints one table: the single ``UPDATE``, a hand-written asyncpg
keyset loop, the naive ``WHERE id IN (SELECT … LIMIT n)`` loop and ``cryptopi_batch run``,
each beside a concurrent single-row writer whose latencies show how long other writers
stall. ``--resume`` adds the time a resumed run on a large table takes to its first batch.

Kept free of imports so that the writer subprocess (``python -m benchmarks.writer``)
starts fast.
"""
