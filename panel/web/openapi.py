"""The OpenAPI document of the JSON API, kept next to the handlers it describes.

The property-based API test runs this document against the live panel: every answer must
match it, so it cannot drift from the real behaviour unnoticed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from core import __version__
from statemachine.machine import STATES

_STREAM_ID = {"type": "string", "pattern": r"^[0-9]+-[0-9]+$"}
_JOB_ID = {"type": "string", "pattern": r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$"}
_NULLABLE_INT = {"type": "integer", "nullable": True}
# At most 16 digits: the API refuses longer numbers rather than doing date math on them.
_EPOCH_MS = {"type": "integer", "minimum": 0, "maximum": 9_999_999_999_999_999}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_JOB_PARAM = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_APP_PARAM = {"name": "app_id", "in": "path", "required": True, "schema": {"type": "string"}}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "AppSummary": {
        "type": "object",
        "required": ["id", "name", "valid", "problems"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "string", "nullable": True},
            "description": {"type": "string"},
            "category": {"type": "string", "nullable": True},
            "icon": {"type": "string", "nullable": True},
            "valid": {"type": "boolean"},
            "problems": {"type": "array", "items": {"type": "string"}},
            "fingerprint": {"type": "string", "nullable": True},
        },
    },
    "Input": {
        "type": "object",
        "required": ["name", "type", "label", "required"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string"},
            "label": {"type": "string"},
            "help": {"type": "string"},
            "required": {"type": "boolean"},
            "default": {},
            "placeholder": {"type": "string"},
            "validation": {"type": "object"},
            "visible_if": {"type": "object"},
        },
    },
    "App": {
        "allOf": [
            _ref("AppSummary"),
            {
                "type": "object",
                "properties": {
                    "inputs": {"type": "array", "items": _ref("Input")},
                    "timeout": {"type": "integer"},
                    "idempotent": {"type": "boolean"},
                },
            },
        ]
    },
    "InstallRequest": {
        "type": "object",
        "required": ["app_id"],
        "additionalProperties": False,
        "properties": {
            "app_id": {"type": "string"},
            "inputs": {"type": "object"},
            "target": {"type": "string"},
        },
    },
    "Job": {
        "type": "object",
        "required": [
            "job_id",
            "app_id",
            "target",
            "state",
            "reason",
            "attempt",
            "exit_code",
            "requested_by",
            "created_at",
            "updated_at",
            "next_retry_at",
            "cancel_requested",
        ],
        "properties": {
            "job_id": {"type": "string"},
            "app_id": {"type": "string"},
            "target": {"type": "string"},
            "state": {"type": "string", "enum": list(STATES)},
            "reason": {"type": "string", "nullable": True},
            "attempt": {"type": "integer"},
            "exit_code": _NULLABLE_INT,
            "requested_by": {"type": "string"},
            "created_at": _NULLABLE_INT,
            "updated_at": _NULLABLE_INT,
            "next_retry_at": _NULLABLE_INT,
            "cancel_requested": {"type": "boolean"},
        },
    },
    "Event": {
        "type": "object",
        "required": [
            "v",
            "event_id",
            "job_id",
            "trigger",
            "src",
            "dst",
            "at",
            "actor",
            "attempt",
            "detail",
            "prev",
            "kid",
            "hash",
            "mac",
        ],
        "properties": {
            "v": {"type": "integer"},
            "event_id": {"type": "string"},
            "job_id": {"type": "string"},
            "trigger": {"type": "string"},
            "src": {"type": "string"},
            "dst": {"type": "string"},
            "at": {"type": "integer"},
            "actor": {"type": "string"},
            "attempt": {"type": "integer"},
            "detail": {"type": "object"},
            "prev": {"type": "string"},
            "kid": {"type": "string"},
            "hash": {"type": "string"},
            "mac": {"type": "string"},
        },
    },
    "LogLine": {
        "type": "object",
        "required": ["id", "stream", "line", "attempt"],
        "properties": {
            "id": _STREAM_ID,
            "stream": {"type": "string", "enum": ["stdout", "stderr"]},
            "line": {"type": "string"},
            "attempt": {"type": "integer"},
        },
    },
}


def _with_access_answers(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation may answer 401 (no or bad credentials) and 403 (role too low)."""
    for operations in paths.values():
        for operation in operations.values():
            responses = operation["responses"]
            responses.setdefault("401", _error_response("No valid token or session"))
            responses.setdefault("403", _error_response("Your role may not do this"))
    return paths


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of `/api/`."""
    not_found = _error_response("No such app or job")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Provisioning panel API",
            "version": __version__,
            "description": (
                "Submit signed install jobs and follow them. Times are epoch milliseconds. "
                "Errors are JSON: {error, message, errors?}."
            ),
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": _with_access_answers(
            {
                "/api/apps": {
                    "get": {
                        "summary": "List the catalogue",
                        "responses": {
                            "200": _json_response(
                                "Every app, valid or not",
                                {
                                    "type": "object",
                                    "required": ["apps"],
                                    "properties": {
                                        "apps": {"type": "array", "items": _ref("AppSummary")}
                                    },
                                },
                            )
                        },
                    }
                },
                "/api/apps/{app_id}": {
                    "get": {
                        "summary": "One app with its inputs",
                        "parameters": [_APP_PARAM],
                        "responses": {
                            "200": _json_response("The app", _ref("App")),
                            "404": not_found,
                        },
                    }
                },
                "/api/install": {
                    "post": {
                        "summary": "Submit a job",
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _ref("InstallRequest")}},
                        },
                        "responses": {
                            "201": _json_response(
                                "Queued",
                                {
                                    "type": "object",
                                    "required": ["job_id", "state"],
                                    "properties": {
                                        "job_id": _JOB_ID,
                                        "state": {"type": "string", "enum": ["queued"]},
                                    },
                                },
                            ),
                            "400": _error_response("Malformed body"),
                            "404": not_found,
                            "409": _error_response("The app's manifest is invalid"),
                            "413": _error_response("Body over 1 MiB"),
                            "422": _error_response("Invalid inputs, with a message per field"),
                            "429": _error_response("Too many submissions; see Retry-After"),
                            "503": _error_response("Redis unreachable; nothing was stored"),
                        },
                    }
                },
                "/api/jobs": {
                    "get": {
                        "summary": "List jobs, newest first",
                        "parameters": [
                            {"name": "app", "in": "query", "schema": {"type": "string"}},
                            {
                                "name": "state",
                                "in": "query",
                                "schema": {"type": "string", "enum": list(STATES)},
                            },
                            {"name": "target", "in": "query", "schema": {"type": "string"}},
                            {"name": "user", "in": "query", "schema": {"type": "string"}},
                            {
                                "name": "since",
                                "in": "query",
                                "schema": _EPOCH_MS,
                            },
                            {
                                "name": "until",
                                "in": "query",
                                "schema": _EPOCH_MS,
                            },
                            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                            {
                                "name": "limit",
                                "in": "query",
                                "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                            },
                        ],
                        "responses": {
                            "200": _json_response(
                                "A page of jobs",
                                {
                                    "type": "object",
                                    "required": ["jobs", "next_cursor"],
                                    "properties": {
                                        "jobs": {"type": "array", "items": _ref("Job")},
                                        "next_cursor": {"type": "string", "nullable": True},
                                    },
                                },
                            ),
                            "400": _error_response("A malformed filter"),
                        },
                    }
                },
                "/api/jobs/{job_id}": {
                    "get": {
                        "summary": "One job's current state",
                        "parameters": [_JOB_PARAM],
                        "responses": {
                            "200": _json_response("The job", _ref("Job")),
                            "404": not_found,
                        },
                    }
                },
                "/api/jobs/{job_id}/events": {
                    "get": {
                        "summary": "Every event of a job, in order",
                        "parameters": [_JOB_PARAM],
                        "responses": {
                            "200": _json_response(
                                "The events",
                                {
                                    "type": "object",
                                    "required": ["events"],
                                    "properties": {
                                        "events": {"type": "array", "items": _ref("Event")}
                                    },
                                },
                            ),
                            "404": not_found,
                        },
                    }
                },
                "/api/jobs/{job_id}/log": {
                    "get": {
                        "summary": "A job's output lines (redacted)",
                        "parameters": [
                            _JOB_PARAM,
                            {"name": "after", "in": "query", "schema": _STREAM_ID},
                        ],
                        "responses": {
                            "200": _json_response(
                                "The lines",
                                {
                                    "type": "object",
                                    "required": ["lines"],
                                    "properties": {
                                        "lines": {"type": "array", "items": _ref("LogLine")}
                                    },
                                },
                            ),
                            "400": _error_response("A malformed cursor"),
                            "404": not_found,
                        },
                    }
                },
                "/api/jobs/{job_id}/cancel": {
                    "post": {
                        "summary": "Cancel a job",
                        "parameters": [_JOB_PARAM],
                        "responses": {
                            "202": _json_response(
                                "Cancellation asked; the state at that moment",
                                {
                                    "type": "object",
                                    "required": ["job_id", "state"],
                                    "properties": {"job_id": _JOB_ID, "state": {"type": "string"}},
                                },
                            ),
                            "404": not_found,
                            "409": _error_response("The job already ended"),
                        },
                    }
                },
                "/api/jobs/{job_id}/stream": {
                    "get": {
                        "summary": "Server-Sent Events of a job's events and log lines",
                        "description": (
                            "Messages `event: event` (an Event) and `event: log` (a LogLine); "
                            "ids are `<events cursor>/<log cursor>`; send Last-Event-ID to resume."
                        ),
                        "parameters": [_JOB_PARAM],
                        "responses": {
                            "200": {
                                "description": "The stream",
                                "content": {"text/event-stream": {}},
                            },
                            "404": not_found,
                        },
                    }
                },
                "/api/agents": {
                    "get": {
                        "summary": "Agents and their last heartbeats (admin)",
                        "responses": {
                            "200": _json_response(
                                "The agents",
                                {
                                    "type": "object",
                                    "required": ["agents"],
                                    "properties": {
                                        "agents": {"type": "array", "items": {"type": "object"}}
                                    },
                                },
                            ),
                            "403": _error_response("Not an admin"),
                        },
                    }
                },
            }
        ),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `provision tokens create USER`.",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "prov_session",
                    "description": "The browser session from /login (state-changing "
                    "requests also need the X-CSRF-Token header).",
                },
            },
        },
    }
