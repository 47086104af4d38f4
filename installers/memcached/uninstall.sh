#!/usr/bin/env bash
# Uninstall memcached: stop it and remove the packages this app installed. memcached keeps
# nothing on disk; REMOVE_DATA=true also purges its config and log.
# Exit codes (installers/README.md): 0 done (also when nothing was installed).
# shellcheck source=SCRIPTDIR/../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly PKG=memcached
readonly SERVICE=memcached
readonly STATE_DIR=/var/lib/provision/memcached
REMOVE_DATA="${REMOVE_DATA:-false}"

if pkg_installed "$PKG"; then
    log_step "Stopping $SERVICE"
    if service_running "$SERVICE"; then
        service_stop "$SERVICE" || log_warn "could not stop $SERVICE"
    fi
    service_disable "$SERVICE" || true
fi
rm -f /etc/memcached.conf.prov-bak

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
    rm -rf -- "$STATE_DIR"
fi
rmdir -- "$STATE_DIR" 2>/dev/null || true
log_ok "memcached is uninstalled"
