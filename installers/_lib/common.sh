#!/usr/bin/env bash
# Shared shell library for installers (see CONTRACT.md and installers/README.md).
#
# Usage, at the top of install.sh / uninstall.sh:
#
#     #!/usr/bin/env bash
#     # shellcheck source=../_lib/common.sh
#     source "$(dirname -- "${BASH_SOURCE[0]}")/../_lib/common.sh" || exit 3
#     prov_init
#
# Progress goes to stdout, warnings and errors to stderr. Never `set -x`: the agent streams
# every line, and a trace would print the secrets it expands.
#
# This file only defines functions and a few read-only constants; sourcing it changes no
# shell option until prov_init is called.

# Guard against sourcing twice (a helper sourcing it again must not reset the accumulators).
if [[ -n "${_PROV_COMMON_LOADED:-}" ]]; then
    return 0
fi
_PROV_COMMON_LOADED=1

readonly PROV_EXIT_VALIDATION=1
readonly PROV_EXIT_RETRY=2
readonly PROV_EXIT_CONFIG=3
# Where installers keep their own state (markers, pid files of supervised daemons).
PROV_STATE_DIR="${PROV_STATE_DIR:-/var/lib/provision}"
PROV_RUN_DIR="${PROV_RUN_DIR:-/run/provision}"
PROV_LOG_DIR="${PROV_LOG_DIR:-/var/log/provision}"

# Accumulators (see write_file and pkg_ensure). Exported names are not used: plain globals.
PROV_CHANGED="${PROV_CHANGED:-false}"
PROV_PKG_INSTALLED="${PROV_PKG_INSTALLED:-false}"
WRITE_CHANGED=false
# Files that did not exist when backup_file was called (restore_file removes them again).
_PROV_BACKUP_ABSENT=()

# --------------------------------------------------------------------------------------------
# init and logging
# --------------------------------------------------------------------------------------------

# prov_init: strict mode, umask 022, an ERR trap naming the failing command and line.
# Also `shopt -s lastpipe`, so `printf ... | write_file ...` runs write_file in this shell and
# its WRITE_CHANGED / PROV_CHANGED survive the pipeline.
prov_init() {
    set -euo pipefail
    set -E
    set +x
    shopt -s lastpipe
    umask 022
    trap '_prov_on_err "$?" "${LINENO}" "${BASH_COMMAND}"' ERR
}

# The ERR handler: one readable line on stderr. BASH_COMMAND is the command's source text
# (before expansion), so a secret held in a variable is never printed by it.
_prov_on_err() {
    local status="$1" line="$2" command="$3"
    local file="${BASH_SOURCE[1]:-${0}}"
    printf 'error: command failed with exit %s at %s line %s: %s\n' \
        "$status" "${file##*/}" "$line" "$command" >&2
    return "$status"
}

log_step() { printf '==> %s\n' "$*"; }
log_info() { printf '    %s\n' "$*"; }
log_ok() { printf 'ok: %s\n' "$*"; }
log_warn() { printf 'warning: %s\n' "$*" >&2; }

_prov_die() {
    local code="$1"
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$code"
}
die_validation() { _prov_die "$PROV_EXIT_VALIDATION" "$@"; }
die_retry() { _prov_die "$PROV_EXIT_RETRY" "$@"; }
die_config() { _prov_die "$PROV_EXIT_CONFIG" "$@"; }

