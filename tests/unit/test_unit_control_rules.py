"""pause, resume and cancel in every stored state of a run: the state each moves to, its
exit code and its line (the table of docs/cli.md), without a server."""

from __future__ import annotations

import pytest

from cryptopi_batch.control_rules import COMMANDS, RunFacts, reply
from cryptopi_batch.states import RunState

X = "20250301_0930_x"
R, P, C, F, D = (
    RunState.RUNNING,
    RunState.PAUSED,
    RunState.CANCELLED,
    RunState.FAILED,
    RunState.COMPLETED,
)
STOP = "running workers stop after their current batch"

# (command, stored state (None: never started), live runners) -> (new state, exit, line)
TABLE: list[tuple[str, RunState | None, int, RunState | None, int, str]] = [
    ("pause", R, 1, P, 0, f"{X}: paused; {STOP}"),
    ("pause", R, 0, P, 0, f"{X}: paused; {STOP}"),
    ("pause", F, 0, P, 0, f"{X}: paused; {STOP}"),
    ("pause", P, 0, None, 0, f"{X} is already paused"),
    ("pause", D, 0, None, 2, f"{X} has completed; there is nothing to pause"),
    ("pause", None, 0, None, 2, f"{X} has not started; there is nothing to pause"),
    (
        "pause",
        C,
        0,
        None,
        2,
        f"{X} was cancelled; there is nothing to pause"
        f" (`resume {X}` takes it up again from its checkpoint)",
    ),
    ("resume", P, 0, R, 0, f"{X}: resumed; `run {X}` continues it"),
    (
        "resume",
        P,
        1,
        R,
        0,
        f"{X}: resumed; runners that had not yet seen the pause go on, `run {X}` joins them",
    ),
    (
        "resume",
        C,
        0,
        R,
        0,
        f"{X}: resumed with its checkpoint kept (1,200 keys done); `run {X}` continues it",
    ),
    ("resume", R, 1, None, 0, f"{X} is not paused; it is running"),
    ("resume", R, 0, None, 0, f"{X} is not paused; `run {X}` continues it"),
    ("resume", F, 0, None, 0, f"{X} is not paused; it failed, and `run {X}` resumes it"),
    ("resume", D, 0, None, 2, f"{X} has completed; there is nothing to resume"),
    ("resume", None, 0, None, 2, f"{X} has not started; there is nothing to resume"),
    *(
        (
            "cancel",
            state,
            live,
            C,
            0,
            f"{X}: cancelled; {STOP}; `resume {X}` undoes it, keeping the checkpoint",
        )
        for state, live in ((R, 1), (R, 0), (P, 0), (F, 0))
    ),
    ("cancel", C, 0, None, 0, f"{X} is already cancelled"),
    ("cancel", D, 0, None, 2, f"{X} has completed; there is nothing to cancel"),
    ("cancel", None, 0, None, 2, f"{X} has not started; there is nothing to cancel"),
]


@pytest.mark.parametrize(
    ("command", "state", "live", "new_state", "code", "line"),
    TABLE,
    ids=[f"{t[0]}-{t[1]}-live{t[2]}" for t in TABLE],
)
def test_each_command_in_each_state(command, state, live, new_state, code, line):
    decided = reply(command, RunFacts(X, state, live_runners=live, keys_done=1_200))
    assert (decided.new_state, decided.exit_code, decided.line) == (new_state, code, line)


def test_the_table_covers_every_command_in_every_stored_state():
    stored = [None, R, P, C, F, D]
    covered = {(t[0], t[1]) for t in TABLE}
    assert covered == {(c, s) for c in COMMANDS for s in stored}


def test_exit_0_exactly_when_the_run_ends_where_the_command_asks():
    """The one rule behind the codes: pause → paused, cancel → cancelled, resume → free
    to run (running, or failed: `run` resumes it); otherwise 2 and nothing changes."""
    wanted = {"pause": {P}, "cancel": {C}, "resume": {R, F}}
    for command, state, live, *_ in TABLE:
        decided = reply(command, RunFacts(X, state, live_runners=live))
        after = decided.new_state or state
        assert (decided.exit_code == 0) == (after in wanted[command]), (command, state)
        if decided.exit_code:
            assert decided.new_state is None
