"""How a job reads to a person: state labels, failure reasons in plain words, event details.

Every reason code of docs/architecture.md §5 has a sentence saying what happened and a hint saying
what to
do next. The job page renders these on the server and hands the same tables to
`static/js/job.js` (as a JSON block), so a state reached live reads exactly like one
rendered on load. Event details are shown whole except the bulky or sensitive parts: the
submitted inputs get their own small table, and a secret's fingerprint only ever shows as
"(set)".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from core.reasons import Reason

STATE_LABELS: Final[Mapping[str, str]] = {
    "queued": "Queued",
    "verified": "Verified",
    "validated": "Validated",
    "running": "Running",
    "retry_wait": "Waiting to retry",
    "succeeded": "Succeeded",
    "failed": "Failed",
}

# What happened, then what to do about it.
FAILURE_HELP: Final[Mapping[str, tuple[str, str]]] = {
    Reason.BAD_SIGNATURE: (
        "The agent refused the job because its signature did not match.",
        "Make sure the panel and the agent use the same key file (PROV_HMAC_KEYS_FILE), "
        "then run it again.",
    ),
    Reason.UNKNOWN_KEY: (
        "The job was signed with a key the agent does not know.",
        "Copy the current key file to the agent's host (or restart the agent after a key "
        "rotation), then run it again.",
    ),
    Reason.EXPIRED: (
        "The job waited in the queue too long and expired before an agent picked it up.",
        "Check on the Agents page that an agent is running for this target, then run it again.",
    ),
    Reason.REPLAYED: (
        "The agent refused the job because it had already seen this job id.",
        "This can mean someone replayed an old job. Review the audit log, then run it again "
        "from the form.",
    ),
    Reason.MALFORMED: (
        "The job could not be read by the agent.",
        "Check that the panel and the agent run the same version, then run it again.",
    ),
    Reason.UNKNOWN_JOB: (
        "The agent received an entry for a job the panel never created.",
        "Review the audit log: something other than the panel is writing to the queue.",
    ),
    Reason.NOT_WHITELISTED: (
        "The agent does not have this app, or its copy of the app is invalid.",
        "Install the same installers folder on the agent's host and check it with "
        "`provision apps check`.",
    ),
    Reason.FINGERPRINT_MISMATCH: (
        "The agent's copy of the app differs from the panel's.",
        "Deploy the same version of the app's manifest and script to the panel and the agent, "
        "then run it again.",
    ),
    Reason.INVALID_INPUTS: (
        "The agent refused the inputs against its own copy of the manifest.",
        "Make sure both sides have the same app version, then run it again.",
    ),
    Reason.UNSAFE_PATH: (
        "The app's install script is not a regular file inside the app's folder.",
        "Fix the app folder on the agent's host (no symbolic links out of it), then run it again.",
    ),
    Reason.VALIDATION_ERROR: (
        "The installer rejected the inputs (exit 1).",
        "Read the log below to see which value it refused, correct it in the form and run "
        "it again.",
    ),
    Reason.INSTALL_ERROR: (
        "The installer kept failing with a temporary error (exit 2) after all retries.",
        "Check the log below, fix the cause (network, package mirror), then run it again.",
    ),
    Reason.CONFIG_ERROR: (
        "The installer found a problem with the host's configuration (exit 3).",
        "Read the log below, fix the configuration on the target host, then run it again.",
    ),
    Reason.UNKNOWN_EXIT: (
        "The installer ended with an exit code it is not supposed to use.",
        "Read the log below; the app's install script may have a bug worth reporting.",
    ),
    Reason.KILLED: (
        "The installer was killed by a signal before it finished.",
        "Check the target host for memory pressure or an administrator stopping it, then "
        "run it again.",
    ),
    Reason.TIMEOUT: (
        "The installer ran longer than the app's time limit and was stopped.",
        "Read the log to see where it hung; if the host is just slow, raise the manifest's "
        "timeout.",
    ),
    Reason.VERIFY_FAILED: (
        "The installer finished, but the app's check afterwards failed.",
        "Look at the log and the service on the target host, then run it again.",
    ),
    Reason.CANCELLED: (
        "The job was cancelled by an operator.",
        "Run it again when you are ready.",
    ),
    Reason.AGENT_LOST: (
        "The agent running this job stopped answering and no retries were left.",
        "Check the agent on the target host (Agents page), then run it again.",
    ),
    Reason.POISON: (
        "The job was delivered to agents too many times without an outcome.",
        "Check the agents' logs for crashes, then run it again.",
    ),
}
UNKNOWN_FAILURE: Final = (
    "The job failed.",
    "Read the timeline and the log below for details.",
)

# Detail fields left out of the generic list: shown another way, or too bulky to help.
_SPECIAL_DETAIL: Final = frozenset({"inputs", "secret_fingerprints"})
_TIME_DETAIL: Final = frozenset({"next_retry_at", "expires_at"})
HIDDEN_VALUE: Final = "(set)"
EMPTY_VALUE: Final = "(empty)"


def failure_help(reason: str | None) -> tuple[str, str]:
    """The sentence and the hint for a failure reason."""
    return FAILURE_HELP.get(reason or "", UNKNOWN_FAILURE)


def state_label(state: str) -> str:
    """A state as a person reads it."""
    return STATE_LABELS.get(state, state or "Unknown")


def iso_time(epoch_ms: int | None) -> str:
    """An ISO 8601 UTC timestamp (for `<time datetime>`)."""
    if epoch_ms is None:
        return ""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_text(epoch_ms: int | None) -> str:
    """A readable UTC time, shown until the browser puts it in local time."""
    if epoch_ms is None:
        return ""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_short_value(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_short_value(item)}" for key, item in value.items())
    text = "" if value is None else str(value)
    if text.startswith("sha256:") and len(text) > 23:
        return text[:19] + "…"
    return text


@dataclass(frozen=True, slots=True)
class DetailRow:
    """One detail of an event: a label and its text (`epoch_ms` set for a time)."""

    key: str
    text: str
    epoch_ms: int | None = None


def detail_rows(detail: Mapping[str, Any]) -> list[DetailRow]:
    """An event's detail as rows, minus the inputs table; secrets only ever as "(set)"."""
    rows: list[DetailRow] = []
    for key, value in detail.items():
        if key in _SPECIAL_DETAIL:
            continue
        if key in _TIME_DETAIL and isinstance(value, int) and not isinstance(value, bool):
            rows.append(DetailRow(key, utc_text(value), value))
        else:
            rows.append(DetailRow(key, _short_value(value)))
    secrets = detail.get("secret_fingerprints")
    if isinstance(secrets, Mapping) and secrets:
        rows.append(DetailRow("secrets", ", ".join(f"{name} {HIDDEN_VALUE}" for name in secrets)))
    return rows


def input_rows(detail: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The submitted inputs of a `submit` event as (name, value) rows; secrets as "(set)"."""
    inputs = detail.get("inputs")
    rows = [
        (str(name), _short_value(value) or EMPTY_VALUE)
        for name, value in (inputs.items() if isinstance(inputs, Mapping) else ())
    ]
    secrets = detail.get("secret_fingerprints")
    if isinstance(secrets, Mapping):
        rows.extend((str(name), HIDDEN_VALUE) for name in secrets)
    return rows


def texts_for_script() -> dict[str, Any]:
    """The tables `job.js` needs to describe states reached live."""
    return {
        "states": dict(STATE_LABELS),
        "reasons": {str(reason): list(texts) for reason, texts in FAILURE_HELP.items()},
        "unknown_reason": list(UNKNOWN_FAILURE),
    }
