#!/usr/bin/env bash
# Install the Prometheus node exporter (Debian package prometheus-node-exporter).
#
# Inputs (installers/README.md): LISTEN_ADDRESS (127.0.0.1|0.0.0.0), PORT, DISABLED_COLLECTORS
# (comma-separated, may be empty), ENABLE_TEXTFILE (true|false).
# Exit codes (installers/README.md): 0 done, 1 validation error, 2 install error (retried), 3 config error.
#
# Idempotent: installs the package only when missing, always rewrites
# /etc/default/prometheus-node-exporter (atomically, only when different), checks the
# flags, restarts the exporter only when its config changed (its flags cannot be reloaded)
# and puts the previous config back when the new one does not come up.
# shellcheck source=SCRIPTDIR/../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly PKG=prometheus-node-exporter
readonly SERVICE=prometheus-node-exporter
readonly BINARY=/usr/bin/prometheus-node-exporter
readonly DEFAULTS_FILE=/etc/default/prometheus-node-exporter
readonly TEXTFILE_DIR=/var/lib/prometheus/node-exporter
readonly STATE_DIR=/var/lib/provision/node-exporter
readonly KNOWN_COLLECTORS=" systemd wifi hwmon nfs nfsd zfs "

# --- validate (the agent validated already; this guards a hand-run script) ---
require_env LISTEN_ADDRESS PORT
ENABLE_TEXTFILE="${ENABLE_TEXTFILE:-true}"
DISABLED_COLLECTORS="${DISABLED_COLLECTORS:-}"
case "$LISTEN_ADDRESS" in
    127.0.0.1 | 0.0.0.0) ;;
    *) die_validation "LISTEN_ADDRESS must be 127.0.0.1 or 0.0.0.0" ;;
esac
if ! [[ "$PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1 || 10#$PORT > 65535)); then
    die_validation "PORT must be a number between 1 and 65535"
fi
PORT=$((10#$PORT))
[[ "$ENABLE_TEXTFILE" == true || "$ENABLE_TEXTFILE" == false ]] \
    || die_validation "ENABLE_TEXTFILE must be true or false"
collectors=()
if [[ -n "$DISABLED_COLLECTORS" ]]; then
    IFS=',' read -r -a collectors <<<"$DISABLED_COLLECTORS"
fi
for collector in "${collectors[@]}"; do
    [[ "$KNOWN_COLLECTORS" == *" $collector "* ]] \
        || die_validation "unknown collector '$collector' in DISABLED_COLLECTORS"
done

# --- 1. install the package when missing ---
log_step "Package $PKG"
if pkg_installed "$PKG"; then
    log_ok "$PKG is already installed"
else
    before="$(pkg_installed_list)"
    user_existed=true
    getent passwd prometheus >/dev/null || user_existed=false
    pkg_ensure "$PKG"
    # Remember what this app added (the package and its new dependencies), so that
    # uninstall.sh removes exactly that and nothing that was here before.
    install -d -m 0755 "$STATE_DIR"
    comm -13 <(printf '%s\n' "$before") <(pkg_installed_list) \
        | write_file "$STATE_DIR/installed-packages" 0644
    if [[ "$user_existed" == false ]] && getent passwd prometheus >/dev/null; then
        printf '%s\n' prometheus | write_file "$STATE_DIR/created-user" 0644
    fi
fi
[[ -x "$BINARY" ]] || die_retry "$BINARY is missing after installing $PKG"

# --- 2. always write the config ---
log_step "Configuration"
args=("--web.listen-address=$LISTEN_ADDRESS:$PORT")
for collector in "${collectors[@]}"; do
    args+=("--no-collector.$collector")
done
if is_true "$ENABLE_TEXTFILE"; then
    install -d -m 0755 "$TEXTFILE_DIR"
    args+=("--collector.textfile.directory=$TEXTFILE_DIR")
else
    args+=("--no-collector.textfile")
fi

# The port the running exporter uses now (from the current file), to tell "our own
# exporter holds the port" from "another program holds it".
old_port=""
if [[ -r "$DEFAULTS_FILE" ]]; then
    old_port="$(sed -n 's/.*--web\.listen-address=[^ "]*:\([0-9]\{1,5\}\).*/\1/p' "$DEFAULTS_FILE" | head -n 1)"
fi

backup_file "$DEFAULTS_FILE"
# Every value comes from an allow-list or is a validated number: nothing to quote inside ARGS.
write_file "$DEFAULTS_FILE" 0644 root:root <<CONF
# Managed by the provisioning panel (app node-exporter); changes here are overwritten.
# Command-line arguments of prometheus-node-exporter (read by its init script / unit).
ARGS="${args[*]}"
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

reject() {
    # The new config failed its test before the service saw it: put the old file back.
    restore_file "$DEFAULTS_FILE"
    die_config "$1"
}

roll_back() {
    # The service was restarted with the new config and did not come up: bring it back
    # with the previous, working config.
    log_warn "restoring the previous configuration of $SERVICE"
    restore_file "$DEFAULTS_FILE"
    svc service_restart "$SERVICE" || log_warn "could not restart $SERVICE with the previous configuration"
    die_config "$1"
}

# --- 3. test the config ---
if [[ "$config_changed" == true ]]; then
    log_step "Testing the configuration"
    # The exporter parses every flag before printing its help: an unknown flag fails here.
    if ! "$BINARY" "${args[@]}" --help >/dev/null 2>&1; then
        reject "prometheus-node-exporter refuses the arguments: ${args[*]}"
    fi
    if [[ "$PORT" != "$old_port" ]] && port_open "$PORT"; then
        reject "port $PORT is already used by another program"
    fi
    log_ok "the arguments are valid"
else
    drop_backup "$DEFAULTS_FILE"
fi

# --- 4. start, or restart only when something changed ---
log_step "Service $SERVICE"
if ! service_running "$SERVICE"; then
    svc service_start "$SERVICE" || true
elif [[ "$config_changed" == true ]]; then
    # Flags are read once at start: a reload (SIGHUP/USR1) would not apply them.
    log_info "restarting $SERVICE to apply the new configuration"
    svc service_restart "$SERVICE" || true
else
    log_ok "$SERVICE is running with this configuration"
fi
service_enable "$SERVICE" || log_warn "could not enable $SERVICE at boot"

# --- 5. verify it answers with our metrics ---
metrics_url="http://127.0.0.1:$PORT/metrics"
# Read the whole page before grep: `curl | grep -q` fails under pipefail when grep stops early.
if wait_for_http "$metrics_url" 20 \
    && page="$(curl -fsS --max-time 5 "$metrics_url")" \
    && grep -q '^node_exporter_build_info' <<<"$page"; then
    drop_backup "$DEFAULTS_FILE"
    log_ok "serving metrics on http://$LISTEN_ADDRESS:$PORT/metrics"
    exit 0
fi
if [[ "$config_changed" == true ]]; then
    roll_back "$SERVICE did not answer on $metrics_url with the new configuration"
fi
die_retry "$SERVICE did not answer on $metrics_url"
