"""The HTML pages against a real Redis: catalogue, install form, job page, history, agents.

Each test builds the panel with `create_app` on its own namespace and a folder of test apps
that covers every input type, a `visible_if` field, an app without an icon and an invalid
app, then talks to it over HTTP as a browser would (form posts, redirects, HTML).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.keyring import KeyRing
from core.reasons import Reason
from core.runtime.settings import PanelSettings
from panel import appkeys
from panel.app import create_app
from panel.web.job_display import FAILURE_HELP
from statemachine.store import EventStore, ScheduleRetry
from tests.agent_support import write_app
from tests.auth_support import bearer, make_token

pytestmark = pytest.mark.redis

SINK = "kitchen-sink"
PASSWORD = "correct-horse-battery"  # a test value that must never be echoed

SINK_INPUTS: list[dict[str, Any]] = [
    {
        "name": "site_name",
        "type": "string",
        "label": "Site name",
        "help": "Lower-case letters only.",
        "required": True,
        "default": "demo",
        "placeholder": "mysite",
        "validation": {
            "pattern": "[a-z]+",
            "pattern_message": "lower-case letters",
            "min_length": 2,
            "max_length": 20,
        },
    },
    {"name": "notes", "type": "text", "label": "Notes", "validation": {"max_length": 500}},
    {
        "name": "workers",
        "type": "integer",
        "label": "Workers",
        "default": 2,
        "validation": {"min": 1, "max": 16},
    },
    {
        "name": "ratio",
        "type": "number",
        "label": "Ratio",
        "default": 0.5,
        "validation": {"min": 0, "max": 1},
    },
    {"name": "http_port", "type": "port", "label": "HTTP port", "default": 8080},
    {"name": "enable_tls", "type": "boolean", "label": "Enable TLS", "default": "false"},
    {
        "name": "tls_port",
        "type": "port",
        "label": "TLS port",
        "required": True,
        "visible_if": {"enable_tls": "true"},
        "validation": {"min": 1024, "max": 9999},
    },
    {
        "name": "admin_password",
        "type": "password",
        "label": "Admin password",
        "required": True,
        "validation": {"min_length": 12},
    },
    {"name": "contact", "type": "email", "label": "Contact"},
    {"name": "server_host", "type": "hostname", "label": "Server host"},
    {"name": "homepage", "type": "url", "label": "Homepage"},
    {
        "name": "flavour",
        "type": "select",
        "label": "Flavour",
        "required": True,
        "default": "a",
        "validation": {"allowed_values": {"a": "Alpha", "b": "Beta"}},
    },
    {
        "name": "modules",
        "type": "multiselect",
        "label": "Modules",
        "default": ["x"],
        "validation": {"allowed_values": ["x", "y", "z"]},
    },
]

ICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><rect width="8" height="8"/></svg>'
)

GOOD_FORM: dict[str, Any] = {
    "site_name": "shop",
    "notes": "line one\r\nline two",
    "workers": "4",
    "ratio": "0.25",
    "http_port": "8081",
    "enable_tls": "false",
    "admin_password": PASSWORD,
    "contact": "ops@example.com",
    "server_host": "shop.example.com",
    "homepage": "https://shop.example.com/",
    "flavour": "b",
    "modules": ["x", "z"],
    "_target": "local",
}


def form_data(**changes: Any) -> list[tuple[str, str]]:
    """GOOD_FORM with changes, as an ordered list of (name, value) pairs like a browser sends."""
    values = {**GOOD_FORM, **changes}
    pairs: list[tuple[str, str]] = []
    for name, value in values.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, item))
    return pairs


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    root = tmp_path / "installers"
    root.mkdir()
    sink = write_app(
        root,
        SINK,
        "echo installing",
        inputs=SINK_INPUTS,
        name="Kitchen Sink",
        description="Every input type there is.",
        category="web",
        icon="icon.svg",
    )
    (sink / "icon.svg").write_bytes(ICON)
    write_app(
        root,
        "plain-db",
        "echo db",
        name="Plain DB",
        description="A tiny key-value database.",
        category="database",
    )
    broken = root / "broken-app"
    broken.mkdir()
    (broken / "manifest.yml").write_text(
        yaml.safe_dump(
            {"id": "broken-app", "name": "Broken", "version": "1", "colour": "blue", "inputs": []}
        )
    )
    (broken / "install.sh").write_text("#!/bin/sh\n")
    return root


def settings_for(redis_url: str, namespace: str, installers: Path, tmp_path: Path) -> PanelSettings:
    return PanelSettings.from_env(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": namespace,
            "PROV_INSTALLERS_DIR": str(installers),
            "PROV_HMAC_KEYS_FILE": str(tmp_path / "hmac.keys"),
        }
    )


@pytest.fixture
async def panel(
    redis_url: str, namespace: str, installers: Path, tmp_path: Path, ring: KeyRing
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(settings_for(redis_url, namespace, installers, tmp_path), ring=ring)
    token = await make_token(redis_url, namespace)
    async with TestClient(TestServer(app), headers=bearer(token)) as client:
        yield client


def store_of(client: TestClient[web.Request, web.Application]) -> EventStore:
    return client.app[appkeys.JOBS].store


async def page(client: TestClient[web.Request, web.Application], path: str) -> tuple[int, str]:
    response = await client.get(path)
    return response.status, await response.text()


def element(html: str, tag: str, element_id: str) -> str:
    """The opening tag of the element with this id (attributes in document order)."""
    match = re.search(rf'<{tag}\b[^>]*\bid="{re.escape(element_id)}"[^>]*>', html)
    assert match, f"no <{tag} id={element_id}> in the page"
    return match.group(0)


def wrapper(html: str, name: str) -> str:
    """The field wrapper's HTML of input `name`, up to the next wrapper."""
    start = html.index(f'data-field="{name}"')
    end = html.find("data-field=", start + 10)
    return html[start : end if end != -1 else len(html)]


