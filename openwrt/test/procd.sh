# Test stand-in for OpenWrt's /lib/functions/procd.sh (openwrt/check.sh installs it in a fake
# root): every procd_* call an init script makes is checked against procd's own rules (a known
# parameter, inside an open instance) and recorded, one line per call, in $PROCD_LOG:
#   open_instance NAME | set_param NAME<TAB>ARG<TAB>ARG... | append_param ... | close_instance
# Arguments are separated by tabs, so the log shows how the shell split them.
# shellcheck shell=sh disable=SC3043 # busybox ash (OpenWrt's shell) has `local`

_procd_instance=""

_procd_fail() {
	echo "procd stub: $*" >&2
	echo "error $*" >>"$PROCD_LOG"
	return 1
}

_procd_record() {
	local line="$1"
	shift
	for a in "$@"; do
		line="$line	$a"
	done
	echo "$line" >>"$PROCD_LOG"
}

# The parameters procd's instance parser accepts (procd.sh: _procd_set_param).
_procd_known_param() {
	case "$1" in
	command | env | data | limits | file | netdev | respawn | watch | watchdog | error | \
		user | group | pidfile | seccomp | capabilities | stdout | stderr | facility | \
		no_new_privs | nice | term_timeout | reload_signal) return 0 ;;
	esac
	return 1
}

procd_open_service() { _procd_record open_service "$@"; }
procd_close_service() { _procd_record close_service; }
# rc.common's stop of a procd service (the real one asks procd over ubus to delete it).
procd_kill_service() { _procd_record kill_service "$@"; }

procd_open_instance() {
	[ -z "$_procd_instance" ] || _procd_fail "procd_open_instance $1 inside the open instance $_procd_instance" || return
	_procd_instance=${1:-instance}
	_procd_record open_instance "$_procd_instance"
}

procd_close_instance() {
	[ -n "$_procd_instance" ] || _procd_fail "procd_close_instance without an open instance" || return
	_procd_record close_instance "$_procd_instance"
	_procd_instance=""
}

procd_set_param() {
	[ -n "$_procd_instance" ] || _procd_fail "procd_set_param $1 outside an instance" || return
	_procd_known_param "$1" || _procd_fail "procd_set_param: unknown parameter $1" || return
	[ $# -ge 2 ] || [ "$1" = respawn ] || _procd_fail "procd_set_param $1 without a value" || return
	_procd_record set_param "$@"
}

procd_append_param() {
	[ -n "$_procd_instance" ] || _procd_fail "procd_append_param $1 outside an instance" || return
	_procd_known_param "$1" || _procd_fail "procd_append_param: unknown parameter $1" || return
	_procd_record append_param "$@"
}

procd_add_reload_trigger() { _procd_record add_reload_trigger "$@"; }
procd_add_interface_trigger() { _procd_record add_interface_trigger "$@"; }
