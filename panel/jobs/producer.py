"""The panel's side of the job stream: turn validated inputs into a signed, stored job.

One call builds the envelope (passwords sealed, everything else in clear), signs its canonical
bytes once, and writes in one atomic step the `submit` event, the snapshot, the listing index
entry and the stream entry the agents read. Either all of it exists or none of it does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ulid import ULID

from core.errors import CannotSubmit
from core.keyring import KeyRing
from core.keys import is_valid_target
from core.runtime.catalogue import AppEntry
from core.sealing import seal_inputs, secret_fingerprint
from core.signing import SignedEnvelope, build_envelope, sign_envelope
from statemachine.events import Event
from statemachine.store import AppendEntry, EventStore, IndexJob, SideEffect

InputValues = Mapping[str, str | list[str]]


@dataclass(frozen=True, slots=True)
class SubmittedJob:
    """A job the panel stored and queued."""

    job_id: str
    event: Event
    signed: SignedEnvelope


async def submit_job(
    store: EventStore,
    ring: KeyRing,
    app: AppEntry,
    values: InputValues,
    *,
    requested_by: str,
    target: str,
    ttl_s: int,
    now_s: int | None = None,
    job_id: str | None = None,
    guards: Sequence[SideEffect] = (),
) -> SubmittedJob:
    """Sign, seal and store a job for `app` with already validated, normalised `values`.

    `guards` are effects of the same atomic step, e.g. the submission limits, made for
    `job_id` (a fresh ULID when None); a guard that refuses raises `LimitReached`.
    """
    if app.manifest is None or app.fingerprint is None:
        raise CannotSubmit(f"app {app.app_id!r} is invalid and cannot be submitted")
    if not is_valid_target(target):
        raise CannotSubmit(f"invalid target {target!r}")
    manifest = app.manifest
    issued_at = int(time.time()) if now_s is None else now_s
    job_id = job_id or str(ULID())
    password_names = [spec.name for spec in manifest.inputs if spec.type == "password"]
    clear, sealed = seal_inputs(
        ring, job_id=job_id, manifest_password_names=password_names, values=values
    )
    envelope = build_envelope(
        job_id=job_id,
        app_id=manifest.id,
        app_fingerprint=app.fingerprint,
        target=target,
        inputs=clear,
        sealed=sealed,
        requested_by=requested_by,
        now=issued_at,
        ttl_s=ttl_s,
    )
    signed = sign_envelope(envelope, ring)
    # The audit trail keeps what was asked for, with a keyed fingerprint of each secret
    # instead of the secret, so "was it the same password?" stays answerable.
    detail = {
        "app_id": manifest.id,
        "app_version": manifest.version,
        "app_fingerprint": app.fingerprint,
        "target": target,
        "requested_by": requested_by,
        "inputs": clear,
        "secret_fingerprints": {
            name: secret_fingerprint(ring, value)
            for name, value in values.items()
            if name in password_names and isinstance(value, str)
        },
        "expires_at": envelope.expires_at * 1000,
    }
    keys = store.keys
    stream_fields = {
        name: value.decode() if isinstance(value, bytes) else value
        for name, value in signed.stream_fields().items()
    }
    applied = await store.create_job(
        job_id,
        actor=f"panel:{requested_by}",
        detail=detail,
        effects=[
            IndexJob(keys.jobs_index, issued_at * 1000, job_id),
            AppendEntry(keys.jobs_stream(target), stream_fields),
            *guards,
        ],
    )
    return SubmittedJob(job_id=job_id, event=applied.event, signed=signed)