async def submit_form(
    client: TestClient[web.Request, web.Application], app_id: str = SINK, **changes: Any
) -> Any:
    return await client.post(
        f"/apps/{app_id}/install", data=form_data(**changes), allow_redirects=False
    )


async def submitted_job(client: TestClient[web.Request, web.Application], **changes: Any) -> str:
    response = await submit_form(client, **changes)
    assert response.status == 303, await response.text()
    return str(response.headers["Location"]).rsplit("/", 1)[1]


# --- layout and catalogue --------------------------------------------------------------------


async def test_every_page_has_the_layout_with_skip_link_nav_main_and_no_inline_script(panel):
    job_id = await submitted_job(panel)
    for path in ("/", f"/apps/{SINK}", "/jobs", f"/jobs/{job_id}", "/agents"):
        status, html = await page(panel, path)
        assert status == 200, path
        assert 'href="#main"' in html and '<main id="main"' in html
        assert 'aria-label="Main"' in html and ">Catalogue<" in html and ">Agents<" in html
        assert "<footer" in html and "Provision" in html
        assert "<script>" not in html and " style=" not in html
        assert not re.search(r"\son[a-z]+=", html), path
        for script in re.findall(r"<script\b[^>]*>", html):
            assert 'src="/static/js/' in script or 'type="application/json"' in script


async def test_catalogue_lists_every_app_with_name_version_description_and_category(panel):
    status, html = await page(panel, "/")
    assert status == 200
    assert "Kitchen Sink" in html and "Every input type there is." in html
    assert "Plain DB" in html and "A tiny key-value database." in html
    assert "v1.0.0" in html and ">web<" in html and ">database<" in html
    assert f'href="/apps/{SINK}"' in html


async def test_catalogue_shows_an_invalid_app_with_its_reasons_and_no_link_to_a_form(panel):
    _, html = await page(panel, "/")
    card = html[html.index('data-app-id="broken-app"') :]
    card = card[: card.index("</li>")]
    assert "Invalid" in card and "unknown field" in card
    assert 'href="/apps/broken-app"' not in html


async def test_catalogue_shows_the_icon_when_there_is_one_and_a_letter_avatar_otherwise(panel):
    _, html = await page(panel, "/")
    sink = html[html.index(f'data-app-id="{SINK}"') :]
    assert f'src="/apps/{SINK}/icon"' in sink[: sink.index("</li>")]
    plain = html[html.index('data-app-id="plain-db"') :]
    plain = plain[: plain.index("</li>")]
    assert "avatar" in plain and ">P<" in plain and "/icon" not in plain


