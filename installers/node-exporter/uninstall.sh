#!/usr/bin/env bash
# Uninstall the Prometheus node exporter: stop it and remove the package this app installed.
# The text-file metrics in /var/lib/prometheus/node-exporter are kept unless REMOVE_DATA=true.
# Exit codes (installers/README.md): 0 done (also when nothing was installed).
# shellcheck source=SCRIPTDIR/../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly PKG=prometheus-node-exporter
readonly SERVICE=prometheus-node-exporter
readonly TEXTFILE_DIR=/var/lib/prometheus/node-exporter
readonly STATE_DIR=/var/lib/provision/node-exporter
REMOVE_DATA="${REMOVE_DATA:-false}"

log_step "Stopping $SERVICE"
if pkg_installed "$PKG"; then
    if service_running "$SERVICE"; then
        service_stop "$SERVICE" || log_warn "could not stop $SERVICE"
    fi
    service_disable "$SERVICE" || true
fi

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
    rm -rf -- "$TEXTFILE_DIR" "$STATE_DIR"
    rmdir -- /var/lib/prometheus 2>/dev/null || true
    log_ok "removed $TEXTFILE_DIR"
else
    rmdir -- "$STATE_DIR" 2>/dev/null || true
    log_info "kept $TEXTFILE_DIR (REMOVE_DATA=true removes it)"
fi
log_ok "node-exporter is uninstalled"
