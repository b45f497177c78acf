"""``python -m cryptopi_batch`` and the ``cryptopi-batch`` script: the command line's own
process. The start-up and exit shortcuts below belong to that process only, never to
library code (cli.main included)."""

import os
import signal
import sys
from types import FrameType


def _interrupted_early(signum: int, frame: FrameType | None) -> None:
    """SIGINT or SIGTERM before main() has taken over (imports, start-up): nothing has
    started, so the process ends at once as main() would end it (exit 3, one line); never
    Python's KeyboardInterrupt traceback from inside an import, nor a death by SIGTERM."""
    try:
        os.write(2, b"cryptopi_batch: interrupted\n")
    finally:
        os._exit(3)


# First of all, before the imports below (~40 ms): a signal during them ends the process as
# one during a run does. A signal a shell set to be ignored (SIGINT of `cmd &`) stays so.
for _signum in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(_signum) is not signal.SIG_IGN:
        signal.signal(_signum, _interrupted_early)

import atexit  # noqa: E402 -- after the handlers above, on purpose
import gc  # noqa: E402
import threading  # noqa: E402
from typing import NoReturn  # noqa: E402

# The imports below create ~25,000 objects and next to no garbage, yet allocating them runs
# ~60 cyclic garbage collections: collection is off while they load (~4-5 ms less before a
# run's first statement). Then what they built is frozen (gc.freeze: never scanned again,
# by the run's collections nor by the finalization of an exit that does not go through
# _exit below, such as --help's: ~20 ms less) and collection is back on (if it was).
_collecting = gc.isenabled()
gc.disable()

# structlog imports rich at its own import (structlog.dev and structlog.tracebacks: `try:
# import rich`), ~25-30 ms of the ~150 ms this process spent importing, only to render
# exceptions logged with exc_info, which cryptopi_batch never logs; the CLI imports rich
# itself where it draws (progress bar, tables, demo). So structlog is imported here while
# rich reads as absent, and sys.modules is left as it was: later imports find rich as
# usual. What changes, in this process only: structlog's console renderer would format an
# exc_info (say, from a migration's own logging) as a plain traceback rather than rich's.
if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]

from .cli import main  # noqa: E402 -- after the set-up above, on purpose

gc.freeze()
if _collecting:
    gc.enable()


def _exit(code: int) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's finalization (~35 ms of module
    teardown and garbage collection after main() returns).

    main() has finished its work by then: connections closed, the demo's server stopped in
    its finally. atexit callbacks still run (logging's shutdown, a migration's own). When
    another thread is still running, or stdout or stderr cannot be flushed (a closed
    pipe), this is the ordinary exit instead: Python waits for the thread, or reports the
    flush and exits 120, as it always did."""
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # private, but what finalization would run first
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and not stream.closed:
                stream.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def start() -> NoReturn:
    """The installed ``cryptopi-batch`` script's entry point: the same process as
    ``python -m cryptopi_batch``."""
    try:
        # main() takes over: from here a signal is a KeyboardInterrupt, which it turns into
        # exit 3 (and a run into "finish the batch, then stop"); one that lands before
        # main()'s own try is caught here.
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is _interrupted_early:
                handler = signal.default_int_handler if signum == signal.SIGINT else None
                signal.signal(signum, handler or _raise_interrupt)
        code = main()
    except KeyboardInterrupt:
        print("cryptopi_batch: interrupted", file=sys.stderr)
        code = 3
    # Done: a signal while exiting ends it at once, as during the imports.
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _interrupted_early)
    _exit(code)


if __name__ == "__main__":
    start()
