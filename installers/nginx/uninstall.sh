#!/usr/bin/env bash
# Uninstall what installers/nginx added: our site, its certificate, and the nginx packages
# only when this installer installed them (the marker lists them). The web root
# /var/www/provision-nginx is data: kept unless REMOVE_DATA=true.
# Exit codes: 0 done (also when nothing was installed), 2 apt failed (try again).
# shellcheck source=../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly SITE_AVAILABLE=/etc/nginx/sites-available/provision.conf
readonly SITE_ENABLED=/etc/nginx/sites-enabled/provision.conf
readonly DEFAULT_SITE=/etc/nginx/sites-enabled/default
readonly WEB_ROOT=/var/www/provision-nginx
readonly TLS_DIR=/etc/nginx/provision-tls
readonly DEFAULT_STATE=/var/lib/provision/nginx.default-site-disabled

log_step "removing the site"
rm -f "$SITE_ENABLED" "$SITE_AVAILABLE" "$SITE_AVAILABLE.prov-bak"
rm -rf "$TLS_DIR"
if [[ -s "$DEFAULT_STATE" && ! -e "$DEFAULT_SITE" ]] && [[ -e "$(<"$DEFAULT_STATE")" ]]; then
    ln -sfn "$(<"$DEFAULT_STATE")" "$DEFAULT_SITE"
    log_info "re-enabled the default site"
fi
rm -f "$DEFAULT_STATE"

if marker_exists nginx; then
    log_step "removing nginx (installed by the panel)"
    if pkg_installed nginx && service_running nginx; then
        service_stop nginx || log_warn "nginx did not stop cleanly"
    fi
    service_disable nginx || true
    mapfile -t ours <"$(marker_path nginx)"
    if ((${#ours[@]} == 0)); then
        # An install killed while apt ran leaves the marker without its list: nginx's own.
        ours=(nginx nginx-common)
    fi
    present=()
    for pkg in "${ours[@]}"; do
        if [[ -n "$pkg" ]] && pkg_installed "$pkg"; then
            present+=("$pkg")
        fi
    done
    if ((${#present[@]} > 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=120 \
            "${present[@]}" || die_retry "apt-get purge ${present[*]} failed"
    fi
    # The package's postinst writes Debian's welcome page outside dpkg's file list: it goes too.
    rm -f /var/www/html/index.nginx-debian.html
    rmdir /var/www/html 2>/dev/null || true
    marker_clear nginx
    rmdir /var/lib/provision 2>/dev/null || true
elif pkg_installed nginx; then
    log_step "nginx was installed before the panel: keeping it, reloading without our site"
    if service_running nginx; then
        if nginx -t >/dev/null 2>&1; then
            service_reload nginx
        else
            log_warn "nginx -t fails without our site; not reloading"
        fi
    fi
fi

if is_true "${REMOVE_DATA:-false}"; then
    log_step "removing the data in $WEB_ROOT"
    rm -rf "$WEB_ROOT"
    rmdir /var/www 2>/dev/null || true
else
    log_info "kept $WEB_ROOT (REMOVE_DATA=true removes it)"
fi
log_ok "nginx site removed"
