#!/usr/bin/env bash
# Install Caddy (Debian package caddy) as a reverse proxy or a static site on one port.
#
# Inputs (installers/README.md): MODE (proxy|static), LISTEN_PORT, UPSTREAM_URL (proxy only),
# SITE_NAME and SITE_TITLE (static only), SECURITY_HEADERS (true|false).
# Exit codes (installers/README.md): 0 done, 1 validation error, 2 install error (retried), 3 config error.
#
# Idempotent: installs the package only when missing, always rewrites
# /etc/caddy/provision.Caddyfile (atomically, only when different), checks it with
# `caddy validate`, and reloads the running Caddy (`caddy reload`, same process) only when
# it changed. A Caddyfile that fails its test or its reload is replaced by the previous one.
#
# Debian's caddy package ships only a systemd unit for /etc/caddy/Caddyfile. This app runs
# its own instance, "provision-caddy": a systemd unit of that name where systemd runs, else
# supervised by the library (start-stop-daemon, pid file in /run/provision).
# shellcheck source=SCRIPTDIR/../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly PKG=caddy
readonly SERVICE=provision-caddy
readonly CADDY=/usr/bin/caddy
readonly CADDYFILE=/etc/caddy/provision.Caddyfile
readonly ADMIN_DIR=/run/provision-caddy
readonly ADMIN_SOCKET="$ADMIN_DIR/admin.sock"
readonly SITES_ROOT=/var/www/provision-site
readonly CADDY_HOME=/var/lib/caddy
readonly STATE_DIR=/var/lib/provision/reverse-proxy
readonly UNIT_FILE=/etc/systemd/system/provision-caddy.service

