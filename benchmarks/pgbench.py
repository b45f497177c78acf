"""An application workload beside the backfill: pgbench with a custom script.

Each pgbench transaction is one application request on the benchmark table: a
single-row read by id and a single-row write of the same id (two autocommitted
statements). pgbench runs at a fixed rate (``-R``), as requests arrive at a server whatever
it is doing; its latency then counts from each transaction's *scheduled* start, so a
client stuck behind a lock delays the requests queued after it too (no coordinated
omission). The per-transaction log (``--log``) gives every transaction's end and latency,
from which `Latency.of` takes the statistics of any time window.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptopi_batch.embedded import EmbeddedCluster

from .baselines import TABLE
from .writer import percentile

SCRIPT = f"""\\set id random(1, :rows)
SELECT value FROM {TABLE} WHERE id = :id;
UPDATE {TABLE} SET value = value + 1 WHERE id = :id;
"""


@dataclass(frozen=True)
class Transaction:
    """One pgbench transaction: when it ended (epoch seconds) and its latency (ms, from
    its scheduled start under ``-R``)."""

    end: float
    latency_ms: float

    @property
    def start(self) -> float:
        return self.end - self.latency_ms / 1000.0


def parse_log(text: str) -> list[Transaction]:
    """The lines of a pgbench per-transaction log (``--log``, no aggregation):
    ``client_id transaction_no time script_no time_epoch time_us [schedule_lag]``, where
    ``time`` is the latency in µs; skipped transactions (``skipped`` instead of ``time``,
    only with ``--latency-limit``) and lines of any other shape are left out."""
    out: list[Transaction] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or not fields[2].isdigit():
            continue
        try:
            end = int(fields[4]) + int(fields[5]) / 1e6
        except ValueError:
            continue
        out.append(Transaction(end, int(fields[2]) / 1000.0))
    out.sort(key=lambda t: t.end)
    return out


@dataclass(frozen=True)
class Latency:
    """The workload in one window: TPS (transactions that ended in it, per second) and
    the latencies (ms) of every transaction that overlapped it."""

    transactions: int
    seconds: float
    tps: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, txns: list[Transaction], start: float, end: float) -> Latency:
        seconds = max(end - start, 1e-9)
        ended = sum(1 for t in txns if start <= t.end <= end)
        lat = sorted(t.latency_ms for t in txns if t.end >= start and t.start <= end)
        nan = float("nan")
        if not lat:
            return cls(0, seconds, ended / seconds, nan, nan, nan)
        return cls(
            len(lat),
            seconds,
            ended / seconds,
            percentile(lat, 0.50),
            percentile(lat, 0.99),
            lat[-1],
        )


@dataclass(frozen=True)
class Workload:
    """How pgbench runs: ``clients`` connections on ``threads`` threads, ``rate``
    transactions per second in all (0: as fast as it can)."""

    clients: int = 4
    threads: int = 2
    rate: float = 400.0

    def arguments(self, dsn: str, rows: int, seconds: int, log_prefix: Path) -> list[str]:
        args = [
            "-n",  # no VACUUM of pgbench's own tables: there are none
            "-f",
            "-",  # the script, from stdin
            "-D",
            f"rows={rows}",
            "-c",
            str(self.clients),
            "-j",
            str(self.threads),
            "-T",
            str(seconds),
            "-P",
            "1",
            "--log",
            f"--log-prefix={log_prefix}",
        ]
        if self.rate > 0:
            args += ["-R", f"{self.rate:g}"]
        return [*args, dsn]


def run_pgbench(
    cluster: EmbeddedCluster | None, workload: Workload, dsn: str, rows: int, seconds: int
) -> list[Transaction]:
    """Run pgbench for ``seconds`` (blocking: call it from a thread) and return its
    transactions. The embedded server's own pgbench runs as the server's OS user, as
    the cluster runs its programs; with ``--dsn``, the pgbench on PATH."""
    logs = Path(tempfile.mkdtemp(prefix="cryptopi_bench_pgbench_"))
    try:
        logs.chmod(0o777)  # the server's OS user writes the logs here
        args = workload.arguments(dsn, rows, seconds, logs / "workload")
        if cluster is not None:
            proc = cluster.run(
                "pgbench", *args, check=False, timeout=seconds + 60.0, input_text=SCRIPT
            )
        else:
            program = shutil.which("pgbench")
            if program is None:
                raise RuntimeError("--workload with --dsn needs pgbench on PATH")
            proc = subprocess.run(  # noqa: PLW1510 -- checked below, with its output
                [program, *args],
                input=SCRIPT,
                capture_output=True,
                text=True,
                timeout=seconds + 60.0,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        # One log file per thread: workload.<pid> and workload.<pid>.<n>.
        text = "".join(f.read_text() for f in sorted(logs.iterdir()))
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    return parse_log(text)
