#!/usr/bin/env bash
# Install memcached (Debian package memcached) and configure it through /etc/memcached.conf.
#
# Inputs (installers/README.md): LISTEN_ADDRESS (127.0.0.1|0.0.0.0), PORT, MEMORY_MB, MAX_CONNECTIONS,
# ENABLE_UDP (true|false).
# Exit codes (installers/README.md): 0 done, 1 validation error, 2 install error (retried), 3 config error.
#
# Idempotent: installs the package only when missing, always rewrites /etc/memcached.conf
# (atomically, only when different), restarts memcached only when the config changed
# (memcached cannot reload), and puts the previous config back (and memcached up with it)
# when the new one does not come up.
# shellcheck source=SCRIPTDIR/../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly PKG=memcached
readonly SERVICE=memcached
readonly CONFIG_FILE=/etc/memcached.conf
readonly LOG_FILE=/var/log/memcached.log
readonly STATE_DIR=/var/lib/provision/memcached

# --- validate (the agent validated already; this guards a hand-run script) ---
require_env LISTEN_ADDRESS PORT MEMORY_MB MAX_CONNECTIONS
ENABLE_UDP="${ENABLE_UDP:-false}"
case "$LISTEN_ADDRESS" in
    127.0.0.1 | 0.0.0.0) ;;
    *) die_validation "LISTEN_ADDRESS must be 127.0.0.1 or 0.0.0.0" ;;
esac
number_in() { # NAME LOW HIGH: the variable holds a decimal number in LOW..HIGH
    local value="${!1}"
    if ! [[ "$value" =~ ^[0-9]{1,6}$ ]] || ((10#$value < $2 || 10#$value > $3)); then
        die_validation "$1 must be a number between $2 and $3"
    fi
}
number_in PORT 1 65535
number_in MEMORY_MB 16 65536
number_in MAX_CONNECTIONS 16 65536
PORT=$((10#$PORT))
MEMORY_MB=$((10#$MEMORY_MB))
MAX_CONNECTIONS=$((10#$MAX_CONNECTIONS))
[[ "$ENABLE_UDP" == true || "$ENABLE_UDP" == false ]] \
    || die_validation "ENABLE_UDP must be true or false"

# --- 1. install the package when missing ---
log_step "Package $PKG"
if pkg_installed "$PKG"; then
    log_ok "$PKG is already installed"
else
    before="$(pkg_installed_list)"
    user_existed=true
    getent passwd memcache >/dev/null || user_existed=false
    pkg_ensure "$PKG"
    # Remember what this app added (the package and its new dependencies), so that
    # uninstall.sh removes exactly that and nothing that was here before.
    install -d -m 0755 "$STATE_DIR"
    comm -13 <(printf '%s\n' "$before") <(pkg_installed_list) \
        | write_file "$STATE_DIR/installed-packages" 0644
    if [[ "$user_existed" == false ]] && getent passwd memcache >/dev/null; then
        printf '%s\n' memcache | write_file "$STATE_DIR/created-user" 0644
    fi
fi
[[ -x /etc/init.d/memcached || -d /run/systemd/system ]] \
    || die_retry "the memcached package is incomplete: /etc/init.d/memcached is missing"

# --- 2. always write the config ---
log_step "Configuration"
udp_port=0
if is_true "$ENABLE_UDP"; then
    udp_port="$PORT"
fi
old_port=""
if [[ -r "$CONFIG_FILE" ]]; then
    old_port="$(sed -n 's/^-p[[:space:]]\{1,\}\([0-9]\{1,5\}\).*/\1/p' "$CONFIG_FILE" | head -n 1)"
fi
backup_file "$CONFIG_FILE"
# Read by Debian's start-memcached: one option per line, "#" starts a comment.
write_file "$CONFIG_FILE" 0644 root:root <<CONF
# Managed by the provisioning panel (app memcached); changes here are overwritten.
# memcached options, read by /usr/share/memcached/scripts/start-memcached.
logfile $LOG_FILE
# Item memory in MiB
-m $MEMORY_MB
# TCP port and listen address
-p $PORT
-l $LISTEN_ADDRESS
# UDP port (0 = off)
-U $udp_port
# Simultaneous connections
-c $MAX_CONNECTIONS
-u memcache
CONF
config_changed="$WRITE_CHANGED"

# Run a library service action; init scripts print half lines ("Starting ...: name" with
# no newline), so their output is collected and logged as whole lines.
svc() {
    local output status=0
    output="$("$@" 2>&1)" || status=$?
    [[ -z "$output" ]] || printf '%s\n' "$output"
    return "$status"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# stats_ok: memcached answers on PORT with our memory limit (so it is ours, with this config).
stats_ok() {
    local reply
    reply="$(
        exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
        printf 'stats\r\nquit\r\n' >&3
        timeout 5 cat <&3
    )" 2>/dev/null || return 1
    grep -q "^STAT limit_maxbytes $((MEMORY_MB * 1048576))"$'\r'"\?$" <<<"$reply"
}

wait_for_stats() {
    local _
    for _ in $(seq 1 50); do
        stats_ok && return 0
        sleep 0.2
    done
    return 1
}

reject() {
    # The new config failed its test before the service saw it: put the old file back.
    restore_file "$CONFIG_FILE"
    die_config "$1"
}

roll_back() {
    # The service was restarted with the new config and did not come up: bring it back
    # with the previous, working config.
    log_warn "restoring the previous configuration of $SERVICE"
    restore_file "$CONFIG_FILE"
    svc service_restart "$SERVICE" || log_warn "could not restart $SERVICE with the previous configuration"
    die_config "$1"
}

# --- 3. test the config ---
if [[ "$config_changed" == true ]]; then
    log_step "Testing the configuration"
    # memcached has no dry run; what can go wrong with these validated values is a port
    # that another program holds, and that is checked before memcached is restarted.
    if [[ "$PORT" != "$old_port" ]] && port_open "$PORT"; then
        reject "port $PORT is already used by another program"
    fi
    log_ok "the configuration looks right"
else
    drop_backup "$CONFIG_FILE"
fi

# --- 4. start, or restart only when something changed ---
log_step "Service $SERVICE"
if ! service_running "$SERVICE"; then
    svc service_start "$SERVICE" || true
elif [[ "$config_changed" == true ]]; then
    # memcached has no reload: options are read once at start (the cache is emptied).
    svc service_restart "$SERVICE" || true
else
    log_ok "$SERVICE is running with this configuration"
fi
service_enable "$SERVICE" || log_warn "could not enable $SERVICE at boot"

# --- 5. verify it answers with our settings ---
if wait_for_stats; then
    drop_backup "$CONFIG_FILE"
    log_ok "memcached answers on $LISTEN_ADDRESS:$PORT with ${MEMORY_MB} MiB"
    exit 0
fi
log_warn "memcached did not answer; the end of $LOG_FILE:"
tail -n 5 -- "$LOG_FILE" >&2 2>/dev/null || true
if [[ "$config_changed" == true ]]; then
    roll_back "memcached did not come up with the new configuration"
fi
die_retry "memcached does not answer on port $PORT"