async def test_catalogue_search_matches_name_id_or_description_and_stays_in_the_form(panel):
    _, html = await page(panel, "/?q=key-value")
    assert "Plain DB" in html and "Kitchen Sink" not in html
    assert 'value="key-value"' in html
    _, html = await page(panel, "/?q=kitchen")
    assert "Kitchen Sink" in html and "Plain DB" not in html
    _, html = await page(panel, "/?q=nothing-like-this")
    assert "No app matches" in html


async def test_catalogue_category_filter_shows_only_that_category_and_keeps_it_selected(panel):
    _, html = await page(panel, "/?category=database")
    assert "Plain DB" in html and "Kitchen Sink" not in html
    assert '<option value="database" selected>' in html


# --- icons -----------------------------------------------------------------------------------


async def test_icon_route_serves_the_svg_with_a_csp_that_forbids_scripts(panel):
    response = await panel.get(f"/apps/{SINK}/icon")
    assert response.status == 200
    assert await response.read() == ICON
    assert response.headers["Content-Type"] == "image/svg+xml"
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'"
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/apps/plain-db/icon",
        "/apps/..%2F..%2Fetc/icon",
        "/apps/%2E%2E/icon",
        "/apps/..%2Fkitchen-sink/icon",
        "/apps/KITCHEN-SINK/icon",
        "/apps/linked/icon",
    ],
)
async def test_icon_route_serves_nothing_for_missing_symlinked_or_hostile_apps(
    panel, installers, tmp_path, path
):
    secret = tmp_path / "secret.svg"
    secret.write_text("<svg>secret</svg>")
    linked = write_app(installers, "linked", "true", icon="icon.svg")
    (linked / "icon.svg").symlink_to(secret)
    response = await panel.get(path)
    assert response.status == 404
    assert "secret" not in await response.text()


# --- the form --------------------------------------------------------------------------------


async def test_form_renders_one_control_per_input_type_with_its_attributes(panel):
    status, html = await page(panel, f"/apps/{SINK}")
    assert status == 200
    site = element(html, "input", "field-site_name")
    for attribute in (
        'type="text"',
        'name="site_name"',
        "required",
        'placeholder="mysite"',
        'value="demo"',
        'pattern="[a-z]+"',
        'minlength="2"',
        'maxlength="20"',
        'aria-describedby="field-site_name-help"',
    ):
        assert attribute in site, attribute
    assert '<label for="field-site_name">' in html
    assert 'id="field-site_name-help">Lower-case letters only.' in html
    assert '<textarea id="field-notes" name="notes"' in html
    assert 'maxlength="500"' in element(html, "textarea", "field-notes")
    workers = element(html, "input", "field-workers")
    assert all(a in workers for a in ('type="number"', 'min="1"', 'max="16"', 'step="1"'))
    ratio = element(html, "input", "field-ratio")
    assert all(a in ratio for a in ('type="number"', 'min="0"', 'max="1"', 'step="any"'))
    assert 'value="0.5"' in ratio
    port = element(html, "input", "field-http_port")
    assert all(a in port for a in ('min="1"', 'max="65535"', 'value="8080"'))
    tls = element(html, "input", "field-tls_port")
    assert 'min="1024"' in tls and 'max="9999"' in tls
    assert '<input type="hidden" name="enable_tls" value="false">' in html
    checkbox = element(html, "input", "field-enable_tls")
    assert 'type="checkbox"' in checkbox and 'value="true"' in checkbox
    assert "checked" not in checkbox
    password = element(html, "input", "field-admin_password")
    assert 'type="password"' in password and 'autocomplete="new-password"' in password
    assert "value=" not in password and 'minlength="12"' in password
    assert 'type="email"' in element(html, "input", "field-contact")
    host = element(html, "input", "field-server_host")
    assert 'type="text"' in host and "pattern=" in host
    assert 'type="url"' in element(html, "input", "field-homepage")
    assert '<select id="field-flavour" name="flavour"' in html
    assert '<option value="b">Beta</option>' in html
    assert '<option value="a" selected>Alpha</option>' in html
    modules = wrapper(html, "modules")
    assert "<fieldset" in modules and "<legend>Modules" in modules
    assert re.search(r'id="field-modules-0" name="modules" value="x" checked', modules)
    assert 'value="y">' in modules and 'value="z">' in modules


