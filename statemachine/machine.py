"""The job state machine: seven states, eight triggers, one `transitions.Machine` built once.

    (none) --submit--> queued --verify--> verified --validate--> validated --start--+
                                                                                     |
                          +---------------------------- start ----------------------+
                          v                                                          |
                       running --succeed--> succeeded                                |
                          |  \\                                                      |
                          |   +--retry--> retry_wait ----------- start --------------+
                          |
       fail / cancel: from queued, verified, validated, running, retry_wait --> failed

`succeeded` and `failed` are terminal. "(none)" is the empty state `""`: a job that does not
exist yet, which is also the `src` of every job's first event. The graph is data
(`TRANSITIONS`); callbacks are not used, so firing a trigger can never perform I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from transitions import Machine, MachineError

from core.errors import IllegalTransition


class JobState(StrEnum):
    """A job's state. A `str` enum: a member equals, and is stored as, its plain value."""

    QUEUED = "queued"
    VERIFIED = "verified"
    VALIDATED = "validated"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Trigger(StrEnum):
    """What moves a job from one state to the next."""

    SUBMIT = "submit"
    VERIFY = "verify"
    VALIDATE = "validate"
    START = "start"
    SUCCEED = "succeed"
    RETRY = "retry"
    FAIL = "fail"
    CANCEL = "cancel"


# The empty state: a job that does not exist yet (the `src` of every job's first event).
NO_STATE: Final = ""
QUEUED: Final = JobState.QUEUED
VERIFIED: Final = JobState.VERIFIED
VALIDATED: Final = JobState.VALIDATED
RUNNING: Final = JobState.RUNNING
RETRY_WAIT: Final = JobState.RETRY_WAIT
SUCCEEDED: Final = JobState.SUCCEEDED
FAILED: Final = JobState.FAILED

STATES: Final = tuple(JobState)
TERMINAL_STATES: Final = frozenset({SUCCEEDED, FAILED})
ACTIVE_STATES: Final = (QUEUED, VERIFIED, VALIDATED, RUNNING, RETRY_WAIT)
# The same states as bytes, for code that compares raw Redis answers.
TERMINAL_STATES_RAW: Final = frozenset(state.encode() for state in TERMINAL_STATES)


def _plain(states: tuple[JobState, ...] | JobState | str) -> str | list[str]:
    # `transitions` treats Enum members as named states: hand it the plain values.
    if isinstance(states, tuple):
        return [str(state.value) for state in states]
    return states.value if isinstance(states, JobState) else states


TRANSITIONS: Final[list[dict[str, str | list[str]]]] = [
    {"trigger": trigger.value, "source": _plain(source), "dest": _plain(dest)}
    for trigger, source, dest in (
        (Trigger.SUBMIT, NO_STATE, QUEUED),
        (Trigger.VERIFY, QUEUED, VERIFIED),
        (Trigger.VALIDATE, VERIFIED, VALIDATED),
        (Trigger.START, (VALIDATED, RETRY_WAIT), RUNNING),
        (Trigger.SUCCEED, RUNNING, SUCCEEDED),
        (Trigger.RETRY, RUNNING, RETRY_WAIT),
        (Trigger.FAIL, ACTIVE_STATES, FAILED),
        (Trigger.CANCEL, ACTIVE_STATES, FAILED),
    )
]

TRIGGERS: Final = frozenset(str(t["trigger"]) for t in TRANSITIONS)


class _JobModel:
    """The object the machine moves; it only holds `state`."""

    state: str


# Built once: adding models to one machine is far cheaper than building a machine per job.
_MACHINE: Final = Machine(
    model=None,
    states=[NO_STATE, *(state.value for state in STATES)],
    transitions=TRANSITIONS,
    initial=NO_STATE,
    auto_transitions=False,
)


def _sources(trigger: str) -> frozenset[str]:
    return frozenset(
        source
        for transition in TRANSITIONS
        if transition["trigger"] == trigger
        for source in (
            transition["source"]
            if isinstance(transition["source"], list)
            else [transition["source"]]
        )
    )


SOURCES: Final[dict[str, frozenset[str]]] = {trigger: _sources(trigger) for trigger in TRIGGERS}


class JobCursor:
    """One job walked through the machine trigger by trigger (replay uses one per job).

    The model joins the machine once for the cursor's life, since joining costs far more than
    firing; use it as a context manager so it always leaves again.
    """

    def __init__(self, job_id: str, state: str = NO_STATE) -> None:
        self.job_id = job_id
        self._model = _JobModel()
        # A plain str: `transitions` would take a JobState member for a state's name.
        _MACHINE.add_model(self._model, initial=str(state))

    def __enter__(self) -> JobCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach the model from the shared machine."""
        _MACHINE.remove_model(self._model)

    @property
    def state(self) -> str:
        """The state the job is in now."""
        return self._model.state

    def fire(self, trigger: str) -> str:
        """Move along `trigger`, returning the new state, or raise IllegalTransition."""
        src = self._model.state
        if trigger not in TRIGGERS:
            raise IllegalTransition(self.job_id, trigger, src)
        try:
            getattr(self._model, trigger)()
        except MachineError:
            raise IllegalTransition(self.job_id, trigger, src) from None
        return self._model.state


def _decide_every_step() -> dict[tuple[str, str], str]:
    """Every (state, trigger) -> state the machine allows, found by firing the machine itself."""
    steps: dict[tuple[str, str], str] = {}
    for state in (NO_STATE, *(state.value for state in STATES)):
        for trigger in sorted(TRIGGERS):
            with JobCursor("(table)", state) as cursor:
                try:
                    steps[(state, trigger)] = cursor.fire(trigger)
                except IllegalTransition:
                    continue
    return steps


# The machine's own decisions, taken once at import: replaying a long history asks the same
# 64 questions millions of times, and a lookup costs a hundredth of a fired trigger.
STEPS: Final = _decide_every_step()


def next_state(job_id: str, src: str, trigger: str) -> str:
    """The state `trigger` leads to from `src`, as the machine decides it."""
    try:
        return STEPS[(src, trigger)]
    except KeyError:
        raise IllegalTransition(job_id, trigger, src) from None


def is_terminal(state: str) -> bool:
    """True for `succeeded` and `failed`."""
    return state in TERMINAL_STATES
