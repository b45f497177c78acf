"""What ``pause``, ``resume`` and ``cancel`` do in each state of a run: the state it moves
to, the exit code and the one line said. Pure (no server); docs/cli.md has the same table.

The exit code follows one rule: 0 when the run is afterwards where the command asks it to
be (moved there now, or there already; for ``resume``: free to run); 2 when the command
has nothing to act on (a run that never started or has completed) or does not apply (a
cancelled run is not paused), and nothing was changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .states import RunState

EXIT_OK, EXIT_REFUSED = 0, 2

COMMANDS = ("pause", "resume", "cancel")

_MOVES: dict[str, tuple[RunState, frozenset[RunState]]] = {
    # command: (the state it sets, the stored states it moves from)
    "pause": (RunState.PAUSED, frozenset({RunState.RUNNING, RunState.FAILED})),
    "resume": (RunState.RUNNING, frozenset({RunState.PAUSED, RunState.CANCELLED})),
    "cancel": (
        RunState.CANCELLED,
        frozenset({RunState.RUNNING, RunState.PAUSED, RunState.FAILED}),
    ),
}


@dataclass(frozen=True)
class RunFacts:
    """What a control command knows of the run when it decides (its row locked)."""

    name: str
    state: RunState | None  # the stored state; None: the run never started
    live_runners: int = 0  # runners with a recent heartbeat
    keys_done: int = 0


@dataclass(frozen=True)
class Reply:
    """The decision: the state to set (``None``: left as it is), the exit code, the line."""

    new_state: RunState | None
    exit_code: int
    line: str


def reply(command: str, facts: RunFacts) -> Reply:  # noqa: PLR0911 -- a decision table
    """What ``command`` (pause, resume or cancel) does to the run ``facts`` describes."""
    target, moves_from = _MOVES[command]
    name, state = facts.name, facts.state
    if state is None:
        return Reply(None, EXIT_REFUSED, f"{name} has not started; there is nothing to {command}")
    if state is RunState.COMPLETED:
        return Reply(None, EXIT_REFUSED, f"{name} has completed; there is nothing to {command}")
    if state in moves_from:
        return Reply(target, EXIT_OK, _moved(command, state, facts))
    if command == "resume":
        return Reply(None, EXIT_OK, _not_paused(state, facts))
    if state is target:
        return Reply(None, EXIT_OK, f"{name} is already {target}")
    if state is RunState.CANCELLED:  # pause of a cancelled run
        return Reply(
            None,
            EXIT_REFUSED,
            f"{name} was cancelled; there is nothing to {command}"
            f" (`resume {name}` takes it up again from its checkpoint)",
        )
    return Reply(None, EXIT_REFUSED, f"{name} is {state}; there is nothing to {command}")


def _moved(command: str, before: RunState, facts: RunFacts) -> str:
    name = facts.name
    if command == "pause":
        return f"{name}: paused; running workers stop after their current batch"
    if command == "cancel":
        return (
            f"{name}: cancelled; running workers stop after their current batch;"
            f" `resume {name}` undoes it, keeping the checkpoint"
        )
    if facts.live_runners:
        # Said right after a pause or cancel, before every runner saw it: those that did
        # stop, the others go on.
        stopped_by = "pause" if before is RunState.PAUSED else "cancel"
        goes_on = f"runners that had not yet seen the {stopped_by} go on, `run {name}` joins them"
    else:
        goes_on = f"`run {name}` continues it"
    if before is RunState.CANCELLED:
        return (
            f"{name}: resumed with its checkpoint kept ({facts.keys_done:,} keys done); {goes_on}"
        )
    return f"{name}: resumed; {goes_on}"


def _not_paused(state: RunState, facts: RunFacts) -> str:
    name = facts.name
    if state is RunState.FAILED:
        return f"{name} is not paused; it failed, and `run {name}` resumes it"
    if facts.live_runners:
        return f"{name} is not paused; it is running"
    return f"{name} is not paused; `run {name}` continues it"