async def test_form_warns_that_the_installer_runs_as_root_and_offers_a_target_field(panel):
    _, html = await page(panel, f"/apps/{SINK}")
    assert "The installer runs as root on the target host." in html
    advanced = html[html.index('<details class="advanced"') :]
    assert 'name="_target" value="local"' in advanced[: advanced.index("</details>")]
    assert 'src="/static/js/form.js' in html


async def test_a_visible_if_field_starts_hidden_and_disabled_with_its_rule_for_the_script(panel):
    _, html = await page(panel, f"/apps/{SINK}")
    tls = wrapper(html, "tls_port")
    assert "data-visible-if=" in tls and " hidden>" in tls
    rule = re.search(r'data-visible-if="([^"]*)"', tls)
    assert rule and json.loads(unescape(rule.group(1))) == {"enable_tls": ["true"]}
    assert "disabled" in element(html, "input", "field-tls_port")
    assert "disabled" not in element(html, "input", "field-http_port")


async def test_every_invalid_field_gets_its_message_next_to_it_and_in_the_summary(panel):
    response = await submit_form(
        panel,
        site_name="A!",
        workers="99",
        ratio="lots",
        http_port="70000",
        admin_password="short",
        contact="not-an-email",
        server_host="bad host",
        homepage="ftp://example.com",
        flavour="c",
        modules=["w"],
        enable_tls="true",
        tls_port="",
    )
    assert response.status == 422
    html = await response.text()
    summary = html[html.index('id="error-summary"') :]
    summary = summary[: summary.index("</div>")]
    assert 'role="alert"' in element(html, "div", "error-summary")
    bad = (
        "site_name",
        "workers",
        "ratio",
        "http_port",
        "admin_password",
        "contact",
        "server_host",
        "homepage",
        "flavour",
        "modules",
        "tls_port",
    )
    for name in bad:
        anchor = f"#field-{name}-0" if name == "modules" else f"#field-{name}"
        assert f'href="{anchor}"' in summary, name
        assert f'id="field-{name}-error"' in wrapper(html, name), name
    assert "Must be at most 16." in wrapper(html, "workers")
    assert "Required." in wrapper(html, "tls_port")
    assert "Must be at least 12 characters long." in wrapper(html, "admin_password")
    control = element(html, "input", "field-workers")
    assert 'aria-invalid="true"' in control
    assert 'aria-describedby="field-workers-error"' in control
    assert f"There are {len(bad)} problems" in summary


async def test_typed_values_are_kept_after_an_error_but_the_password_is_never_echoed(panel):
    response = await submit_form(panel, workers="99", notes="keep <me>", modules=["y"])
    assert response.status == 422
    html = await response.text()
    assert PASSWORD not in html
    assert "value=" not in element(html, "input", "field-admin_password")
    assert 'value="shop"' in element(html, "input", "field-site_name")
    assert 'value="99"' in element(html, "input", "field-workers")
    assert "keep &lt;me&gt;</textarea>" in html
    assert '<option value="b" selected>Beta</option>' in html
    modules = wrapper(html, "modules")
    assert re.search(r'value="y" checked', modules) and not re.search(r'value="x" checked', modules)
    assert "passwords are not kept" in html


async def test_a_visible_if_field_that_is_hidden_is_not_required(panel, redis_client, redis_keys):
    job_id = await submitted_job(panel, enable_tls="false", tls_port=None)
    job = await panel.app[appkeys.JOBS].get(job_id)
    assert job is not None and job["state"] == "queued"
    inputs = await panel.app[appkeys.JOBS].submitted_inputs(job_id)
    assert "tls_port" not in inputs


async def test_a_visible_if_field_that_is_shown_is_required(panel):
    response = await submit_form(panel, enable_tls=["false", "true"], tls_port="")
    assert response.status == 422
    html = await response.text()
    assert 'id="field-tls_port-error"' in html
    assert " hidden>" not in wrapper(html, "tls_port")
    assert "checked" in element(html, "input", "field-enable_tls")


async def test_successful_submit_redirects_303_to_the_job_page_with_normalised_inputs(panel):
    response = await submit_form(panel, enable_tls=["false", "true"], tls_port="08443")
    assert response.status == 303
    location = response.headers["Location"]
    assert re.fullmatch(r"/jobs/[0-9A-Z]{26}", location)
    job_id = location.rsplit("/", 1)[1]
    job = await panel.app[appkeys.JOBS].get(job_id)
    assert job is not None and job["app_id"] == SINK and job["target"] == "local"
    inputs = await panel.app[appkeys.JOBS].submitted_inputs(job_id)
    assert inputs["enable_tls"] == "true" and inputs["tls_port"] == "8443"
    assert inputs["modules"] == ["x", "z"] and inputs["notes"] == "line one\r\nline two"
    assert "admin_password" not in inputs
    status, html = await page(panel, location)
    assert status == 200 and job_id in html