# require_env NAME...: exit 1 naming every missing or empty variable (all of them, not just
# the first).
require_env() {
    local name _prov_missing=()
    for name in "$@"; do
        if [[ ! "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [[ -z "${!name:-}" ]]; then
            _prov_missing+=("$name")
        fi
    done
    if ((${#_prov_missing[@]} > 0)); then
        for name in "${_prov_missing[@]}"; do
            printf 'error: %s is required (missing or empty)\n' "$name" >&2
        done
        exit "$PROV_EXIT_VALIDATION"
    fi
}

# is_true VALUE: 0 when VALUE is exactly "true" (inputs arrive normalised "true"/"false").
is_true() {
    [[ "${1:-}" == "true" ]]
}

# --------------------------------------------------------------------------------------------
# packages
# --------------------------------------------------------------------------------------------

# pkg_installed PKG: 0 when dpkg says "install ok installed".
pkg_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" || return 1
    [[ "$status" == "install ok installed" ]]
}

# 0 when the apt lists are missing or older than 24 hours.
_prov_apt_lists_stale() {
    local lists=/var/lib/apt/lists
    [[ -d "$lists" ]] || return 0
    [[ -z "$(find "$lists" -maxdepth 1 -type f -name '*_Packages*' -print -quit 2>/dev/null)" ]] \
        && return 0
    [[ -z "$(find "$lists" -maxdepth 1 -type f -name '*_Packages*' -mmin -1440 -print -quit \
        2>/dev/null)" ]]
}

_prov_apt_update() {
    log_info "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=120
}

_prov_apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold -o DPkg::Lock::Timeout=120 "$@"
}

# pkg_ensure PKG...: install only the missing ones; a failure is temporary (exit 2).
pkg_ensure() {
    local pkg _prov_missing=()
    for pkg in "$@"; do
        if ! pkg_installed "$pkg"; then
            _prov_missing+=("$pkg")
        fi
    done
    if ((${#_prov_missing[@]} == 0)); then
        log_ok "already installed: $*"
        return 0
    fi
    log_step "installing ${_prov_missing[*]}"
    if _prov_apt_lists_stale; then
        _prov_apt_update || die_retry "apt-get update failed"
    fi
    if ! _prov_apt_install "${_prov_missing[@]}"; then
        log_warn "apt-get install failed; updating the package lists and trying once more"
        _prov_apt_update || die_retry "apt-get update failed"
        _prov_apt_install "${_prov_missing[@]}" || die_retry "apt-get install ${_prov_missing[*]} failed"
    fi
    for pkg in "${_prov_missing[@]}"; do
        pkg_installed "$pkg" || die_retry "$pkg is still not installed after apt-get install"
    done
    PROV_PKG_INSTALLED=true
    log_ok "installed ${_prov_missing[*]}"
}

# pkg_remove PKG...: remove (not purge) the installed ones; a failure exits 2.
# (extension; not in CONTRACT.md)
pkg_remove() {
    local pkg _prov_present=()
    for pkg in "$@"; do
        if pkg_installed "$pkg"; then
            _prov_present+=("$pkg")
        fi
    done
    ((${#_prov_present[@]} > 0)) || return 0
    log_step "removing ${_prov_present[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -q -o DPkg::Lock::Timeout=120 \
        "${_prov_present[@]}" || die_retry "apt-get remove ${_prov_present[*]} failed"
}

# Markers for "this package was installed by the panel", so an uninstaller removes only what
# it added: $PROV_STATE_DIR/NAME.installed-by-provision. (extension; not in CONTRACT.md)
marker_path() { printf '%s/%s.installed-by-provision\n' "$PROV_STATE_DIR" "$1"; }
marker_set() {
    mkdir -p "$PROV_STATE_DIR"
    : >"$(marker_path "$1")"
}
marker_exists() { [[ -e "$(marker_path "$1")" ]]; }
marker_clear() { rm -f -- "$(marker_path "$1")"; }

# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

# write_file PATH MODE [OWNER[:GROUP]] < content
# Writes atomically (temp file in the same folder, chown/chmod, mv) only when the content
# differs. Logs "updated PATH" or "unchanged PATH"; sets WRITE_CHANGED=true|false and
# PROV_CHANGED=true on a change. When the content is the same but the mode or owner differ,
# they are corrected in place and WRITE_CHANGED stays false (a service need not reload).
write_file() {
    local path="$1" mode="$2" owner="${3:-}"
    local dir tmp
    WRITE_CHANGED=false
    if [[ -z "$path" || -z "$mode" ]]; then
        die_validation "write_file: usage: write_file PATH MODE [OWNER[:GROUP]]"
    fi
    dir="$(dirname -- "$path")"
    [[ -d "$dir" ]] || mkdir -p -- "$dir"
    # mktemp creates the file with mode 0600: a secret is never readable while it is written.
    tmp="$(mktemp -- "$dir/.prov-tmp.XXXXXXXX")"
    if ! cat >"$tmp"; then
        rm -f -- "$tmp"
        return 1
    fi
    if [[ -f "$path" && ! -L "$path" ]] && cmp -s -- "$tmp" "$path"; then
        rm -f -- "$tmp"
        _prov_fix_mode_owner "$path" "$mode" "$owner"
        log_info "unchanged $path"
        return 0
    fi
    if [[ -n "$owner" ]] && ! chown -- "$owner" "$tmp"; then
        rm -f -- "$tmp"
        return 1
    fi
    if ! chmod -- "$mode" "$tmp" || ! mv -f -T -- "$tmp" "$path"; then
        rm -f -- "$tmp"
        return 1
    fi
    # shellcheck disable=SC2034  # read by the installer that sourced this library
    WRITE_CHANGED=true
    PROV_CHANGED=true
    log_info "updated $path"
}

_prov_fix_mode_owner() {
    local path="$1" mode="$2" owner="$3" want_mode have
    want_mode="$(printf '%o' "$((8#${mode#0}))" 2>/dev/null)" || want_mode="$mode"
    have="$(stat -c '%a' -- "$path")"
    if [[ "$have" != "$want_mode" ]]; then
        chmod -- "$mode" "$path"
        log_info "fixed the mode of $path ($have -> $want_mode)"
    fi
    if [[ -n "$owner" ]]; then
        local user="${owner%%:*}" group=""
        if [[ "$owner" == *:* ]]; then
            group="${owner#*:}"
        fi
        if [[ "$(stat -c '%U' -- "$path")" != "$user" ]] \
            || [[ -n "$group" && "$(stat -c '%G' -- "$path")" != "$group" ]]; then
            chown -- "$owner" "$path"
            log_info "fixed the owner of $path ($owner)"
        fi
    fi
}

# backup_file PATH: keep PATH.prov-bak (a copy, mode and owner kept) before a change. When
# PATH does not exist, remember that, so restore_file removes it again.
backup_file() {
    local path="$1"
    if [[ -e "$path" || -L "$path" ]]; then
        cp -a -- "$path" "$path.prov-bak"
    else
        rm -f -- "$path.prov-bak"
        _PROV_BACKUP_ABSENT+=("$path")
    fi
}

# restore_file PATH: put PATH.prov-bak back (or remove PATH if it did not exist at backup).
restore_file() {
    local path="$1" absent
    if [[ -e "$path.prov-bak" || -L "$path.prov-bak" ]]; then
        mv -f -T -- "$path.prov-bak" "$path"
        log_info "restored $path"
        return 0
    fi
    for absent in "${_PROV_BACKUP_ABSENT[@]}"; do
        if [[ "$absent" == "$path" ]]; then
            rm -f -- "$path"
            log_info "removed $path (it did not exist before)"
            return 0
        fi
    done
    log_warn "no backup of $path to restore"
    return 1
}

# drop_backup PATH: remove PATH.prov-bak after a successful change. (extension)
drop_backup() {
    rm -f -- "$1.prov-bak"
}

# --------------------------------------------------------------------------------------------
# services
# --------------------------------------------------------------------------------------------

# service_manager [NAME]: "systemd" | "sysv" (an /etc/init.d/NAME script) | "supervised".
service_manager() {
    local name="${1:-}"
    if [[ -d /run/systemd/system ]]; then
        printf 'systemd\n'
    elif [[ -n "$name" && -x "/etc/init.d/$name" ]]; then
        printf 'sysv\n'
    else
        printf 'supervised\n'
    fi
}

# NAME -> the suffix of SERVICE_CMD_<NAME>: upper case, anything not [A-Z0-9] becomes "_".
_prov_var_suffix() {
    local upper="${1^^}"
    printf '%s\n' "${upper//[^A-Z0-9]/_}"
}

_prov_pidfile() { printf '%s/%s.pid\n' "$PROV_RUN_DIR" "$1"; }

# The argv of a supervised daemon, into the caller's array named by $2. A function
# svc_cmd_<name> (name with "-" and "." as "_"), when defined, is called first and may set
# the array; then the array SERVICE_CMD_<NAME> is read.
_prov_supervised_cmd() {
    local name="$1" suffix fn
    suffix="$(_prov_var_suffix "$name")"
    fn="svc_cmd_${name//[^A-Za-z0-9_]/_}"
    if declare -F "$fn" >/dev/null; then
        "$fn"
    fi
    declare -p "SERVICE_CMD_${suffix}" >/dev/null 2>&1 || return 0
    local -n _cmd_src="SERVICE_CMD_${suffix}"
    local -n _cmd_dst="$2"
    # shellcheck disable=SC2034  # _cmd_dst is a nameref to the caller's array
    _cmd_dst=("${_cmd_src[@]}")
}

_prov_supervised_pid() {
    local pidfile pid
    pidfile="$(_prov_pidfile "$1")"
    [[ -r "$pidfile" ]] || return 1
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # A zombie (dead, not yet reaped by a PID 1 that does not reap) is not running.
    local stat
    stat="$(<"/proc/$pid/stat")" 2>/dev/null || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != "Z" ]] || return 1
    printf '%s\n' "$pid"
}

_prov_supervised_start() {
    local name="$1" suffix pidfile logfile _prov_cmd=() user_var user _prov_ssd_opts=()
    suffix="$(_prov_var_suffix "$name")"
    _prov_supervised_cmd "$name" _prov_cmd
    if ((${#_prov_cmd[@]} == 0)); then
        die_config "no init system for $name and no SERVICE_CMD_${suffix} (or svc_cmd_${name//[^A-Za-z0-9_]/_}) to run it"
    fi
    pidfile="$(_prov_pidfile "$name")"
    logfile="$PROV_LOG_DIR/$name.log"
    mkdir -p "$PROV_RUN_DIR" "$PROV_LOG_DIR"
    user_var="SERVICE_USER_${suffix}"
    user="${!user_var:-}"
    if [[ -n "$user" ]]; then
        _prov_ssd_opts+=(--chuid "$user")
    fi
    # A clean environment (env -i): the installer's inputs, secrets included, never reach the
    # daemon's /proc/<pid>/environ. PROV_JOB_ID stays so a cancelled run's sweep finds it.
    # env execs the daemon, so the recorded pid is the daemon's own.
    start-stop-daemon --start --background --make-pidfile --pidfile "$pidfile" \
        --output "$logfile" "${_prov_ssd_opts[@]}" --startas /usr/bin/env -- -i \
        PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" LANG=C.UTF-8 \
        PROV_JOB_ID="${PROV_JOB_ID:-}" "${_prov_cmd[@]}"
    # The daemon must stay in the foreground: a process that forks away leaves a dead pid.
    local _
    for _ in 1 2 3 4 5; do
        sleep 0.1
        _prov_supervised_pid "$name" >/dev/null || break
    done
    if ! _prov_supervised_pid "$name" >/dev/null; then
        log_warn "$name exited right after it started; the end of $logfile:"
        tail -n 5 -- "$logfile" >&2 2>/dev/null || true
        return 1
    fi
}

_prov_supervised_stop() {
    local name="$1" pid _
    # TERM, up to 10 s, then KILL. A zombie counts as stopped (see _prov_supervised_pid).
    if pid="$(_prov_supervised_pid "$name")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            _prov_supervised_pid "$name" >/dev/null || break
            sleep 0.1
        done
        if _prov_supervised_pid "$name" >/dev/null; then
            log_warn "$name did not stop on TERM within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f -- "$(_prov_pidfile "$name")"
}

_prov_supervised_reload() {
    local name="$1" suffix signal_var signal pid
    suffix="$(_prov_var_suffix "$name")"
    signal_var="SERVICE_RELOAD_SIGNAL_${suffix}"
    signal="${!signal_var:-}"
    if [[ -n "$signal" ]] && pid="$(_prov_supervised_pid "$name")"; then
        kill -s "$signal" "$pid"
    else
        _prov_supervised_stop "$name"
        _prov_supervised_start "$name"
    fi
}

# 0 when the sysv script of NAME offers "reload" (a case label or its usage line).
_prov_sysv_has_reload() {
    # A `reload)` (or `reload|force-reload)`) case label outside comments: a usage line in a
    # comment does not make the action exist.
    sed 's/#.*//' "/etc/init.d/$1" 2>/dev/null \
        | grep -Eq '(^|[[:space:]|])reload([|][^)]*)?\)'
}

service_start() {
    local name="$1"
    log_info "starting $name"
    case "$(service_manager "$name")" in
        systemd) systemctl start "$name" ;;
        sysv) service "$name" start ;;
        *) _prov_supervised_start "$name" ;;
    esac
}

service_stop() {
    local name="$1"
    log_info "stopping $name"
    case "$(service_manager "$name")" in
        systemd) systemctl stop "$name" ;;
        sysv) service "$name" stop ;;
        *) _prov_supervised_stop "$name" ;;
    esac
}

service_restart() {
    local name="$1"
    log_info "restarting $name"
    case "$(service_manager "$name")" in
        systemd) systemctl restart "$name" ;;
        sysv) service "$name" restart ;;
        *)
            _prov_supervised_stop "$name"
            _prov_supervised_start "$name"
            ;;
    esac
}

# service_reload NAME: reload, or restart where reload is not supported.
service_reload() {
    local name="$1"
    case "$(service_manager "$name")" in
        systemd)
            log_info "reloading $name"
            systemctl reload-or-restart "$name"
            ;;
        sysv)
            if _prov_sysv_has_reload "$name"; then
                log_info "reloading $name"
                service "$name" reload
            else
                log_info "restarting $name (its init script has no reload)"
                service "$name" restart
            fi
            ;;
        *)
            log_info "reloading $name"
            _prov_supervised_reload "$name"
            ;;
    esac
}

