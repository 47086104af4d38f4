#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Uninstall the Redis instance "provision-PORT": stop it and remove its config, pid file and
# log. Its data folder (/var/lib/redis/provision-PORT) is kept unless REMOVE_DATA=true.
# The redis-server package stays installed: Debian's default instance or others may use it.
# Exit codes (installers/README.md): 0 done (also when nothing was installed), 1 validation error.
#
# shellcheck source=../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

require_env PORT
if ! [[ "$PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1024 || 10#$PORT > 65535)); then
    die_validation "PORT must be a number between 1024 and 65535"
fi
PORT=$((10#$PORT))
if ((PORT == 6379)); then
    die_validation "port 6379 belongs to Debian's default Redis instance, not to this app"
fi

readonly NAME="provision-$PORT"
readonly CONF="/etc/redis/$NAME.conf"
readonly DATA_DIR="/var/lib/redis/$NAME"
readonly PID_FILE="/run/redis/$NAME.pid"
readonly LOG_FILE="/var/log/redis/$NAME.log"

log_step "removing Redis instance $NAME"
if [[ -r "$PID_FILE" ]]; then
    pid="$(<"$PID_FILE")"
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    # Only signal the pid if it is still a redis-server: pids are reused.
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$comm" == redis-server* || "$comm" == redis-check-rdb* ]]; then
        log_info "stopping the instance (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
fi

rm -f -- "$PID_FILE" "$CONF" "$CONF.prov-bak" "$LOG_FILE"
if is_true "${REMOVE_DATA:-false}"; then
    # DATA_DIR is built from a validated number under a fixed root: it cannot escape it.
    rm -rf -- "$DATA_DIR"
    log_ok "removed $NAME and its data"
else
    log_ok "removed $NAME; its data is kept in $DATA_DIR (REMOVE_DATA=true removes it)"
fi
