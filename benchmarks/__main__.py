"""``python -m benchmarks``: see ``--help`` and docs/benchmarks.md."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
