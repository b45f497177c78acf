"""``python -m benchmarks.keyset_script DSN``: the hand-written keyset loop
(`baselines.keyset_loop`) as a process of its own, as a user's script runs it: the
interpreter's start, asyncpg's import, the connect, the loop, the exit. The benchmark times
it from spawn to exit, as it times ``cryptopi_batch run``. Its one line on stderr, a JSON
object, gives the rows it changed."""

from __future__ import annotations

import asyncio
import json
import sys

from .baselines import keyset_loop


def main() -> None:
    run = asyncio.run(keyset_loop(sys.argv[1]))
    print(json.dumps({"event": "loop_done", "rows": run.rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
