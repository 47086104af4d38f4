"""Security layers 2 to 4 of docs/architecture.md §6, and the sandbox environment of layer 5.

Layer 1 (signature, key id, expiry, replay) is decided in `agent.processor` with the snapshot;
these layers run on an envelope whose signature already verified. Each refusal raises
`JobRejected` with the reason code the job fails with. Nothing here executes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from core.errors import FormError, JobRejected, SealError
from core.keyring import KeyRing
from core.manifest.model import Manifest, is_valid_app_id
from core.reasons import Reason
from core.runtime.catalogue import AppEntry, load_app, unsafe_path_problems
from core.sealing import open_inputs
from core.signing import Envelope
from core.validation import to_env, validate_inputs

SANDBOX_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_LANG: Final = "C.UTF-8"

InputValues = dict[str, str | list[str]]


@dataclass(frozen=True, slots=True)
class CheckedJob:
    """A job that passed layers 2 to 4: what to run, and with which values."""

    envelope: Envelope
    app: AppEntry
    manifest: Manifest
    script: Path
    values: InputValues
    secrets: tuple[str, ...]


def check_whitelist(installers_dir: Path, app_id: str) -> AppEntry:
    """Layer 2: the app id is well formed and names a valid app in our own installers."""
    # The pattern excludes '/', '..' and NUL, so the id can never step out of the folder.
    if not is_valid_app_id(app_id):
        raise JobRejected(Reason.NOT_WHITELISTED, f"app id {app_id[:80]!r} is not a valid id")
    folder = installers_dir / app_id
    if not (folder / "manifest.yml").is_file():
        raise JobRejected(Reason.NOT_WHITELISTED, f"no app {app_id!r} on this agent")
    app = load_app(folder)
    if app.unsafe_path:
        # A folder or script others could change is layer 4's refusal, whatever else is
        # wrong with the app: its files cannot be trusted, its manifest included.
        raise JobRejected(
            Reason.UNSAFE_PATH, f"app {app_id!r} is unsafe to run: {'; '.join(app.unsafe_path)}"
        )
    if not app.valid:
        raise JobRejected(
            Reason.NOT_WHITELISTED, f"app {app_id!r} is invalid here: {'; '.join(app.problems)}"
        )
    return app


def check_inputs(
    app: AppEntry, envelope: Envelope, ring: KeyRing
) -> tuple[InputValues, tuple[str, ...]]:
    """Layer 3: same app bytes as the panel saw, and inputs valid under our own manifest."""
    manifest = app.manifest
    assert manifest is not None  # check_whitelist only returns valid apps
    if envelope.app_fingerprint != app.fingerprint:
        raise JobRejected(
            Reason.FINGERPRINT_MISMATCH,
            "the app's manifest or script differs from the one the panel validated against",
        )
    password_names = {spec.name for spec in manifest.inputs if spec.type == "password"}
    if not set(envelope.sealed) <= password_names:
        raise JobRejected(Reason.INVALID_INPUTS, "a sealed value names no password input")
    if password_names & set(envelope.inputs):
        # A password travels sealed or not at all: one in clear was never the panel's doing.
        raise JobRejected(Reason.INVALID_INPUTS, "a password input arrived unsealed")
    try:
        submitted = open_inputs(
            ring,
            envelope.kid,
            job_id=envelope.job_id,
            inputs=envelope.inputs,
            sealed=envelope.sealed,
        )
    except SealError:
        raise JobRejected(Reason.INVALID_INPUTS, "a sealed value does not open") from None
    try:
        values = validate_inputs(manifest, submitted)
    except FormError as error:
        raise JobRejected(
            Reason.INVALID_INPUTS, "inputs do not validate", errors=error.errors
        ) from None
    secrets = tuple(
        value for name, value in values.items() if name in password_names and isinstance(value, str)
    )
    return values, secrets


def check_script_path(app: AppEntry) -> Path:
    """Layer 4: root may run the app's script (`core.runtime.catalogue.unsafe_path_problems`).

    The script is a regular `.sh` file inside the app's folder, neither is a symbolic link,
    and no one but root or the agent's user can change either. Judged again here, on the
    files as they are now, and the resolved path returned.
    """
    manifest = app.manifest
    assert manifest is not None
    problems = unsafe_path_problems(app.folder, manifest.script)
    if problems:
        raise JobRejected(Reason.UNSAFE_PATH, "; ".join(problems))
    return app.folder.resolve(strict=True) / manifest.script


def check_job(installers_dir: Path, envelope: Envelope, ring: KeyRing) -> CheckedJob:
    """Layers 2, 3 and 4 in order."""
    app = check_whitelist(installers_dir, envelope.app_id)
    values, secrets = check_inputs(app, envelope, ring)
    script = check_script_path(app)
    assert app.manifest is not None
    return CheckedJob(
        envelope=envelope,
        app=app,
        manifest=app.manifest,
        script=script,
        values=values,
        secrets=secrets,
    )


def sandbox_environment(
    manifest: Manifest,
    values: Mapping[str, str | list[str]],
    *,
    job_id: str,
    attempt: int,
    home: str,
    target: str | None = None,
) -> dict[str, str]:
    """Layer 5's environment, built from scratch: never the agent's own variables or keys.

    PATH, LANG, HOME, the inputs, PROV_JOB_ID, PROV_APP_ID, PROV_ATTEMPT and PROV_TARGET (the
    job's target; left out only by a caller that has no job, such as a test harness).
    """
    env = {"PATH": SANDBOX_PATH, "LANG": SANDBOX_LANG, "HOME": home}
    # Manifest loading refuses input names that would shadow these, so inputs cannot override.
    env.update(to_env(manifest, dict(values)))
    env.update({"PROV_JOB_ID": job_id, "PROV_APP_ID": manifest.id, "PROV_ATTEMPT": str(attempt)})
    if target is not None:
        env["PROV_TARGET"] = target
    return env
