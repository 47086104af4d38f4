"""`/login` and `/logout`: browser sessions.

The login form answers a wrong password and an unknown user with the same words, the same
status and the same work (an argon2 verification either way), so it tells no one which
accounts exist. A successful login always creates a new session (and drops the old one), so a
session id planted before login is never promoted.

Failed logins slow an attacker down without locking the owner out. Every attempt is counted,
before its password is checked, per client address (`PROV_LOGIN_FAILURES_PER_ADDRESS`), and
per account (`PROV_LOGIN_FAILURES_PER_ACCOUNT`), both in one Redis transaction, in windows of
`PROV_LOGIN_WINDOW_S`; a refused attempt gets 429 with `Retry-After` until the window ends.

- Past the address limit, every attempt from that address is refused, whatever the name.
- Past the account limit, an attempt on that account is refused only from an address that
  has failed in the window (its counter held something before this attempt), so the owner
  at an address that has not failed still logs in with the right password while the guesser
  stays locked out. The rule is "has failed at all", not "has failed on this account": the
  per-address counter already says it, so the only counters are the contract's two kinds
  (per account, per address), never one per account and address; and an address that has
  spent its failures on other names gets no fresh try at a locked account either.
- Only accounts that exist get a counter: a name that is not a user is counted on the
  address alone, so a flood of invented names leaves nothing per name in Redis and is still
  slowed by the address limit. For any well-formed name both cases make the same Redis round
  trips (the user lookup, one counting transaction) before the same argon2 check.
- A success takes its attempt off the address count. It also clears the account's failures,
  unless the account was already past its limit: then it takes off only its own attempt, so
  the owner logging in does not hand the guesser a fresh allowance.

The login form carries a CSRF token too, a pre-session one (a forged login would put the
victim's browser in the attacker's account). It is stateless, so it works across several
panel processes and leaves nothing in Redis for anonymous visitors:

- `GET /login` sets the cookie `prov_login` to a random nonce (a well-formed one already
  there is kept, so two open tabs share it; `HttpOnly`, `SameSite=Strict`, `Path=/login`,
  `Secure` with `PROV_COOKIE_SECURE`, one hour) and puts `<issued>.<HMAC(key, nonce.issued)>`
  in the form's `_csrf` field, the field name every other form uses.
- `POST /login` checks that pair first, before the argon2 check and before counting a failed
  login: a missing cookie, a missing field, a wrong, foreign or expired token gets 403 with
  a fresh form, and nothing else happens (no session, no failure counted). A success deletes
  the cookie. Every re-rendered form (401, 403, 429) carries a valid token, so the user can
  simply try again.

Keyed, not a plain double-submit (token == cookie): the HMAC key is derived with HKDF from
the key ring's secrets under its own label (`FORM_KEY_INFO`, by `core.sealing.derive_key`; the
ring secrets themselves only sign jobs), so a cookie planted by a sibling subdomain cannot be
paired with a token the attacker made up, only with one this panel issued. The token carries
its issue time, so a form is refused after an hour even if the browser kept the cookie. Every
key of the ring verifies, so a key rotation does not void the forms already shown. The
middleware's same-origin check (`Origin`, `Sec-Fetch-Site`) still runs before all of this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from core.sealing import derive_key
from panel import appkeys
from panel.auth.access import CSRF_FIELD, IDENTITY
from panel.auth.ratelimit import Limit
from panel.auth.sessions import COOKIE_NAME
from panel.web.page_context import render_page

routes = web.RouteTableDef()

WRONG: Final = "Wrong user name or password."
FORM_EXPIRED: Final = "Your login form expired or came from another site; please try again."

# The pre-session cookie: a nonce the form's token is bound to.
LOGIN_COOKIE: Final = "prov_login"
LOGIN_FORM_MAX_S: Final = 3600
# A form issued by a panel process whose clock runs a little ahead of this one still counts.
CLOCK_SKEW_S: Final = 60
FORM_KEY_INFO: Final = b"provision/login-csrf/v1"
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_TOKEN: Final = re.compile(r"([0-9]{1,12})\.[A-Za-z0-9_-]{43}")


def safe_next(value: str | None) -> str:
    """Only a path on this site: never `//host`, `https://...`, nor a whitespace trick.

    Browsers and HTTP libraries drop tabs and newlines from a Location, so a slash, a tab and
    `/evil` would become `//evil`: anything but printable ASCII without backslashes is
    refused.
    """
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or len(value) > 2000
        or any(not ("!" <= char <= "~") or char == "\\" for char in value)
    ):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _limits(request: web.Request) -> tuple[Limit, Limit]:
    settings = request.app[appkeys.SETTINGS]
    window = settings.login_window_s
    return (
        Limit(settings.login_failures_per_account, window),
        Limit(settings.login_failures_per_address, window),
    )


# --- the login form's CSRF token -------------------------------------------------------------


def _form_key(secret: bytes) -> bytes:
    return derive_key(secret, FORM_KEY_INFO)


def form_token(secret: bytes, nonce: str, issued_s: int) -> str:
    """The login form's token for the cookie `nonce`, issued at `issued_s`, under `secret`."""
    message = f"{nonce}.{issued_s}".encode("ascii")
    mac = hmac.new(_form_key(secret), message, hashlib.sha256).digest()
    return f"{issued_s}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode('ascii')}"