async def test_an_unticked_boolean_sends_only_its_hidden_false(panel):
    job_id = await submitted_job(panel, enable_tls="false")
    inputs = await panel.app[appkeys.JOBS].submitted_inputs(job_id)
    assert inputs["enable_tls"] == "false"


async def test_a_single_value_field_sent_twice_is_refused(panel):
    response = await submit_form(panel, workers=["3", "4"])
    assert response.status == 422
    assert "Was sent more than once." in wrapper(await response.text(), "workers")


async def test_an_invalid_target_is_shown_in_the_open_advanced_section(panel):
    response = await submit_form(panel, _target="Not A Host!")
    assert response.status == 422
    html = await response.text()
    assert '<details class="advanced" open>' in html
    assert 'id="field-target-error"' in html and 'href="#field-target"' in html
    assert 'value="Not A Host!"' in element(html, "input", "field-target")


async def test_unknown_app_is_a_404_page(panel):
    for path in ("/apps/no-such-app", "/apps/..%2F..%2Fetc"):
        status, html = await page(panel, path)
        assert status == 404 and "No such app" in html and '<main id="main"' in html
    response = await panel.post("/apps/no-such-app/install", data={})
    assert response.status == 404


async def test_invalid_app_form_page_says_why_and_install_answers_409(panel):
    status, html = await page(panel, "/apps/broken-app")
    assert status == 200
    assert "This app cannot be installed" in html and "unknown field" in html
    assert '<form class="install-form"' not in html
    response = await panel.post("/apps/broken-app/install", data={"x": "1"})
    assert response.status == 409
    assert "This app cannot be installed" in await response.text()


# --- the job page ----------------------------------------------------------------------------


async def test_job_page_shows_state_timeline_and_inputs_but_never_secret_fingerprints(panel):
    job_id = await submitted_job(panel)
    status, html = await page(panel, f"/jobs/{job_id}")
    assert status == 200
    assert 'id="job-badge">Queued<' in html
    assert f'data-stream-url="/api/jobs/{job_id}/stream"' in html
    assert 'class="event" data-event-id=' in html and "submit" in html
    assert "panel:local" in html
    table = html[html.index('<table class="inputs-table">') :]
    table = table[: table.index("</table>")]
    assert "<code>site_name</code></th><td>shop</td>" in table
    assert "<code>admin_password</code></th><td>(set)</td>" in table
    events = await panel.app[appkeys.JOBS].events(job_id)
    fingerprint = events[0].detail["secret_fingerprints"]["admin_password"]
    assert fingerprint not in html and PASSWORD not in html
    assert re.search(r'<time datetime="[0-9T:.\-]+Z" data-epoch-ms="\d+">', html)
    assert 'id="job-texts">' in html and 'src="/static/js/job.js' in html
    assert f'action="/jobs/{job_id}/cancel"' in html
    assert f'href="/apps/{SINK}?from={job_id}"' in html


async def test_a_failed_job_says_why_in_plain_words_and_what_to_do(panel):
    job_id = await submitted_job(panel)
    await store_of(panel).transition(
        job_id, "fail", actor="agent:a1", detail={"reason": Reason.INSTALL_ERROR, "exit_code": 2}
    )
    _, html = await page(panel, f"/jobs/{job_id}")
    sentence, hint = FAILURE_HELP[Reason.INSTALL_ERROR]
    assert 'id="job-badge">Failed<' in html
    failure = element(html, "div", "failure-info")
    assert "hidden" not in failure
    assert sentence in html and hint in unescape(html)
    assert 'id="failure-code">install_error<' in html
    assert 'id="cancel-form"' not in html


