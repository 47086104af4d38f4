"""The JSON API through aiohttp's test client, on a real Redis: shapes, 4xx answers, 503."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from core.runtime.redis_launcher import start_redis
from core.runtime.settings import PanelSettings
from panel.app import create_app
from tests.agent_support import make_ring, write_app
from tests.auth_support import bearer, make_token

pytestmark = pytest.mark.redis

SECRET = "api-Canary-pa55word-77"


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    folder = tmp_path / "installers"
    write_app(
        folder,
        "hello",
        "exit 0",
        inputs=[
            {"name": "port", "type": "port", "default": 8080},
            {"name": "admin_password", "type": "password"},
            {
                "name": "features",
                "type": "multiselect",
                "validation": {"allowed_values": ["a", "b", "c"]},
            },
        ],
    )
    broken = folder / "broken"
    broken.mkdir()
    (broken / "manifest.yml").write_text("id: broken\nname: Broken\n")  # no version, no script
    return folder


def settings_for(tmp_path: Path, installers: Path, redis_url: str, namespace: str) -> PanelSettings:
    return PanelSettings.from_env(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": namespace,
            "PROV_INSTALLERS_DIR": str(installers),
            "PROV_HMAC_KEYS_FILE": str(tmp_path / "hmac.keys"),
        }
    )


@pytest.fixture
async def client(tmp_path, installers, redis_url, namespace):
    ring = make_ring(tmp_path / "hmac.keys")
    app = create_app(settings_for(tmp_path, installers, redis_url, namespace), ring=ring)
    token = await make_token(redis_url, namespace)
    async with TestClient(TestServer(app), headers=bearer(token)) as test_client:
        yield test_client


async def submit(client, **body) -> dict:
    response = await client.post("/api/install", json={"app_id": "hello", **body})
    assert response.status == 201, await response.text()
    return await response.json()


async def test_the_catalogue_lists_valid_and_invalid_apps_with_reasons(client):
    response = await client.get("/api/apps")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    apps = {app["id"]: app for app in (await response.json())["apps"]}
    assert apps["hello"]["valid"] is True
    assert apps["hello"]["fingerprint"].startswith("sha256:")
    assert apps["broken"]["valid"] is False
    assert apps["broken"]["problems"]


async def test_one_app_describes_its_inputs_without_any_password_default(client):
    body = await (await client.get("/api/apps/hello")).json()
    inputs = {spec["name"]: spec for spec in body["inputs"]}
    assert inputs["port"]["default"] == "8080"
    assert inputs["admin_password"]["default"] is None
    assert [v["value"] for v in inputs["features"]["validation"]["allowed_values"]] == [
        "a",
        "b",
        "c",
    ]


@pytest.mark.parametrize("app_id", ["nope", "..%2F..%2Fetc", "HELLO", "a" * 300])
async def test_an_unknown_or_hostile_app_id_is_a_404(client, app_id):
    response = await client.get(f"/api/apps/{app_id}")
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_a_valid_submission_is_queued_with_a_ulid(client):
    body = await submit(client, inputs={"port": 8081, "features": ["b", "a"]})
    assert body["state"] == "queued"
    assert len(body["job_id"]) == 26
    job = await (await client.get(f"/api/jobs/{body['job_id']}")).json()
    assert job["state"] == "queued"
    assert job["reason"] is None and job["exit_code"] is None and job["next_retry_at"] is None
    assert job["cancel_requested"] is False
    assert job["requested_by"] == "local"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "not valid JSON"),
        (b'{"app_id": "hello", "app_id": "hello"}', "duplicate key"),
        (b'{"app_id": "hello", "inputs": {"port": NaN}}', "NaN"),
        (b'["hello"]', "must be a JSON object"),
        (b'{"app_id": "hello", "inputs": []}', "inputs must be an object"),
        (b'{"app_id": 5}', "app_id must be a string"),
        (b'{"app_id": "hello", "extra": 1}', "unknown field"),
        (b'{"app_id": "hello", "target": 7}', "target must be a string"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "JSON"),
    ],
)
async def test_a_malformed_body_is_a_400_with_the_reason(client, raw, problem):
    response = await client.post(
        "/api/install", data=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "malformed"
    assert problem in body["message"]


async def test_a_value_over_64_kib_is_a_400(client):
    response = await client.post(
        "/api/install", json={"app_id": "hello", "inputs": {"admin_password": "x" * 70_000}}
    )
    assert response.status == 400
    assert "64 KiB" in (await response.json())["message"]
    assert "xxxx" not in await response.text()


async def test_a_body_over_1_mib_is_a_413(client):
    response = await client.post(
        "/api/install",
        # A file-like body: aiohttp warns against sending over 1 MiB of raw bytes at once.
        data=io.BytesIO(b'{"app_id": "' + b"a" * (1024 * 1024 + 10) + b'"}'),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"


async def test_an_unknown_app_is_a_404_and_an_invalid_one_a_409(client):
    assert (await client.post("/api/install", json={"app_id": "nope"})).status == 404
    response = await client.post("/api/install", json={"app_id": "broken"})
    assert response.status == 409
    assert "invalid" in (await response.json())["message"]


async def test_invalid_inputs_are_a_422_naming_every_bad_field(client):
    response = await client.post(
        "/api/install",
        json={
            "app_id": "hello",
            "inputs": {"port": "99999", "features": ["z"], "admin_password": 5, "evil": "1"},
            "target": "Not A Host",
        },
    )
    assert response.status == 422
    body = await response.json()
    assert body["error"] == "invalid_inputs"
    assert set(body["errors"]) == {"port", "features", "admin_password", "evil", "target"}


async def test_listing_filters_and_pages_with_a_cursor(client):
    ids = [(await submit(client, inputs={"port": 9000 + n}))["job_id"] for n in range(5)]
    first = await (await client.get("/api/jobs?limit=2")).json()
    assert [job["job_id"] for job in first["jobs"]] == ids[::-1][:2]
    second = await (await client.get(f"/api/jobs?limit=2&cursor={first['next_cursor']}")).json()
    assert [job["job_id"] for job in second["jobs"]] == ids[::-1][2:4]
    queued = await (await client.get("/api/jobs?state=queued&app=hello&user=local")).json()
    assert len(queued["jobs"]) == 5
    none = await (await client.get("/api/jobs?state=failed")).json()
    assert none == {"jobs": [], "next_cursor": None}


@pytest.mark.parametrize(
    "query", ["state=bogus", "since=yesterday", "limit=0", "limit=201", "until=1e9"]
)
async def test_a_malformed_listing_filter_is_a_400(client, query):
    response = await client.get(f"/api/jobs?{query}")
    assert response.status == 400


async def test_events_and_log_of_a_job(client):
    job_id = (await submit(client))["job_id"]
    events = (await (await client.get(f"/api/jobs/{job_id}/events")).json())["events"]
    assert [(e["trigger"], e["src"], e["dst"]) for e in events] == [("submit", "", "queued")]
    assert isinstance(events[0]["detail"], dict)
    assert (await (await client.get(f"/api/jobs/{job_id}/log")).json()) == {"lines": []}
    assert (await client.get(f"/api/jobs/{job_id}/log?after=x")).status == 400


@pytest.mark.parametrize("job_id", ["01ARZ3NDEKTSV4RRFFQ69G5FAV", "nope", "..%2Fx", "0" * 26])
@pytest.mark.parametrize("suffix", ["", "/events", "/log", "/stream"])
async def test_an_unknown_or_hostile_job_id_is_a_404(client, job_id, suffix):
    response = await client.get(f"/api/jobs/{job_id}{suffix}")
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_cancel_fails_a_queued_job_and_a_second_cancel_is_a_409(client):
    job_id = (await submit(client))["job_id"]
    response = await client.post(f"/api/jobs/{job_id}/cancel")
    assert response.status == 202
    assert await response.json() == {"job_id": job_id, "state": "failed"}
    job = await (await client.get(f"/api/jobs/{job_id}")).json()
    assert (job["state"], job["reason"], job["cancel_requested"]) == ("failed", "cancelled", True)
    again = await client.post(f"/api/jobs/{job_id}/cancel")
    assert again.status == 409
    assert (await client.post("/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel")).status == 404


async def test_a_password_is_never_returned_by_any_api_answer(client):
    job_id = (await submit(client, inputs={"admin_password": SECRET}))["job_id"]
    answers = [
        await (await client.get(path)).text()
        for path in (
            f"/api/jobs/{job_id}",
            f"/api/jobs/{job_id}/events",
            "/api/jobs",
            f"/api/jobs/{job_id}/log",
        )
    ]
    assert all(SECRET not in answer for answer in answers)
    events = json.loads(answers[1])["events"]
    fingerprint = events[0]["detail"]["secret_fingerprints"]["admin_password"]
    assert fingerprint.startswith("hmac-sha256:")
    assert "admin_password" not in events[0]["detail"]["inputs"]


async def test_health_readiness_and_metrics(client):
    assert (await client.get("/healthz")).status == 200
    assert await (await client.get("/readyz")).json() == {"status": "ok", "redis": "ok"}
    await submit(client)
    metrics = await (await client.get("/metrics")).text()
    assert 'provision_submissions_total{app_id="hello",outcome="accepted"} 1.0' in metrics
    assert 'provision_jobs{state="queued"}' in metrics
    assert 'route="/api/install"' in metrics


async def test_the_openapi_document_is_served(client):
    document = await (await client.get("/api/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert "/api/install" in document["paths"]


async def test_an_unreachable_redis_is_a_503_and_nothing_is_half_written(
    tmp_path, installers, namespace
):
    server = start_redis(tmp_path / "redis")
    ring = make_ring(tmp_path / "hmac.keys")
    app = create_app(settings_for(tmp_path, installers, server.url, namespace), ring=ring)
    token = await make_token(server.url, namespace)
    try:
        async with TestClient(TestServer(app), headers=bearer(token)) as test_client:
            server.stop()
            response = await test_client.post("/api/install", json={"app_id": "hello"})
            assert response.status == 503
            assert (await response.json())["error"] == "unavailable"
            assert (await test_client.get("/readyz")).status == 503
            assert (await test_client.get("/healthz")).status == 200
            page = await test_client.get("/jobs")
            assert page.status == 503
            assert "unavailable" in (await page.text()).lower()
            server = start_redis(tmp_path / "redis")
            # The client reconnects by itself once Redis is back; nothing of the refused
            # submission exists.
            listing = await test_client.get("/api/jobs")
            assert listing.status == 200
            assert (await listing.json())["jobs"] == []
    finally:
        server.stop()
