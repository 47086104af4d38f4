#!/usr/bin/env bash
# Install "Hello Web": a static page served by `python3 -m http.server` on 127.0.0.1:$PORT.
#
# Inputs arrive as environment variables (installers/README.md): SITE_TITLE, PORT, GREETING,
# ADMIN_PASSWORD, ENABLE_BANNER, BANNER_TEXT (only when the banner is on), THEME.
# Exit codes (installers/README.md): 0 done, 1 validation error, 2 install error (retried), 3 config error.
#
# Idempotent: safe to run again at any point. It installs python3 only if missing, always
# rewrites the config and the page (atomically), and restarts the server only when the
# config changed or the server is not running.
set -euo pipefail

readonly ROOT_DIR="/var/lib/hello-web"
readonly EXIT_VALIDATION=1
readonly EXIT_INSTALL=2
readonly EXIT_CONFIG=3

log() { printf 'hello-web: %s\n' "$*"; }
fail() {
    local code="$1"
    shift
    printf 'hello-web: error: %s\n' "$*" >&2
    exit "$code"
}

# --- validate: the agent has validated already; this guards against a hand-run script ---
PORT="${PORT:-}"
ENABLE_BANNER="${ENABLE_BANNER:-false}"
THEME="${THEME:-light}"
if ! [[ "$PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1 || 10#$PORT > 65535)); then
    fail "$EXIT_VALIDATION" "PORT must be a number between 1 and 65535"
fi
PORT=$((10#$PORT))
[[ -n "${SITE_TITLE:-}" ]] || fail "$EXIT_VALIDATION" "SITE_TITLE is required"
[[ "$ENABLE_BANNER" == "true" || "$ENABLE_BANNER" == "false" ]] \
    || fail "$EXIT_VALIDATION" "ENABLE_BANNER must be true or false"
[[ "$THEME" == "light" || "$THEME" == "dark" ]] || fail "$EXIT_VALIDATION" "THEME must be light or dark"

readonly SITE_DIR="$ROOT_DIR/$PORT"
readonly WWW_DIR="$SITE_DIR/www"
readonly PID_FILE="$SITE_DIR/server.pid"
readonly LOG_FILE="$SITE_DIR/server.log"

# --- 1. install what is missing ---
if ! command -v python3 >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 \
        || fail "$EXIT_CONFIG" "python3 is missing and there is no apt-get to install it"
    log "installing python3"
    export DEBIAN_FRONTEND=noninteractive
    # A failed download is usually transient (mirror, network): exit 2 so the agent retries.
    apt-get update -q || fail "$EXIT_INSTALL" "apt-get update failed"
    apt-get install -y -q --no-install-recommends python3 \
        || fail "$EXIT_INSTALL" "apt-get install python3 failed"
fi

# --- 2. always write the config and the page, atomically ---
umask 077
mkdir -p "$WWW_DIR"
chmod 755 "$ROOT_DIR" "$SITE_DIR" "$WWW_DIR"
# Values reach Python through the environment, never by splicing them into code, and are
# HTML-escaped there. Prints "changed" when config.json differs from the previous run.
config_state="$(
    HW_SITE_DIR="$SITE_DIR" HW_PORT="$PORT" python3 - <<'PY'
import hashlib, hmac, html, json, os, secrets, tempfile

site = os.environ["HW_SITE_DIR"]
env = os.environ


def write_atomically(path, text, mode):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def password_hash(password, previous):
    # Keep the previous salted hash when it still matches, so an unchanged password does
    # not count as a changed config (and does not restart the server).
    if not password:
        return None
    if previous:
        try:
            _, rounds, salt, digest = previous.split("$")
            again = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
            if hmac.compare_digest(again.hex(), digest):
                return previous
        except ValueError:
            pass
    salt = secrets.token_bytes(16)
    rounds = 600_000
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    return f"pbkdf2_sha256${rounds}${salt.hex()}${digest.hex()}"


config_path = os.path.join(site, "config.json")
try:
    with open(config_path, encoding="utf-8") as handle:
        old_text = handle.read()
    old = json.loads(old_text)
except (OSError, ValueError):
    old_text, old = "", {}

banner_on = env.get("ENABLE_BANNER") == "true"
config = {
    "port": int(env["HW_PORT"]),
    "site_title": env.get("SITE_TITLE", ""),
    "greeting": env.get("GREETING", ""),
    "theme": env.get("THEME", "light"),
    "banner": env.get("BANNER_TEXT", "") if banner_on else None,
    "admin_password_hash": password_hash(env.get("ADMIN_PASSWORD", ""), old.get("admin_password_hash")),
}
new_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
write_atomically(config_path, new_text, 0o600)

colours = {"light": ("#ffffff", "#1d1d1f"), "dark": ("#1d1d1f", "#f5f5f7")}
background, foreground = colours.get(config["theme"], colours["light"])
title = html.escape(config["site_title"])
paragraphs = "\n".join(
    f"    <p>{html.escape(part)}</p>" for part in config["greeting"].splitlines() if part.strip()
)
banner = (
    f'    <div class="banner">{html.escape(config["banner"])}</div>\n' if config["banner"] else ""
)
page = f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>{title}</title>
    <style>
      body {{ font-family: sans-serif; margin: 3rem; background: {background}; color: {foreground}; }}
      .banner {{ padding: 0.75rem 1rem; background: #ffd84d; color: #1d1d1f; border-radius: 6px; }}
    </style>
  </head>
  <body>
{banner}    <h1>{title}</h1>
{paragraphs}
  </body>
</html>
"""
write_atomically(os.path.join(site, "www", "index.html"), page, 0o644)
print("changed" if new_text != old_text else "unchanged")
PY
)" || fail "$EXIT_CONFIG" "could not write the site files in $SITE_DIR"

# --- 3. start or restart the server when needed ---
server_pid() {
    # The pid in the pid file, if that process is still our server (pids get reused).
    local pid
    [[ -r "$PID_FILE" ]] || return 1
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "http.server --bind 127.0.0.1 $PORT " \
        || return 1
    printf '%s\n' "$pid"
}

stop_server() {
    local pid
    pid="$(server_pid)" || return 0
    log "stopping the server (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
}

start_server() {
    log "starting the server on 127.0.0.1:$PORT"
    # The interpreter's real path: `python3` may be a wrapper (pyenv, a venv shim) that
    # needs variables the clean environment below does not carry.
    local python
    python="$(python3 -c 'import sys; print(sys.executable)')"
    : >"$LOG_FILE"
    # A new session so it outlives this script; a clean environment so the inputs (the admin
    # password above all) never sit in the server's /proc/<pid>/environ. PROV_JOB_ID stays,
    # so the agent's sweep can still find it if this run is cancelled or times out.
    setsid env -i PATH="/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 \
        PROV_JOB_ID="${PROV_JOB_ID:-}" \
        "$python" -m http.server --bind 127.0.0.1 "$PORT" --directory "$WWW_DIR" \
        </dev/null >>"$LOG_FILE" 2>&1 &
    printf '%s\n' "$!" >"$PID_FILE"
}

if [[ "$config_state" == "changed" ]]; then
    stop_server
fi
if ! server_pid >/dev/null; then
    start_server
else
    log "the server is already running with this config"
fi

# --- 4. verify it answers ---
answers() {
    # Our page, not just anything on the port: another program may hold it already.
    HW_PORT="$PORT" HW_PAGE="$WWW_DIR/index.html" python3 -c '
import os, sys, urllib.request
try:
    url = "http://127.0.0.1:" + os.environ["HW_PORT"] + "/"
    with urllib.request.urlopen(url, timeout=2) as response:
        served = response.read()
    with open(os.environ["HW_PAGE"], "rb") as page:
        sys.exit(0 if served == page.read() else 1)
except OSError:
    sys.exit(1)
'
}

for _ in $(seq 1 50); do
    if server_pid >/dev/null && answers; then
        log "serving on http://127.0.0.1:$PORT/"
        exit 0
    fi
    if ! server_pid >/dev/null; then
        if grep -q "Address already in use" "$LOG_FILE" 2>/dev/null; then
            fail "$EXIT_CONFIG" "port $PORT is already used by another program"
        fi
        fail "$EXIT_INSTALL" "the server exited at start: $(tail -n 3 "$LOG_FILE" 2>/dev/null || true)"
    fi
    sleep 0.2
done
fail "$EXIT_INSTALL" "the server did not answer on port $PORT within 10 seconds"
