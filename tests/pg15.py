"""Start or stop a throw-away cluster on Debian's PostgreSQL 15 binaries (for .ci/run).

    python tests/pg15.py start DATADIR   # prints the superuser DSN on stdout
    python tests/pg15.py stop DATADIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptopi_batch.embedded import EmbeddedCluster

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("datadir", type=Path)
    parser.add_argument("--bin-dir", type=Path, default=PG15_BIN)
    args = parser.parse_args()
    cluster = EmbeddedCluster(args.datadir, bin_dir=args.bin_dir)
    if args.action == "start":
        cluster.start()
        print(cluster.dsn("postgres"))
    else:
        cluster.stop()


if __name__ == "__main__":
    main()