# service_enable / service_disable NAME: start at boot. Supervised daemons have no boot
# integration: a no-op with a log line.
service_enable() {
    local name="$1"
    case "$(service_manager "$name")" in
        systemd) systemctl enable --quiet "$name" ;;
        sysv) update-rc.d "$name" defaults >/dev/null 2>&1 || update-rc.d "$name" enable ;;
        *) log_info "$name is supervised by the panel: no start at boot" ;;
    esac
}

service_disable() {
    local name="$1"
    case "$(service_manager "$name")" in
        systemd) systemctl disable --quiet "$name" ;;
        sysv) update-rc.d "$name" disable >/dev/null 2>&1 || true ;;
        *) : ;;
    esac
}

# service_running NAME: 0 when running.
service_running() {
    local name="$1"
    case "$(service_manager "$name")" in
        systemd) systemctl is-active --quiet "$name" ;;
        sysv) service "$name" status >/dev/null 2>&1 ;;
        *) _prov_supervised_pid "$name" >/dev/null ;;
    esac
}

# service_apply NAME: start when not running; else reload when PROV_CHANGED=true; never
# touches a running service when nothing changed.
service_apply() {
    local name="$1"
    if ! service_running "$name"; then
        service_start "$name"
    elif is_true "$PROV_CHANGED"; then
        service_reload "$name"
    else
        log_ok "$name is running and nothing changed"
    fi
}

