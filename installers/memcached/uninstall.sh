#!/usr/bin/env bash
# Uninstall memcached: stop it and remove the packages this app installed. memcached keeps
# nothing on disk; REMOVE_DATA=true also purges its config and log.
# Exit codes (DESIGN §6): 0 done (also when nothing was installed).
# shellcheck source=SCRIPTDIR/../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly PKG=memcached
readonly SERVICE=memcached
readonly STATE_DIR=/var/lib/provision/memcached
REMOVE_DATA="${REMOVE_DATA:-false}"

# dpkg_remove_recorded ACTION: remove (ACTION --remove) or purge (--purge) the packages in
# $STATE_DIR/installed-packages. dpkg, not apt-get, so a dependency that other software
# needs by now stays (dpkg refuses it); dpkg has no lock timeout, so a lock held by another
# apt/dpkg run is waited for here (up to 2 minutes). Packages that stay remain recorded.
dpkg_remove_recorded() {
    local action="$1" list="$STATE_DIR/installed-packages" output pkg left=()
    local -a packages
    mapfile -t packages <"$list"
    log_step "Removing the packages this app installed: ${packages[*]}"
    for _ in $(seq 1 60); do
        if output="$(dpkg "$action" "${packages[@]}" 2>&1)"; then
            break
        fi
        grep -qi 'lock' <<<"$output" || break
        log_info "dpkg is locked by another package run; waiting"
        sleep 2
    done
    [[ -z "${output:-}" ]] || printf '%s\n' "$output" | grep -v '^(Reading database' || true
    for pkg in "${packages[@]}"; do
        if [[ "$action" == --purge ]] && dpkg-query -W "$pkg" >/dev/null 2>&1 \
            && [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != "un " ]]; then
            left+=("$pkg")
        elif pkg_installed "$pkg"; then
            left+=("$pkg")
        fi
    done
    if ((${#left[@]} == 0)); then
        # After a plain remove the list stays: a later REMOVE_DATA=true run purges the
        # configuration files dpkg kept.
        [[ "$action" == --remove ]] || rm -f -- "$list"
        log_ok "removed ${packages[*]}"
        return 0
    fi
    printf '%s\n' "${left[@]}" >"$list"
    for pkg in "${left[@]}"; do
        if [[ "$pkg" == "$PKG" ]]; then
            die_retry "could not remove $PKG; run the uninstall again"
        fi
    done
    log_warn "kept ${left[*]}: other software depends on them"
}

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
        dpkg_remove_recorded --purge
    else
        dpkg_remove_recorded --remove
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
