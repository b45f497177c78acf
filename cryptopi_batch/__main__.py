"""``python -m cryptopi_batch``."""

import sys

from .cli import main

sys.exit(main())