# --------------------------------------------------------------------------------------------
# readiness
# --------------------------------------------------------------------------------------------

# wait_for_port HOST PORT [TIMEOUT_S=20]: 0 once a TCP connect succeeds, else 1.
wait_for_port() {
    local host="$1" port="$2" timeout_s="${3:-20}"
    local deadline=$((SECONDS + timeout_s))
    while :; do
        # shellcheck disable=SC2016  # expanded by the inner bash
        if timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
            return 0
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# One HTTP probe: 0 on 2xx/3xx. The certificate is not checked: it is a liveness probe, and
# installers serve self-signed certificates.
_prov_http_once() {
    local url="$1"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -k -o /dev/null --max-time 3 -- "$url"
    else
        python3 - "$url" <<'PY'
import ssl, sys, urllib.error, urllib.request

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
try:
    with opener.open(sys.argv[1], timeout=3) as response:
        sys.exit(0 if response.status < 400 else 1)
except urllib.error.HTTPError as exc:
    sys.exit(0 if 300 <= exc.code < 400 else 1)
except Exception as exc:  # noqa: BLE001
    print(exc, file=sys.stderr)
    sys.exit(1)
PY
    fi
}

# wait_for_http URL [TIMEOUT_S=20]: 0 once the URL answers 2xx/3xx, else 1 (after a warning
# with the last error).
wait_for_http() {
    local url="$1" timeout_s="${2:-20}"
    local deadline=$((SECONDS + timeout_s)) error=""
    while :; do
        if error="$(_prov_http_once "$url" 2>&1)"; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log_warn "$url did not answer within ${timeout_s}s: ${error:-no answer}"
            return 1
        fi
        sleep 0.3
    done
}

# dpkg_remove_recorded ACTION LIST MAIN_PKG: remove (ACTION --remove) or purge (--purge) the
# packages listed one per line in LIST (what the app's install added); exit 2 if MAIN_PKG
# stays. (extension; not in CONTRACT.md) dpkg, not apt-get, so a dependency that other software
# needs by now stays (dpkg refuses it); dpkg has no lock timeout, so a lock held by another
# apt/dpkg run is waited for here (up to 2 minutes). Packages that stay remain recorded.
dpkg_remove_recorded() {
    local action="$1" list="$2" main_pkg="$3" output pkg left=()
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
        if [[ "$pkg" == "$main_pkg" ]]; then
            die_retry "could not remove $main_pkg; run the uninstall again"
        fi
    done
    log_warn "kept ${left[*]}: other software depends on them"
}

# pkg_installed_list: the installed packages, sorted, one per line (compare before/after an
# install to record what it added). (extension; not in CONTRACT.md)
pkg_installed_list() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort
}