async def test_a_job_waiting_to_retry_shows_the_attempt_and_a_countdown(panel):
    job_id = await submitted_job(panel)
    store = store_of(panel)
    for trigger in ("verify", "validate"):
        await store.transition(job_id, trigger, actor="agent:a1")
    await store.transition(job_id, "start", actor="agent:a1", attempt=1)
    due = int(time.time() * 1000) + 20_000
    await store.transition(
        job_id,
        "retry",
        actor="agent:a1",
        detail={"reason": "install_error", "exit_code": 2, "delay_s": 20, "next_retry_at": due},
        effects=[ScheduleRetry(store.keys.retry, due, job_id)],
    )
    _, html = await page(panel, f"/jobs/{job_id}")
    assert 'id="job-badge">Waiting to retry<' in html
    assert "hidden" not in element(html, "p", "retry-info")
    assert f'data-countdown-to="{due}"' in html
    assert 'id="retry-attempt">1<' in html


def test_every_reason_code_has_a_sentence_and_a_hint():
    for reason in Reason:
        sentence, hint = FAILURE_HELP[reason]
        assert sentence.endswith(".") and hint.endswith(".")


async def test_unknown_and_hostile_job_ids_are_404_pages(panel):
    for path in (
        "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/jobs/not-a-job",
        "/jobs/..%2F..%2Fetc%2Fpasswd",
        "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/log.txt",
        "/jobs/%3Cscript%3E/log.txt",
    ):
        status, html = await page(panel, path)
        assert status == 404, path
        assert "No such job" in html and "<script>" not in html
    response = await panel.post("/jobs/not-a-job/cancel")
    assert response.status == 404


async def test_cancel_fails_a_queued_job_and_redirects_back_to_its_page(panel):
    job_id = await submitted_job(panel)
    response = await panel.post(f"/jobs/{job_id}/cancel", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == f"/jobs/{job_id}"
    job = await panel.app[appkeys.JOBS].get(job_id)
    assert job is not None and job["state"] == "failed" and job["reason"] == "cancelled"
    _, html = await page(panel, f"/jobs/{job_id}")
    assert "cancelled by an operator" in html and 'id="cancel-form"' not in html
    again = await panel.post(f"/jobs/{job_id}/cancel", allow_redirects=False)
    assert again.status == 303


async def test_run_again_prefills_the_form_from_the_job_but_not_the_password(panel):
    job_id = await submitted_job(panel, site_name="again", workers="7", modules=["y", "z"])
    status, html = await page(panel, f"/apps/{SINK}?from={job_id}")
    assert status == 200
    assert f'href="/jobs/{job_id}"' in html and "enter them again" in html
    assert 'value="again"' in element(html, "input", "field-site_name")
    assert 'value="7"' in element(html, "input", "field-workers")
    modules = wrapper(html, "modules")
    assert re.search(r'value="y" checked', modules) and not re.search(r'value="x" checked', modules)
    assert "value=" not in element(html, "input", "field-admin_password")
    assert PASSWORD not in html


async def test_run_again_with_a_job_of_another_app_or_a_bad_id_shows_the_defaults(panel):
    job_id = await submitted_job(panel, site_name="again")
    for query in (f"?from={job_id}", "?from=..%2Fx", "?from=01ARZ3NDEKTSV4RRFFQ69G5FAV"):
        path = ("/apps/plain-db" if query == f"?from={job_id}" else f"/apps/{SINK}") + query
        status, html = await page(panel, path)
        assert status == 200 and "Filled in from job" not in html


async def test_log_txt_downloads_the_whole_log_as_a_text_attachment(panel, redis_client):
    job_id = await submitted_job(panel)
    log_key = store_of(panel).keys.job_log(job_id)
    for stream, line, attempt in (
        ("stdout", "hello", 1),
        ("stderr", "oops <b>", 1),
        ("stdout", "second try", 2),
    ):
        await redis_client.xadd(log_key, {"stream": stream, "line": line, "attempt": attempt})
    response = await panel.get(f"/jobs/{job_id}/log.txt")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="job-{job_id}.log.txt"'
    )
    assert await response.text() == (
        "----- attempt 1 -----\nhello\n[stderr] oops <b>\n----- attempt 2 -----\nsecond try\n"
    )
    _, html = await page(panel, f"/jobs/{job_id}")
    assert 'class="log-line log-stderr"' in html and "oops &lt;b&gt;" in html
    assert html.count('class="log-sep"') == 2
    assert f'href="/jobs/{job_id}/log.txt" download' in html
    assert 'id="log-follow" checked' in html


# --- history and agents ----------------------------------------------------------------------


