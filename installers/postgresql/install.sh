#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install a dedicated PostgreSQL cluster "provision" (Debian's postgresql packages) with one
# database and its owner role. Debian's "main" cluster is never touched.
#
# Inputs (installers/README.md): PORT, LISTEN_ADDRESS, DATABASE, OWNER, OWNER_PASSWORD, MAX_CONNECTIONS.
# Exit codes (installers/README.md): 0 done, 1 validation error, 2 install error (retried), 3 config error.
#
# Idempotent: installs the packages only when missing, creates the cluster only when it does
# not exist, always rewrites its settings (conf.d/provision.conf) and pg_hba.conf atomically
# ("unchanged" when identical), restarts the cluster only when a setting changed (reloads
# when only pg_hba.conf did), creates the role and the database only when missing. A config
# PostgreSQL rejects puts the previous files back, brings the cluster up again, exits 3.
#
# The password never appears on a command line (ps) or in the output: it reaches psql as SQL
# on stdin, and the checks connect with PGPASSWORD in psql's environment.
#
# shellcheck source=../_lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
prov_init

# --- validate (the agent validated already; this guards against a hand-run script) ---
require_env PORT LISTEN_ADDRESS DATABASE OWNER OWNER_PASSWORD MAX_CONNECTIONS

if ! [[ "$PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1024 || 10#$PORT > 65535)); then
    die_validation "PORT must be a number between 1024 and 65535"
fi
PORT=$((10#$PORT))
case "$LISTEN_ADDRESS" in
    localhost | '*') ;;
    *) die_validation "LISTEN_ADDRESS must be localhost or *" ;;
esac
readonly NAME_RE='^[a-z_][a-z0-9_]{0,62}$'
[[ "$DATABASE" =~ $NAME_RE ]] || die_validation "DATABASE must match $NAME_RE"
# shellcheck disable=SC2153  # OWNER is an input (from the environment)
[[ "$OWNER" =~ $NAME_RE ]] || die_validation "OWNER must match $NAME_RE"
case "$DATABASE" in
    postgres | template0 | template1) die_validation "DATABASE $DATABASE is a system database" ;;
esac
if [[ "$OWNER" == "postgres" || "$OWNER" == pg_* || "$OWNER" == "public" ]]; then
    die_validation "OWNER may not be postgres, public or start with pg_ (reserved roles)"
fi
if ! [[ "$MAX_CONNECTIONS" =~ ^[0-9]{1,4}$ ]] || ((10#$MAX_CONNECTIONS < 10 || 10#$MAX_CONNECTIONS > 1000)); then
    die_validation "MAX_CONNECTIONS must be a number between 10 and 1000"
fi
MAX_CONNECTIONS=$((10#$MAX_CONNECTIONS))
if ((${#OWNER_PASSWORD} < 12)); then
    die_validation "OWNER_PASSWORD must be at least 12 characters long"
fi

readonly CLUSTER="provision"
readonly CLEAN_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# --- helpers ---
# Cluster tools run in a clean environment: the inputs (the password above all) must never
# reach the server's /proc/PID/environ. PROV_JOB_ID stays, so the agent's sweep finds the
# server if this run is cancelled or times out.
clean_env() {
    env -i PATH="$CLEAN_PATH" LANG=C.UTF-8 PROV_JOB_ID="${PROV_JOB_ID:-}" "$@"
}

ctl() {
    clean_env pg_ctlcluster "$PG_VERSION" "$CLUSTER" "$@"
}

cluster_running() {
    clean_env pg_ctlcluster "$PG_VERSION" "$CLUSTER" status >/dev/null 2>&1
}

server_pid() {
    head -n 1 "$DATA_DIR/postmaster.pid" 2>/dev/null || echo '?'
}

# psql as the postgres superuser over the local socket; SQL comes on stdin.
psql_admin() {
    clean_env runuser -u postgres -- psql -X -q -w -v ON_ERROR_STOP=1 -h /var/run/postgresql \
        -p "$PORT" -d postgres "$@"
}

# 0 when the owner can log in to the database over TCP with the password. PGPASSWORD is set
# for psql alone (its environment, not its arguments: ps never shows it).
owner_connects() {
    local reply
    reply="$(PGPASSWORD="$OWNER_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -w -h 127.0.0.1 \
        -p "$PORT" -U "$OWNER" -d "$DATABASE" -At -c 'SELECT 1' 2>/dev/null)" || return 1
    [[ "$reply" == "1" ]]
}

wait_until_accepting() {
    # Up to 30 s for the server to accept connections on the local socket.
    local started=$SECONDS
    while ((SECONDS - started < 30)); do
        if clean_env runuser -u postgres -- pg_isready -q -h /var/run/postgresql -p "$PORT"; then
            return 0
        fi
        sleep 0.3
    done
    return 1
}

log_offset=0
log_mark() {
    # Remember where the server log ends, so log_reason reads only what follows.
    log_offset="$(stat -c '%s' -- "$LOG_FILE" 2>/dev/null || echo 0)"
}

log_reason() {
    # The server's complaints since log_mark (FATAL, ERROR, LOG lines naming a failure).
    tail -c "+$((log_offset + 1))" -- "$LOG_FILE" 2>/dev/null \
        | grep -E 'FATAL|ERROR|could not|invalid' | tail -n 3 | sed -e 's/^.*\] //' \
        | tr '\n' ' ' || true
}

# --- 1. install what is missing ---
log_step "PostgreSQL cluster $CLUSTER"
pkg_ensure postgresql postgresql-common
PG_VERSION="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' \
    -printf '%f\n' 2>/dev/null | sort -n | tail -n 1)"
[[ -n "$PG_VERSION" ]] || die_retry "no PostgreSQL server version under /usr/lib/postgresql"
readonly PG_VERSION
readonly CONF_DIR="/etc/postgresql/$PG_VERSION/$CLUSTER"
readonly DATA_DIR="/var/lib/postgresql/$PG_VERSION/$CLUSTER"
readonly SETTINGS="$CONF_DIR/conf.d/provision.conf"
readonly HBA="$CONF_DIR/pg_hba.conf"
readonly LOG_FILE="/var/log/postgresql/postgresql-$PG_VERSION-$CLUSTER.log"

# --- 2. the cluster, created once ---
if [[ -f "$CONF_DIR/postgresql.conf" && -f "$DATA_DIR/PG_VERSION" ]]; then
    log_ok "cluster $PG_VERSION/$CLUSTER exists"
else
    log_info "creating cluster $PG_VERSION/$CLUSTER on port $PORT"
    if ! output="$(clean_env pg_createcluster "$PG_VERSION" "$CLUSTER" --port "$PORT" \
        -- --auth-local=peer --auth-host=scram-sha-256 2>&1)"; then
        printf '%s\n' "$output" | tail -n 5 >&2
        die_config "pg_createcluster $PG_VERSION $CLUSTER failed"
    fi
fi

# --- 3. settings and pg_hba.conf, always written (atomically) ---
# Started at boot by Debian's init script (uninstall.sh sets "manual" while data is kept).
printf '# Written by the provisioning panel (installers/postgresql).\nauto\n' \
    | write_file "$CONF_DIR/start.conf" 0644 postgres:postgres

backup_file "$SETTINGS"
write_file "$SETTINGS" 0644 postgres:postgres <<CONF
# Cluster $CLUSTER, written by the provisioning panel (installers/postgresql).
# Rewritten on every install run: edit the inputs in the panel, not this file.
port = $PORT
listen_addresses = '$LISTEN_ADDRESS'
max_connections = $MAX_CONNECTIONS
password_encryption = 'scram-sha-256'
CONF
settings_changed="$WRITE_CHANGED"

hba_remote=""
if [[ "$LISTEN_ADDRESS" == "*" ]]; then
    hba_remote="host    $DATABASE  $OWNER  0.0.0.0/0      scram-sha-256
host    $DATABASE  $OWNER  ::/0           scram-sha-256"
fi
backup_file "$HBA"
write_file "$HBA" 0640 postgres:postgres <<HBA
# pg_hba.conf of cluster $CLUSTER, written by the provisioning panel (installers/postgresql).
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer
local   all       all                      peer
host    $DATABASE  $OWNER  127.0.0.1/32   scram-sha-256
host    $DATABASE  $OWNER  ::1/128        scram-sha-256
$hba_remote
HBA
hba_changed="$WRITE_CHANGED"

restore_config() {
    log_warn "PostgreSQL rejected the new config; restoring the previous one"
    restore_file "$SETTINGS" || true
    restore_file "$HBA" || true
}

# Parse the whole configuration (postgresql.conf and its includes) without touching the
# running server: a syntax error or a bad value is caught before any restart.
if ! check="$(clean_env runuser -u postgres -- "/usr/lib/postgresql/$PG_VERSION/bin/postgres" \
    -D "$DATA_DIR" -c "config_file=$CONF_DIR/postgresql.conf" -C max_connections 2>&1)"; then
    restore_config
    die_config "the new settings do not parse: $(printf '%s' "$check" | tail -n 2 | tr '\n' ' ')"
fi

# --- 4. start, restart (a setting changed) or reload (only pg_hba.conf changed) ---
log_mark
applied=true
if ! cluster_running; then
    log_info "starting cluster $PG_VERSION/$CLUSTER"
    ctl start >/dev/null 2>&1 || applied=false
elif [[ "$settings_changed" == "true" ]]; then
    log_info "settings changed: restarting cluster $PG_VERSION/$CLUSTER"
    ctl restart -m fast >/dev/null 2>&1 || applied=false
elif [[ "$hba_changed" == "true" ]]; then
    log_info "pg_hba.conf changed: reloading cluster $PG_VERSION/$CLUSTER"
    ctl reload >/dev/null 2>&1 || applied=false
else
    log_ok "cluster is running and nothing changed (pid $(server_pid))"
fi
if [[ "$applied" == "true" ]] && ! wait_until_accepting; then
    applied=false
fi
if [[ "$applied" == "true" ]]; then
    # pg_hba.conf errors do not stop a reload: the server keeps the old rules and reports.
    hba_errors="$(printf 'SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL;\n' \
        | psql_admin -At 2>/dev/null || echo 1)"
    [[ "$hba_errors" == "0" ]] || applied=false
fi
if [[ "$applied" != "true" ]]; then
    reason="$(log_reason)"
    restore_config
    if cluster_running; then
        log_info "reloading cluster $PG_VERSION/$CLUSTER with the previous config"
        ctl reload >/dev/null 2>&1 || true
    else
        log_info "starting cluster $PG_VERSION/$CLUSTER with the previous config"
        ctl start >/dev/null 2>&1 || log_warn "the previous config did not start either"
    fi
    die_config "cluster $PG_VERSION/$CLUSTER did not come up with the new config: ${reason:-see $LOG_FILE}"
fi
drop_backup "$SETTINGS"
drop_backup "$HBA"

# --- 5. the owner role and the database, created only when missing ---
# Identifiers were validated against ^[a-z_][a-z0-9_]{0,62}$; quoting them keeps them exact.
# The password is a SQL string literal on psql's stdin (quotes doubled), never an argument.
if owner_connects; then
    log_ok "role $OWNER and database $DATABASE exist and the password works"
else
    log_info "ensuring role $OWNER and database $DATABASE"
    sql_password="${OWNER_PASSWORD//\'/\'\'}"
    psql_admin <<SQL || die_config "could not create role $OWNER or database $DATABASE"
SELECT 'CREATE ROLE "$OWNER" LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$OWNER') \gexec
ALTER ROLE "$OWNER" WITH LOGIN PASSWORD '$sql_password';
SELECT 'CREATE DATABASE "$DATABASE" OWNER "$OWNER"'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE') \gexec
ALTER DATABASE "$DATABASE" OWNER TO "$OWNER";
SQL
fi

# --- 6. verify: the owner logs in to the database over TCP ---
for _ in $(seq 1 20); do
    if owner_connects; then
        log_ok "PostgreSQL $PG_VERSION/$CLUSTER answers on port $PORT; $OWNER can use $DATABASE (pid $(server_pid))"
        exit 0
    fi
    sleep 0.5
done
die_config "$OWNER could not connect to $DATABASE on 127.0.0.1:$PORT"