def _cookie_nonce(request: web.Request) -> str | None:
    """The pre-session cookie's nonce, if the request carries a well-formed one."""
    value = request.cookies.get(LOGIN_COOKIE, "")
    return value if _NONCE.fullmatch(value) else None


def _form_is_genuine(request: web.Request, sent: str) -> bool:
    """Whether `sent` is a token this panel issued, within the hour, for the request's cookie."""
    nonce = _cookie_nonce(request)
    match = _TOKEN.fullmatch(sent)
    if nonce is None or match is None:
        return False
    issued_s = int(match.group(1))
    now_s = int(request.app[appkeys.CLOCK]())
    if not now_s - LOGIN_FORM_MAX_S <= issued_s <= now_s + CLOCK_SKEW_S:
        return False
    ring = request.app[appkeys.RING]()
    sent_bytes = sent.encode("ascii")  # the pattern matched: ASCII only
    return any(
        hmac.compare_digest(
            sent_bytes, form_token(ring.secret(kid), nonce, issued_s).encode("ascii")
        )
        for kid in ring
    )


def _page(request: web.Request, status: int, **context: object) -> web.Response:
    """The login form, with its pre-session cookie (kept if valid) and a token bound to it."""
    app = request.app
    nonce = _cookie_nonce(request) or secrets.token_urlsafe(32)
    token = form_token(app[appkeys.RING]().signing_secret, nonce, int(app[appkeys.CLOCK]()))
    response = render_page(
        request,
        "login.html",
        {
            "next": safe_next(request.query.get("next")),
            "error": "",
            "username": "",
            **context,
            "csrf_token": token,
        },
        status=status,
    )
    # Set again even when kept, so the cookie lives at least as long as the token.
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        httponly=True,
        samesite="Strict",
        secure=app[appkeys.SETTINGS].cookie_secure,
        path="/login",
        max_age=LOGIN_FORM_MAX_S,
    )
    return response


# --- the routes ------------------------------------------------------------------------------


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    """The login form."""
    return _page(request, 200)


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    """Check the credentials; on success a fresh session and a redirect to `next`."""
    form = await request.post()
    username = str(form.get("username", ""))[:200].strip().lower()
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "")))
    sent = form.get(CSRF_FIELD)
    # First, before anything that costs (argon2, the failure counts): the form's own token.
    if not isinstance(sent, str) or not _form_is_genuine(request, sent):
        return _page(request, 403, error=FORM_EXPIRED, username=username, next=next_path)
    app = request.app
    now = app[appkeys.CLOCK]()
    now_s = int(now)
    limiter = app[appkeys.LIMITER]
    per_account, per_address = _limits(request)
    address = request.remote or "unknown"
    users = app[appkeys.USERS]
    known = await users.get(username) is not None
    # Count the attempt before checking it (one transaction of atomic INCRs), so parallel
    # guesses can never get past the limit while earlier ones are still being verified.
    attempts = [("login-address", address, per_address)]
    if known:  # no counter for a name that is not a user
        attempts.append(("login-account", username, per_account))
    verdicts = await limiter.hit_all(attempts, now_s=now_s)
    by_address = verdicts[0]
    by_account = verdicts[1] if known else None
    address_has_failed = by_address.count > 1  # something counted before this attempt
    refused = [by_address] if not by_address.allowed else []
    if by_account is not None and not by_account.allowed and address_has_failed:
        refused.append(by_account)
    if refused:
        retry_after = max(verdict.retry_after_s for verdict in refused)
        response = _page(
            request,
            429,
            error=f"Too many failed attempts. Try again in {retry_after} s.",
            username=username,
            next=next_path,
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    user = await users.authenticate(username, password)
    if user is None:
        return _page(request, 401, error=WRONG, username=username, next=next_path)
    # A success is not a failure: take it off both counts; the account's earlier failures go
    # too, unless someone had already run the account past its limit.
    if by_account is not None:
        if by_account.count - 1 < per_account.count:
            await limiter.clear("login-account", username, per_account, now_s=now_s)
        else:
            await limiter.undo("login-account", username, per_account, now_s=now_s)
    await limiter.undo("login-address", address, per_address, now_s=now_s)
    sessions = app[appkeys.SESSIONS]
    old = request.cookies.get(COOKIE_NAME)
    if old:
        await sessions.delete(old)
    session = await sessions.create(user.name, now_ms=int(now * 1000))
    settings = app[appkeys.SETTINGS]
    response = web.Response(status=303, headers={"Location": next_path})
    response.set_cookie(
        COOKIE_NAME,
        session.session_id,
        httponly=True,
        samesite="Lax",
        secure=settings.cookie_secure,
        path="/",
        max_age=settings.session_max_s,
    )
    response.del_cookie(
        LOGIN_COOKIE,
        path="/login",
        httponly=True,
        samesite="Strict",
        secure=settings.cookie_secure,
    )
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    """End the session and go back to the login form."""
    identity = request.get(IDENTITY)
    if identity is not None and identity.session_id:
        await request.app[appkeys.SESSIONS].delete(identity.session_id)
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(COOKIE_NAME, path="/")
    return response