async def test_jobs_page_shows_an_empty_state_before_any_job(panel):
    status, html = await page(panel, "/jobs")
    assert status == 200 and "No jobs yet" in html


async def test_jobs_page_filters_by_app_state_target_and_user_kept_in_the_query(panel):
    first = await submitted_job(panel)
    second = await submitted_job(panel)
    await panel.post(f"/jobs/{first}/cancel")
    _, html = await page(panel, "/jobs?state=failed")
    assert first in html and second not in html
    assert '<option value="failed" selected>' in html
    _, html = await page(panel, f"/jobs?app={SINK}&state=queued&target=local&user=local")
    assert second in html and first not in html
    _, html = await page(panel, "/jobs?user=somebody-else")
    assert "No job matches these filters" in html
    assert 'value="somebody-else"' in element(html, "input", "f-user")


async def test_jobs_page_filters_by_utc_day(panel):
    job_id = await submitted_job(panel)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    _, html = await page(panel, f"/jobs?since={today}&until={today}")
    assert job_id in html and f'value="{today}"' in element(html, "input", "f-since")
    _, html = await page(panel, "/jobs?until=2001-01-01")
    assert job_id not in html
    _, html = await page(panel, "/jobs?since=not-a-date")
    assert job_id in html


async def test_jobs_page_paginates_with_an_older_link(panel, monkeypatch):
    monkeypatch.setattr("panel.web.pages.JOBS_PER_PAGE", 2)
    ids = [await submitted_job(panel) for _ in range(3)]
    _, html = await page(panel, f"/jobs?app={SINK}")
    older = re.search(r'<a class="button" href="([^"]+)" rel="next">Older', html)
    assert older, "no Older link"
    assert ids[2] in html and ids[1] in html and ids[0] not in html
    link = unescape(older.group(1))
    assert f"app={SINK}" in link and "cursor=" in link
    _, html = await page(panel, link)
    assert ids[0] in html and ids[2] not in html
    assert 'rel="next"' not in html and "Newest" in html


async def test_agents_page_lists_heartbeats_and_marks_silent_ones_stale(panel, redis_client):
    now = int(time.time() * 1000)
    agents_key = store_of(panel).keys.agents
    beat = {
        "host": "box1",
        "pid": 4242,
        "version": "0.1.0",
        "target": "local",
        "apps": [SINK, "plain-db"],
        "running": ["01ARZ3NDEKTSV4RRFFQ69G5FAV"],
    }
    await redis_client.hset(
        agents_key,
        mapping={
            "fresh-agent": json.dumps({**beat, "agent_id": "fresh-agent", "last_seen": now}),
            "old-agent": json.dumps({**beat, "agent_id": "old-agent", "last_seen": now - 60_000}),
        },
    )
    status, html = await page(panel, "/agents")
    assert status == 200
    assert "fresh-agent" in html and "old-agent" in html and "box1" in html and "4242" in html
    assert f"{SINK}, plain-db" in html and 'href="/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"' in html
    fresh = html[html.index("fresh-agent") :]
    assert "Alive" in fresh[: fresh.index("</tr>")]
    old = html[html.index("old-agent") :]
    assert "Stale" in old[: old.index("</tr>")] and "1 min ago" in old[: old.index("</tr>")]


async def test_agents_page_shows_an_empty_state_without_agents(panel):
    _, html = await page(panel, "/agents")
    assert "No agent is running" in html


# --- Redis down ------------------------------------------------------------------------------


async def test_pages_answer_a_503_page_when_redis_is_down(installers, tmp_path, ring, namespace):
    missing = tmp_path / "no-redis.sock"
    settings = settings_for(f"unix://{missing}", namespace, installers, tmp_path)
    app = create_app(settings, ring=ring)
    # With credentials to check, the panel needs Redis (without any, it sends to /login).
    async with TestClient(TestServer(app), headers=bearer("prov_some-token")) as client:
        for path in ("/jobs", "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/agents"):
            status, html = await page(client, path)
            assert status == 503, path
            assert "The job store is unavailable" in html and '<main id="main"' in html
            assert "Try again" in html
        response = await submit_form(client)
        assert response.status == 503
        # Even the catalogue needs Redis now: it holds the users that may see it.
        status, html = await page(client, "/")
        assert status == 503 and "The job store is unavailable" in html