# --- validate (the agent validated already; this guards a hand-run script) ---
MODE="${MODE:-}"
require_env MODE LISTEN_PORT
SECURITY_HEADERS="${SECURITY_HEADERS:-true}"
if ! [[ "$LISTEN_PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$LISTEN_PORT < 1 || 10#$LISTEN_PORT > 65535)); then
    die_validation "LISTEN_PORT must be a number between 1 and 65535"
fi
LISTEN_PORT=$((10#$LISTEN_PORT))
[[ "$SECURITY_HEADERS" == true || "$SECURITY_HEADERS" == false ]] \
    || die_validation "SECURITY_HEADERS must be true or false"
case "$MODE" in
    proxy)
        require_env UPSTREAM_URL
        # The URL lands in the Caddyfile: only characters that cannot open a block, a
        # placeholder, a quote or a new token. (A path passes here and is refused by
        # `caddy validate`, as Caddy only takes scheme://host:port upstreams.)
        [[ "$UPSTREAM_URL" =~ ^https?://[A-Za-z0-9._~%-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?$ ]] \
            || [[ "$UPSTREAM_URL" =~ ^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?$ ]] \
            || die_validation "UPSTREAM_URL must look like http://host:port (no query, quotes or braces)"
        ;;
    static)
        require_env SITE_NAME SITE_TITLE
        [[ "$SITE_NAME" =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] \
            || die_validation "SITE_NAME must be lower-case letters, digits and -"
        [[ "$SITE_TITLE" =~ ^[A-Za-z0-9][A-Za-z0-9\ .,!?\'\&()-]{0,79}$ ]] \
            || die_validation "SITE_TITLE has characters that are not allowed"
        ;;
    *) die_validation "MODE must be proxy or static" ;;
esac

# --- 1. install the package when missing ---
log_step "Package $PKG"
if pkg_installed "$PKG"; then
    log_ok "$PKG is already installed"
else
    before="$(pkg_installed_list)"
    user_existed=true
    getent passwd caddy >/dev/null || user_existed=false
    pkg_ensure "$PKG"
    # Remember what this app added (the package and its new dependencies), so that
    # uninstall.sh removes exactly that and nothing that was here before.
    install -d -m 0755 "$STATE_DIR"
    comm -13 <(printf '%s\n' "$before") <(pkg_installed_list) \
        | write_file "$STATE_DIR/installed-packages" 0644
    if [[ "$user_existed" == false ]] && getent passwd caddy >/dev/null; then
        printf '%s\n' caddy | write_file "$STATE_DIR/created-user" 0644
    fi
    if [[ "$(service_manager caddy)" == systemd ]]; then
        # The package starts its own caddy.service on port 80 (nginx's port): not ours.
        systemctl disable --now caddy.service >/dev/null 2>&1 || true
    fi
fi
[[ -x "$CADDY" ]] || die_retry "$CADDY is missing after installing $PKG"
getent passwd caddy >/dev/null || die_retry "the caddy user is missing (package not configured?)"

# --- 2. always write the config (and, for a static site, its page) ---
log_step "Configuration"
install -d -m 0750 -o caddy -g caddy "$ADMIN_DIR"
if [[ "$MODE" == static ]]; then
    site_dir="$SITES_ROOT/$SITE_NAME"
    if [[ ! -d /var/www ]]; then
        # Remember it, so uninstall.sh with REMOVE_DATA=true leaves no empty /var/www behind.
        install -d -m 0755 "$STATE_DIR"
        : >"$STATE_DIR/created-var-www"
    fi
    install -d -m 0755 "$SITES_ROOT" "$site_dir"
    title="$SITE_TITLE"
    amp='&amp;' apos='&#39;'
    # Quoted replacements: bash 5.2 gives an unquoted & in a replacement a meaning.
    title="${title//&/"$amp"}"
    title="${title//\'/"$apos"}"
    # A new page is served at once by the file server: no reload needed for it.
    write_file "$site_dir/index.html" 0644 <<HTML
<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>$title</title>
  </head>
  <body>
    <h1>$title</h1>
    <p>This site is served by Caddy, installed by the provisioning panel.</p>
  </body>
</html>
HTML
fi

{
    printf '# Managed by the provisioning panel (app reverse-proxy); changes here are overwritten.\n'
    printf '{\n'
    printf '\tadmin unix/%s\n' "$ADMIN_SOCKET"
    printf '\tauto_https off\n'
    printf '}\n\n'
    printf 'http://:%s {\n' "$LISTEN_PORT"
    if is_true "$SECURITY_HEADERS"; then
        printf '\theader {\n'
        printf '\t\tX-Content-Type-Options nosniff\n'
        printf '\t\tX-Frame-Options DENY\n'
        printf '\t\tReferrer-Policy no-referrer\n'
        printf '\t\t-Server\n'
        printf '\t}\n'
    fi
    if [[ "$MODE" == proxy ]]; then
        printf '\treverse_proxy %s\n' "$UPSTREAM_URL"
    else
        printf '\troot * %s\n' "$site_dir"
        printf '\tfile_server\n'
    fi
    printf '}\n'
} | {
    backup_file "$CADDYFILE"
    write_file "$CADDYFILE" 0644 root:root
}
caddyfile_changed="$WRITE_CHANGED"

# How the daemon runs where there is no systemd (the library's supervised mode).
# shellcheck disable=SC2034  # read by the library
SERVICE_CMD_PROVISION_CADDY=(
    "HOME=$CADDY_HOME" "XDG_DATA_HOME=$CADDY_HOME/.local/share" "XDG_CONFIG_HOME=$CADDY_HOME/.config"
    "$CADDY" run --config "$CADDYFILE" --adapter caddyfile
)
# shellcheck disable=SC2034  # read by the library
SERVICE_USER_PROVISION_CADDY=caddy
if [[ "$(service_manager "$SERVICE")" == systemd ]]; then
    write_file "$UNIT_FILE" 0644 root:root <<UNIT
# Managed by the provisioning panel (app reverse-proxy).
[Unit]
Description=Caddy for the provisioning panel ($CADDYFILE)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
User=caddy
Group=caddy
Environment=HOME=$CADDY_HOME
RuntimeDirectory=provision-caddy
RuntimeDirectoryPreserve=yes
ExecStart=$CADDY run --environ --config $CADDYFILE --adapter caddyfile
ExecReload=$CADDY reload --config $CADDYFILE --adapter caddyfile --force
Restart=on-failure
AmbientCapabilities=CAP_NET_BIND_SERVICE

[Install]
WantedBy=multi-user.target
UNIT
    if [[ "$WRITE_CHANGED" == true ]]; then
        systemctl daemon-reload
    fi
fi

reject() {
    restore_file "$CADDYFILE"
    die_config "$1"
}

# --- 3. test the config ---
if [[ "$caddyfile_changed" == true ]]; then
    log_step "Testing the configuration"
    if ! output="$("$CADDY" validate --config "$CADDYFILE" --adapter caddyfile 2>&1)"; then
        printf '%s\n' "$output" | grep -v '"level":"info"' | tail -n 5 >&2 || true
        reject "caddy refuses the new configuration; the previous one stays"
    fi
    log_ok "caddy validate: the configuration is valid"
else
    drop_backup "$CADDYFILE"
fi

# --- 4. start, or reload only when the config changed ---
log_step "Service $SERVICE"
if ! service_running "$SERVICE"; then
    service_start "$SERVICE" || true
elif [[ "$caddyfile_changed" == true ]]; then
    # A graceful reload through Caddy's admin socket: same process, no dropped connections.
    log_info "reloading $SERVICE"
    if ! output="$("$CADDY" reload --config "$CADDYFILE" --adapter caddyfile 2>&1)"; then
        printf '%s\n' "$output" | grep -v '"level":"info"' | tail -n 5 >&2 || true
        restore_file "$CADDYFILE"
        "$CADDY" reload --config "$CADDYFILE" --adapter caddyfile --force >/dev/null 2>&1 \
            || log_warn "could not reload the previous configuration"
        die_config "caddy could not apply the new configuration; the previous one stays"
    fi
else
    log_ok "$SERVICE is running with this configuration"
fi
service_enable "$SERVICE" || true

# --- 5. verify Caddy answers on the port ---
answer() { # the HTTP status of GET / (000 when nothing answers)
    curl -sS -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$LISTEN_PORT/" 2>/dev/null \
        || true
}
status=000
for _ in $(seq 1 50); do
    status="$(answer)"
    [[ "$status" != 000 ]] && break
    sleep 0.2
done
if [[ "$status" == 000 ]]; then
    if [[ "$caddyfile_changed" == true ]]; then
        log_warn "restoring the previous configuration of $SERVICE"
        restore_file "$CADDYFILE"
        service_restart "$SERVICE" || log_warn "could not restart $SERVICE with the previous configuration"
        die_config "caddy does not answer on port $LISTEN_PORT with the new configuration"
    fi
    die_retry "caddy does not answer on port $LISTEN_PORT"
fi
drop_backup "$CADDYFILE"
if [[ "$MODE" == proxy && "$status" =~ ^5 ]]; then
    log_warn "caddy answers, but the upstream $UPSTREAM_URL does not (HTTP $status)"
fi
log_ok "caddy answers on http://127.0.0.1:$LISTEN_PORT/ (HTTP $status, mode $MODE)"
