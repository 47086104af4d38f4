#!/usr/bin/env bash
# Uninstall the reverse proxy: stop this app's Caddy, remove its config and the packages
# this app installed. The static sites in /var/www/provision-site (and Caddy's own data in
# /var/lib/caddy) are kept unless REMOVE_DATA=true.
# Exit codes (installers/README.md): 0 done (also when nothing was installed).
# shellcheck source=SCRIPTDIR/../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly PKG=caddy
readonly SERVICE=provision-caddy
readonly CADDYFILE=/etc/caddy/provision.Caddyfile
readonly ADMIN_DIR=/run/provision-caddy
readonly SITES_ROOT=/var/www/provision-site
readonly STATE_DIR=/var/lib/provision/reverse-proxy
readonly UNIT_FILE=/etc/systemd/system/provision-caddy.service
REMOVE_DATA="${REMOVE_DATA:-false}"

log_step "Stopping $SERVICE"
if service_running "$SERVICE"; then
    service_stop "$SERVICE" || log_warn "could not stop $SERVICE"
else
    log_info "$SERVICE is not running"
fi
if [[ -e "$UNIT_FILE" ]]; then
    service_disable "$SERVICE" || true
    rm -f -- "$UNIT_FILE"
    if [[ "$(service_manager "$SERVICE")" == systemd ]]; then
        systemctl daemon-reload || true
    fi
fi
rm -f -- "$CADDYFILE" "$CADDYFILE.prov-bak"
rm -rf -- "$ADMIN_DIR"
log_ok "removed $CADDYFILE"

if [[ -s "$STATE_DIR/installed-packages" ]]; then
    if is_true "$REMOVE_DATA"; then
        dpkg_remove_recorded --purge "$STATE_DIR/installed-packages" "$PKG"
    else
        dpkg_remove_recorded --remove "$STATE_DIR/installed-packages" "$PKG"
    fi
else
    log_info "$PKG was not installed by this app: the package stays"
fi

if is_true "$REMOVE_DATA"; then
    log_step "Removing data"
    if [[ -s "$STATE_DIR/created-user" ]] && ! pkg_installed "$PKG"; then
        user="$(<"$STATE_DIR/created-user")"
        if getent passwd "$user" >/dev/null; then
            userdel "$user" || log_warn "could not remove the user $user"
        fi
        if getent group "$user" >/dev/null; then
            groupdel "$user" 2>/dev/null || true
        fi
        log_ok "removed the system user $user"
    fi
    rm -rf -- "$SITES_ROOT" /var/log/provision/provision-caddy.log
    if [[ -e "$STATE_DIR/created-var-www" ]]; then
        rmdir -- /var/www 2>/dev/null || true
    fi
    rm -rf -- "$STATE_DIR"
    log_ok "removed $SITES_ROOT"
else
    rmdir -- "$STATE_DIR" 2>/dev/null || true
    log_info "kept $SITES_ROOT (REMOVE_DATA=true removes it)"
fi
log_ok "reverse-proxy is uninstalled"
