#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Uninstall the PostgreSQL cluster "provision": stop it and remove the settings this app wrote.
# Its data (the cluster, with its databases) is kept unless REMOVE_DATA=true, which drops the
# whole cluster (pg_dropcluster). Debian's postgresql packages stay installed: the "main"
# cluster or others may use them.
# Exit codes (installers/README.md): 0 done (also when nothing was installed), 1 validation error.
#
# shellcheck source=../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

readonly CLUSTER="provision"
readonly CLEAN_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

clean_env() {
    env -i PATH="$CLEAN_PATH" LANG=C.UTF-8 "$@"
}

log_step "removing PostgreSQL cluster $CLUSTER"
if ! command -v pg_lsclusters >/dev/null 2>&1; then
    log_ok "PostgreSQL is not installed: nothing to remove"
    exit 0
fi
# Every version that has a cluster of that name (normally just one).
mapfile -t versions < <(clean_env pg_lsclusters -h 2>/dev/null \
    | awk -v name="$CLUSTER" '$2 == name { print $1 }')
if ((${#versions[@]} == 0)); then
    log_ok "no cluster $CLUSTER: nothing to remove"
    exit 0
fi
for version in "${versions[@]}"; do
    if is_true "${REMOVE_DATA:-false}"; then
        log_info "dropping cluster $version/$CLUSTER and its data"
        clean_env pg_dropcluster --stop "$version" "$CLUSTER" \
            || die_retry "pg_dropcluster $version $CLUSTER failed"
        # pg_dropcluster leaves files it does not know: our settings, and then empty folders.
        rm -f -- "/etc/postgresql/$version/$CLUSTER/conf.d/provision.conf" \
            "/var/log/postgresql/postgresql-$version-$CLUSTER.log"
        rmdir -- "/etc/postgresql/$version/$CLUSTER/conf.d" "/etc/postgresql/$version/$CLUSTER" \
            2>/dev/null || true
    else
        if clean_env pg_ctlcluster "$version" "$CLUSTER" status >/dev/null 2>&1; then
            log_info "stopping cluster $version/$CLUSTER"
            clean_env pg_ctlcluster "$version" "$CLUSTER" stop -m fast \
                || die_retry "pg_ctlcluster $version $CLUSTER stop failed"
        fi
        # Keep it from starting at boot; a new install run writes its settings again and
        # starts it (pg_ctlcluster starts a "manual" cluster when asked).
        printf 'manual\n' | write_file "/etc/postgresql/$version/$CLUSTER/start.conf" 0644 \
            postgres:postgres
        rm -f -- "/etc/postgresql/$version/$CLUSTER/conf.d/provision.conf"
        log_ok "stopped $version/$CLUSTER; its data is kept (REMOVE_DATA=true drops the cluster)"
    fi
done
