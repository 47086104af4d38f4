#!/usr/bin/env bash
# Uninstall "Hello Web" for one PORT: stop its server and remove its files.
# Exit codes (installers/README.md): 0 done (also when nothing was installed), 1 validation error.
# python3 itself is left installed: other software may need it.
set -euo pipefail

readonly ROOT_DIR="/var/lib/hello-web"

PORT="${PORT:-}"
if ! [[ "$PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1 || 10#$PORT > 65535)); then
    printf 'hello-web: error: PORT must be a number between 1 and 65535\n' >&2
    exit 1
fi
PORT=$((10#$PORT))
readonly SITE_DIR="$ROOT_DIR/$PORT"
readonly PID_FILE="$SITE_DIR/server.pid"

if [[ -r "$PID_FILE" ]]; then
    pid="$(<"$PID_FILE")"
    # Only signal the pid if it is still our server: pids are reused.
    if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" \
        | grep -q -- "http.server --bind 127.0.0.1 $PORT "; then
        printf 'hello-web: stopping the server (pid %s)\n' "$pid"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
fi

# SITE_DIR is built from a validated number under a fixed root, so this cannot escape it.
rm -rf -- "$SITE_DIR"
rmdir -- "$ROOT_DIR" 2>/dev/null || true
printf 'hello-web: removed %s\n' "$SITE_DIR"
