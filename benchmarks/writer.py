"""A concurrent single-row writer, in its own process.

``python -m benchmarks.writer --dsn … --max-id N`` opens ``--connections`` connections,
each doing ``UPDATE matrices.dyn_values SET value = value + 1 WHERE id = $1`` on random
ids (autocommit) every ``--interval`` seconds, and records each statement's start and end
(``time.monotonic()``, which on Linux is one clock for every process). It prints ``ready``
once warmed up, runs until its stdin closes, then prints the samples as one JSON line.

A process of its own, so that the benchmark's own event loop (which runs the in-process
approaches) cannot delay it and show up as a stall that PostgreSQL did not cause.

`WriterHandle` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

UPDATE = "UPDATE matrices.dyn_values SET value = value + 1 WHERE id = $1"
WARMUP = 20


async def _connection_loop(
    dsn: str,
    max_id: int,
    interval: float,
    stop: asyncio.Event,
    ready: asyncio.Barrier,
    samples: list[tuple[float, float]],
    seed: int,
) -> None:
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(WARMUP):
            await conn.execute(UPDATE, rng.randint(1, max_id))
        await ready.wait()
        while not stop.is_set():
            started = time.monotonic()
            await conn.execute(UPDATE, rng.randint(1, max_id))
            ended = time.monotonic()
            samples.append((started, ended))
            pause = interval - (ended - started)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
    finally:
        await conn.close()


async def _main(dsn: str, max_id: int, connections: int, interval: float) -> None:
    stop = asyncio.Event()
    ready = asyncio.Barrier(connections + 1)
    samples: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes our stdin
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    tasks = [
        asyncio.create_task(_connection_loop(dsn, max_id, interval, stop, ready, samples, seed=i))
        for i in range(connections)
    ]
    await ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    samples.sort()
    print(json.dumps(samples), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writer")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--max-id", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    asyncio.run(_main(args.dsn, args.max_id, args.connections, args.interval))


@dataclass
class WriterStats:
    statements: int
    max_ms: float
    p99_ms: float
    p50_ms: float


def summarize(samples: list[tuple[float, float]], start: float, end: float) -> WriterStats:
    """Latencies of the statements that overlapped ``[start, end]`` (monotonic seconds)."""
    lat = sorted((e - s) * 1000.0 for s, e in samples if e >= start and s <= end)
    if not lat:
        return WriterStats(0, float("nan"), float("nan"), float("nan"))
    return WriterStats(len(lat), lat[-1], percentile(lat, 0.99), percentile(lat, 0.50))


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


class WriterHandle:
    """Starts the writer process; ``stop()`` ends it and returns its samples."""

    def __init__(self, dsn: str, max_id: int, connections: int, interval: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.writer",
                "--dsn",
                dsn,
                "--max-id",
                str(max_id),
                "--connections",
                str(connections),
                "--interval",
                str(interval),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # where `benchmarks` imports from

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"writer did not start (said {line!r})")

    def stop(self) -> list[tuple[float, float]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout=60)
        if code != 0:
            raise RuntimeError(f"writer exited with {code}")
        return [(float(s), float(e)) for s, e in json.loads(out.strip().splitlines()[-1])]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    main()
