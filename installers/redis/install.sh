#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install a separate Redis instance "provision-PORT", never Debian's default one (port 6379).
#
# Inputs (installers/README.md): PORT, PASSWORD, MAXMEMORY_MB, EVICTION_POLICY, PERSISTENCE,
# BIND_ADDRESS and BIND_CUSTOM (only when BIND_ADDRESS is "custom").
# Exit codes (installers/README.md): 0 done, 1 validation error, 2 install error (retried), 3 config error.
#
# Idempotent: installs redis-server only when missing, always rewrites the instance's config
# (atomically; "unchanged" when it is the same), restarts the instance only when the config
# changed or it is not running, and checks it answers. When the new config does not come up,
# the previous one is put back and started again, and the script exits 3.
#
# The password only ever sits in the config file (mode 0640, owner redis) and in variables:
# never on a command line (ps shows those) and never in the output. redis-cli gets it through
# the REDISCLI_AUTH environment variable.
#
# shellcheck source=../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

# --- validate (the agent validated already; this guards against a hand-run script) ---
require_env PORT PASSWORD MAXMEMORY_MB EVICTION_POLICY PERSISTENCE BIND_ADDRESS

if ! [[ "$PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1024 || 10#$PORT > 65535)); then
    die_validation "PORT must be a number between 1024 and 65535"
fi
PORT=$((10#$PORT))
if ((PORT == 6379)); then
    die_validation "port 6379 belongs to Debian's default Redis instance; choose another port"
fi
if ! [[ "$MAXMEMORY_MB" =~ ^[0-9]{1,5}$ ]] || ((10#$MAXMEMORY_MB < 16 || 10#$MAXMEMORY_MB > 65536)); then
    die_validation "MAXMEMORY_MB must be a number between 16 and 65536"
fi
MAXMEMORY_MB=$((10#$MAXMEMORY_MB))
case "$EVICTION_POLICY" in
    noeviction | allkeys-lru | allkeys-lfu | allkeys-random | volatile-lru | volatile-lfu | \
        volatile-random | volatile-ttl) ;;
    *) die_validation "EVICTION_POLICY is not a Redis eviction policy" ;;
esac
case "$PERSISTENCE" in
    aof | rdb | none) ;;
    *) die_validation "PERSISTENCE must be aof, rdb or none" ;;
esac
case "$BIND_ADDRESS" in
    127.0.0.1 | 0.0.0.0) BIND="$BIND_ADDRESS" ;;
    custom)
        require_env BIND_CUSTOM
        if ! [[ "$BIND_CUSTOM" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]]; then
            die_validation "BIND_CUSTOM must be an IPv4 address"
        fi
        for octet in "${BASH_REMATCH[@]:1}"; do
            ((10#$octet <= 255)) || die_validation "BIND_CUSTOM must be an IPv4 address"
        done
        BIND="$BIND_CUSTOM"
        ;;
    *) die_validation "BIND_ADDRESS must be 127.0.0.1, 0.0.0.0 or custom" ;;
esac
if ((${#PASSWORD} < 12)); then
    die_validation "PASSWORD must be at least 12 characters long"
fi

readonly NAME="provision-$PORT"
readonly CONF="/etc/redis/$NAME.conf"
readonly DATA_DIR="/var/lib/redis/$NAME"
readonly RUN_DIR="/run/redis"
readonly PID_FILE="$RUN_DIR/$NAME.pid"
readonly LOG_DIR="/var/log/redis"
readonly LOG_FILE="$LOG_DIR/$NAME.log"
readonly REDIS_SERVER="/usr/bin/redis-server"
# Where this script talks to the instance: 0.0.0.0 includes the loopback address.
if [[ "$BIND" == "0.0.0.0" ]]; then CHECK_HOST="127.0.0.1"; else CHECK_HOST="$BIND"; fi
readonly CHECK_HOST

# --- helpers ---
instance_pid() {
    # The pid in our pid file, if that process is still a redis-server (pids get reused).
    local pid comm
    [[ -r "$PID_FILE" ]] || return 1
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == redis-server* || "$comm" == redis-check-rdb* ]] || return 1
    printf '%s\n' "$pid"
}

start_instance() {
    log_info "starting redis-server $CONF"
    log_mark
    # A clean environment so no input (the password above all) sits in the daemon's
    # /proc/PID/environ; PROV_JOB_ID stays so the agent's sweep finds it if this run is
    # cancelled or times out. Redis daemonizes itself and writes the pid file.
    env -i PATH="/usr/sbin:/usr/bin:/sbin:/bin" LANG=C.UTF-8 PROV_JOB_ID="${PROV_JOB_ID:-}" \
        start-stop-daemon --start --quiet --chuid redis:redis --pidfile "$PID_FILE" \
        --exec "$REDIS_SERVER" -- "$CONF" </dev/null >/dev/null 2>&1 || true
}

stop_instance() {
    local pid
    pid="$(instance_pid)" || { rm -f "$PID_FILE"; return 0; }
    log_info "stopping the instance (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log_warn "the instance did not stop within 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$PID_FILE"
}

answers() {
    # PONG from our own instance: the password must be accepted, so nothing else on the port
    # can pass for it. The password travels in the environment, not on the command line.
    local reply
    reply="$(REDISCLI_AUTH="$PASSWORD" timeout 2 redis-cli --no-auth-warning \
        -h "$CHECK_HOST" -p "$PORT" ping 2>/dev/null)" || return 1
    [[ "$reply" == "PONG" ]]
}

wait_until_answers() {
    # Up to 20 s; gives up as soon as the server died (a refused config, a port in use).
    local started=$SECONDS
    while ((SECONDS - started < 20)); do
        answers && return 0
        if ((SECONDS - started >= 1)) && ! instance_pid >/dev/null; then
            return 1
        fi
        sleep 0.2
    done
    return 1
}

log_offset=0
log_mark() {
    # Remember where the log ends, so log_tail shows only what the next start wrote.
    log_offset="$(stat -c '%s' -- "$LOG_FILE" 2>/dev/null || echo 0)"
}

log_tail() {
    # The last warnings Redis logged since log_mark, without timestamps: usually the reason.
    tail -c "+$((log_offset + 1))" -- "$LOG_FILE" 2>/dev/null | grep -F ' # ' | tail -n 2 \
        | sed -e 's/^.* # //' | tr '\n' ' ' || true
}

# --- 1. install what is missing ---
log_step "Redis instance $NAME"
if pkg_installed redis-server && pkg_installed redis-tools; then
    log_ok "redis-server is installed"
else
    pkg_ensure redis-server redis-tools
fi
[[ -x "$REDIS_SERVER" ]] || die_retry "$REDIS_SERVER is missing after installing redis-server"
id redis >/dev/null 2>&1 || die_retry "the redis user is missing after installing redis-server"

# --- 2. folders and config, always written (atomically; "unchanged" when identical) ---
install -d -m 0755 -o root -g root /etc/redis
install -d -m 0750 -o redis -g redis "$DATA_DIR"
install -d -m 0755 -o redis -g redis "$RUN_DIR"
[[ -d "$LOG_DIR" ]] || install -d -m 2750 -o redis -g adm "$LOG_DIR"

case "$PERSISTENCE" in
    aof) persistence_conf=$'appendonly yes\nappendfsync everysec\nsave ""' ;;
    rdb) persistence_conf=$'appendonly no\nsave 3600 1 300 100 60 10000' ;;
    none) persistence_conf=$'appendonly no\nsave ""' ;;
esac
# A double-quoted Redis string: backslashes and quotes escaped, so any password parses.
password_conf="${PASSWORD//\\/\\\\}"
password_conf="${password_conf//\"/\\\"}"

had_config=false
if [[ -f "$CONF" ]]; then
    had_config=true
    backup_file "$CONF"
fi
write_file "$CONF" 0640 redis:redis <<CONF
# Redis instance $NAME, written by the provisioning panel (installers/redis).
# Rewritten on every install run: edit the inputs in the panel, not this file.
bind $BIND
protected-mode yes
port $PORT
tcp-backlog 511
timeout 0
tcp-keepalive 300
daemonize yes
supervised no
pidfile $PID_FILE
loglevel notice
logfile $LOG_FILE
databases 16
dir $DATA_DIR
dbfilename dump.rdb
appendfilename "appendonly.aof"
$persistence_conf
maxmemory ${MAXMEMORY_MB}mb
maxmemory-policy $EVICTION_POLICY
requirepass "$password_conf"
CONF
config_changed="$WRITE_CHANGED"

# --- 3. start, or restart when the config changed; never restart an unchanged instance ---
if pid="$(instance_pid)"; then
    if [[ "$config_changed" == "true" ]]; then
        log_info "the config changed: restarting (Redis has no reload)"
        stop_instance
        start_instance
    else
        log_ok "already running with this config (pid $pid)"
    fi
else
    start_instance
fi

# --- 4. test: the instance must answer with the new config, else put the old one back ---
if ! wait_until_answers; then
    reason="$(log_tail)"
    stop_instance
    if [[ "$had_config" == "true" && "$config_changed" == "true" ]]; then
        log_warn "the new config did not come up; restoring the previous one"
        restore_file "$CONF"
        start_instance
        # The previous config has its own bind address (and password): wait for its port.
        old_host="$(awk '$1 == "bind" { print $2; exit }' "$CONF" 2>/dev/null || true)"
        [[ -n "$old_host" && "$old_host" != "0.0.0.0" ]] || old_host="127.0.0.1"
        wait_for_port "$old_host" "$PORT" 10 || true
        if instance_pid >/dev/null; then
            log_info "the previous config is running again"
        else
            log_warn "the previous config did not start either"
        fi
    fi
    die_config "Redis did not answer on $CHECK_HOST:$PORT with the new config: ${reason:-no log}"
fi
# The backup holds the previous password: no need to keep it once the new config works.
drop_backup "$CONF"

log_ok "Redis $NAME answers on $BIND:$PORT (pid $(instance_pid || echo '?'))"
