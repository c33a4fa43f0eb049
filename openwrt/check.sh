#!/usr/bin/env bash
# Checks the OpenWrt package without the OpenWrt SDK (CI cannot fetch it):
#   1. gatelet.init and gatelet-update.init parse as shell scripts (dash -n; busybox sh -n:
#      OpenWrt's shell is busybox ash).
#   2. gatelet.init runs in a fake OpenWrt root (static busybox, chroot) under test stand-ins of
#      /etc/rc.common and /lib/functions/procd.sh that record every procd call:
#        - without /etc/gatelet/gateway.env: start fails with a line naming the file, no instance;
#        - with it: two instances, agent then companion, whose command lines are the ExecStart=
#          lines of systemd/*.service (binaries through /usr/lib/gatelet-update/current instead of
#          /var/lib/gatelet-update/current; state under /etc/gatelet/state instead of /var/lib/gatelet,
#          sockets in /var/run/gatelet), User=/Group=, LimitNOFILE=, and respawn from
#          StartLimitIntervalSec=/RestartSec=/StartLimitBurst=; the agent's capabilities file
#          grants a subset of the unit's AmbientCapabilities (the companion gets none, like its
#          unit); the directories exist with the owners and modes of systemd/gatelet.tmpfiles.conf;
#          /dev/net/tun is readable and writable by the group gatelet; /usr/lib/gatelet-update is
#          root's 0755 with current -> /usr/bin, and a start leaves a current -> b alone;
#        - `enable` makes the S95/K10 links;
#        - gatelet-update.init: one root instance, the ExecStart= of systemd/gatelet-update.service
#          with the OpenWrt paths plus --watch, --seed-by-link and a --restart-command that is one
#          argument; that command, run as the updater runs it (split on spaces, no shell), restarts
#          both daemons through current/; `enable` makes S96/K09 (after gatelet at boot).
#   3. openwrt/gatelet/Makefile runs under a stand-in of the SDK's make includes
#      (openwrt/test/sdk): its version and tarball name match Cargo.toml and
#      buildroot/make-release-tarball.sh; DEPENDS limits it to aarch64/armv7 musl with kmod-tun;
#      Build/Compile runs `cargo build --offline --locked --release` for the two binaries in the
#      source directory with +crt-static (a recording cargo stands in); Package/gatelet/install
#      puts every file where the init scripts expect them (gatelet-update and its init script too);
#      keep.d does not keep the update dir (a sysupgrade starts the new image's binaries); the
#      postinst, run in the fake root, drops a self-update's slots (an opkg upgrade's /usr/bin
#      binaries are then started) except during an update (journal) or an image build.
# Needs root (chroot, chown), busybox-static (/bin/busybox), dash, make, python3.
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."
repo=$PWD

init=openwrt/gatelet/files/gatelet.init
uinit=openwrt/gatelet/files/gatelet-update.init
caps=openwrt/gatelet/files/gatelet-agent.json
failures=0
fail() {
  echo "openwrt-check: FAIL: $*" >&2
  failures=$((failures + 1))
}
ok() { echo "openwrt-check: ok: $*"; }
die() {
  echo "openwrt-check: FAIL: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (chroot into the fake OpenWrt root)"
busybox=/bin/busybox
if ! [ -x "$busybox" ] || ! file -L "$busybox" | grep -q 'statically linked'; then
  die "needs a static busybox at /bin/busybox (apt-get install busybox-static)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gatelet-openwrt.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- 1. syntax -----------------------------------------------------------------------------------
for f in "$init" "$uinit"; do
  for sh in dash "$busybox sh"; do
    if out=$($sh -n "$f" 2>&1); then ok "$f parses ($sh -n)"; else fail "$sh -n $f: $out"; fi
  done
done

# --- 2. the init script under a procd stand-in -----------------------------------------------------
# unit_value UNIT KEY: the last KEY= of systemd/UNIT
unit_value() { sed -n "s/^$2=//p" "systemd/$1" | tail -n1; }

root=$work/root
make_root() {
  rm -rf "$root"
  mkdir -p "$root"/{bin,etc/init.d,lib/functions,dev/net,var/run,tmp}
  cp "$busybox" "$root/bin/busybox"
  chroot "$root" /bin/busybox --install -s /bin
  cp openwrt/test/rc.common "$root/etc/rc.common"
  cp openwrt/test/procd.sh "$root/lib/functions/procd.sh"
  install -m 0755 "$init" "$root/etc/init.d/gatelet"
  install -m 0755 "$uinit" "$root/etc/init.d/gatelet-update"
  # What the package's USERID:=gatelet:gatelet creates at install time.
  echo 'root:x:0:0:root:/root:/bin/ash' >"$root/etc/passwd"
  echo 'gatelet:x:441:441:gatelet:/var/run/gatelet:/bin/false' >>"$root/etc/passwd"
  printf 'root:x:0:\ngatelet:x:441:\n' >"$root/etc/group"
  mknod -m 0600 "$root/dev/net/tun" c 10 200
}
run_init() { # ACTION [SCRIPT]: runs /etc/init.d/SCRIPT (gatelet) ACTION in the fake root; procd log in $root/tmp/procd.log
  : >"$root/tmp/procd.log"
  chroot "$root" /bin/env -i PATH=/bin PROCD_LOG=/tmp/procd.log /bin/sh /etc/rc.common "/etc/init.d/${2:-gatelet}" "$1"
}

make_root
if out=$(run_init start 2>&1); then
  fail "start without gateway.env succeeded: $out"
elif ! grep -q '/etc/gatelet/gateway.env is missing' <<<"$out"; then
  fail "start without gateway.env: no line naming the file: $out"
elif grep -q open_instance "$root/tmp/procd.log"; then
  fail "start without gateway.env still opened an instance: $(cat "$root/tmp/procd.log")"
else
  ok "start without gateway.env fails with: $out"
fi

mkdir -p "$root/etc/gatelet"
echo 'WG_PRIVATE_KEY=not-read-by-this-test' >"$root/etc/gatelet/gateway.env"
if ! out=$(run_init start 2>&1); then
  fail "start failed: $out"
fi
[ -z "$out" ] || fail "start printed: $out"
cp "$root/tmp/procd.log" "$work/procd.log"

# The systemd units' paths as OpenWrt has them.
owrt_paths() {
  sed -e 's#/var/lib/gatelet-update#/usr/lib/gatelet-update#g' -e 's#/var/lib/gatelet\([ /]\|$\)#/etc/gatelet/state\1#g'
}

# The expected procd calls, from the systemd units.
T=$'\t'
expect_instance() { # NAME UNIT EXTRA-ARGS...: the calls for one instance
  local name=$1 unit=$2 cmd arg
  shift 2
  # The units start the daemons through the self-updater's link in /var/lib/gatelet-update;
  # OpenWrt's update dir is /usr/lib/gatelet-update (flash: /var is RAM).
  cmd=$(unit_value "$unit" ExecStart | owrt_paths)
  local line="set_param${T}command"
  for arg in $cmd "$@"; do line="$line$T$arg"; done
  local user group nofile restart interval burst
  user=$(unit_value "$unit" User)
  group=$(unit_value "$unit" Group)
  nofile=$(unit_value "$unit" LimitNOFILE)
  restart=$(unit_value "$unit" RestartSec)
  interval=$(unit_value "$unit" StartLimitIntervalSec)
  burst=$(unit_value "$unit" StartLimitBurst)
  echo "open_instance$T$name"
  echo "$line"
  echo "set_param${T}user$T$user"
  echo "set_param${T}group$T$group"
  if [ -n "$(unit_value "$unit" AmbientCapabilities)" ]; then
    echo "set_param${T}capabilities$T/etc/capabilities/gatelet-agent.json"
  fi
  echo "set_param${T}no_new_privs${T}1"
  echo "set_param${T}respawn$T${interval%s}$T${restart%s}$T$burst"
  echo "set_param${T}limits${T}nofile=$nofile $nofile"
  echo "set_param${T}file$T/etc/gatelet/gateway.env"
  echo "set_param${T}stdout${T}1"
  echo "set_param${T}stderr${T}1"
  echo "close_instance$T$name"
}
{
  echo "open_service${T}gatelet"
  expect_instance agent gatelet-agent.service --control-socket /var/run/gatelet/agent.sock
  expect_instance companion gatelet-companion.service \
    --control-socket /var/run/gatelet/agent.sock --status-socket /var/run/gatelet/companion.sock
  echo "close_service"
} >"$work/expected.log"
if diff -u "$work/expected.log" "$work/procd.log" >"$work/diff" 2>&1; then
  ok "procd calls: agent and companion with the units' command lines, user, respawn, nofile, env file"
else
  fail "procd calls differ from the systemd units (- expected, + init script):
$(cat "$work/diff")"
fi

# Capabilities: valid JSON, the five sets equal, a subset of the agent unit's ambient set.
if out=$(python3 - "$caps" "$(unit_value gatelet-agent.service AmbientCapabilities)" <<'EOF' 2>&1
import json, sys
doc = json.load(open(sys.argv[1]))
unit = set(sys.argv[2].split())
sets = {k: doc.get(k) for k in ("bounding", "effective", "ambient", "permitted", "inheritable")}
assert set(doc) == set(sets), "unexpected keys %s" % sorted(set(doc) - set(sets))
first = sets["ambient"]
assert first, "no ambient capabilities"
for k, v in sets.items():
    assert v == first, "%s %s differs from ambient %s" % (k, v, first)
extra = set(first) - unit
assert not extra, "%s not granted by systemd/gatelet-agent.service (%s)" % (sorted(extra), sorted(unit))
print(" ".join(first))
EOF
); then
  ok "$caps: $out in all five sets, within the agent unit's AmbientCapabilities"
else
  fail "$caps: $out"
fi

# Directories (systemd/gatelet.tmpfiles.conf: /etc/gatelet root:gatelet, state gatelet:gatelet,
# all 0750) and the TUN node.
check_path() { # PATH UID GID MODE (ids of the fake root's /etc/passwd: root 0, gatelet 441)
  local got
  got=$(stat -c '%u %g %a' "$root$1" 2>&1) || got="missing"
  [ "$got" = "$2 $3 $4" ] || fail "$1: $got, expected $2 $3 $4"
}
n0=$failures
check_path /etc/gatelet 0 441 750
check_path /etc/gatelet/state 441 441 750
check_path /etc/gatelet/state/agent 441 441 750
check_path /var/run/gatelet 441 441 750
check_path /dev/net/tun 0 441 660
check_path /usr/lib/gatelet-update 0 0 755
[ "$(readlink "$root/usr/lib/gatelet-update/current" 2>&1)" = /usr/bin ] ||
  fail "current: $(ls -l "$root/usr/lib/gatelet-update" 2>&1), expected current -> /usr/bin"
[ "$failures" -ne "$n0" ] || ok "directories and /dev/net/tun: owners and modes as the units' tmpfiles; current -> /usr/bin"

# After a self-update current names a slot: a start (a reboot) must keep it.
ln -sfn b "$root/usr/lib/gatelet-update/current"
if out=$(run_init start 2>&1) && [ "$(readlink "$root/usr/lib/gatelet-update/current")" = b ]; then
  ok "start keeps current -> b"
else
  fail "start with current -> b: $out; current -> $(readlink "$root/usr/lib/gatelet-update/current")"
fi

# The updater's init script: one root instance, the unit's command line with OpenWrt's paths.
if ! out=$(run_init start gatelet-update 2>&1) || [ -n "$out" ]; then
  fail "gatelet-update start: $out"
fi
cp "$root/tmp/procd.log" "$work/procd-update.log"
{
  echo "open_service${T}gatelet-update"
  echo "open_instance${T}watcher"
  line="set_param${T}command"
  for arg in $(unit_value gatelet-update.service ExecStart | owrt_paths) \
    --status-socket /var/run/gatelet/companion.sock; do line="$line$T$arg"; done
  echo "$line$T--restart-command$T/etc/init.d/gatelet restart$T--seed-by-link$T--watch${T}5"
  echo "set_param${T}respawn${T}3600${T}5${T}0"
  echo "set_param${T}stdout${T}1"
  echo "set_param${T}stderr${T}1"
  echo "close_instance${T}watcher"
  echo "close_service"
} >"$work/expected-update.log"
if diff -u "$work/expected-update.log" "$work/procd-update.log" >"$work/diff" 2>&1; then
  ok "gatelet-update: the unit's command line (OpenWrt paths) + --watch 5 --seed-by-link, root, respawned forever"
else
  fail "gatelet-update procd calls (- expected, + init script):
$(cat "$work/diff")"
fi

# The restart command as the updater runs it: split on spaces, executed without a shell.
restart_cmd=$(awk -F'\t' '{ for (i = 1; i < NF; i++) if ($i == "--restart-command") print $(i + 1) }' "$work/procd-update.log")
: >"$root/tmp/procd.log"
# shellcheck disable=SC2086 # split on spaces, as gatelet-update does
if out=$(chroot "$root" /bin/env -i PATH=/bin PROCD_LOG=/tmp/procd.log $restart_cmd 2>&1) &&
  grep -qx "kill_service${T}gatelet" "$root/tmp/procd.log" &&
  [ "$(grep -c "^set_param${T}command${T}/usr/lib/gatelet-update/current/gatelet-" "$root/tmp/procd.log")" = 2 ]; then
  ok "the restart command ($restart_cmd) stops and starts both daemons through current/"
else
  fail "restart command $restart_cmd: $out $(cat "$root/tmp/procd.log")"
fi

if out=$(run_init enable 2>&1) && [ -L "$root/etc/rc.d/S95gatelet" ] && [ -L "$root/etc/rc.d/K10gatelet" ]; then
  ok "enable: S95gatelet, K10gatelet"
else
  fail "enable: $out $(ls "$root/etc/rc.d" 2>&1)"
fi
if out=$(run_init enable gatelet-update 2>&1) && [ -L "$root/etc/rc.d/S96gatelet-update" ] &&
  [ -L "$root/etc/rc.d/K09gatelet-update" ]; then
  ok "enable gatelet-update: S96 (after gatelet's S95), K09"
else
  fail "enable gatelet-update: $out $(ls "$root/etc/rc.d" 2>&1)"
fi

# --- 3. the package Makefile -----------------------------------------------------------------------
sdk=$repo/openwrt/test/sdk
toml_version=$(awk '/^\[/ { s = $0 } s == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
for triple in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  build=$work/build-$triple
  dest=$work/ipkg-$triple
  mkdir -p "$build/target/$triple/release" "$work/bin"
  mkf=(make -s -C openwrt/gatelet TOPDIR="$sdk" BUILD_DIR="$work/unused" PKG_BUILD_DIR="$build"
    OPENWRT_TEST_TRIPLE="$triple" DEST="$dest")

  # A recording cargo: its directory, arguments and the environment cargo would use.
  cat >"$work/bin/cargo" <<EOF
#!/bin/sh
{ echo "cwd=\$PWD"; echo "args=\$*"; env | grep -E '^(CARGO_|RUSTFLAGS=)' | sort; } >"$work/cargo-\$CARGO_BUILD_TARGET.log"
for b in gatelet-agent gatelet-companion gatelet-update; do printf '#!/bin/sh\n' >"target/\$CARGO_BUILD_TARGET/release/\$b"; done
EOF
  chmod +x "$work/bin/cargo"

  if ! show=$("${mkf[@]}" show-package 2>&1); then
    fail "Makefile ($triple): show-package: $show"
    continue
  fi
  get() { sed -n "s/^$1=//p" <<<"$show"; }
  n0=$failures
  [ "$(get PKG_VERSION)" = "$toml_version" ] || fail "PKG_VERSION $(get PKG_VERSION) != Cargo.toml $toml_version"
  [ "$(get PKG_SOURCE)" = "gatelet-$toml_version.tar.gz" ] ||
    fail "PKG_SOURCE $(get PKG_SOURCE) is not the tarball of buildroot/make-release-tarball.sh"
  for f in $(get PKG_LICENSE_FILES); do [ -s "$f" ] || fail "PKG_LICENSE_FILES: $f not in the repository"; done
  for d in '@(aarch64||arm_v7)' '@USE_MUSL' '+kmod-tun'; do
    [[ " $(get DEPENDS) " == *" $d "* ]] || fail "DEPENDS lacks $d: $(get DEPENDS)"
  done
  [[ "$(get PKG_BUILD_DEPENDS)" == *rust/host* ]] || fail "PKG_BUILD_DEPENDS lacks rust/host"
  [[ "$(get USERID)" == gatelet:gatelet* ]] || fail "USERID does not create the user gatelet: $(get USERID)"

  if ! out=$(PATH="$work/bin:$PATH" "${mkf[@]}" compile 2>&1); then
    fail "Makefile ($triple): Build/Compile: $out"
    continue
  fi
  log=$work/cargo-$triple.log
  grep -qx "cwd=$build" "$log" || fail "cargo did not run in the source directory: $(grep cwd= "$log")"
  grep -qx 'args=build --offline --locked --release -p gatelet-agent -p gatelet-companion --bins' "$log" ||
    fail "cargo arguments: $(grep args= "$log")"
  grep -q '^RUSTFLAGS=.*+crt-static' "$log" || fail "not static: $(grep RUSTFLAGS= "$log")"
  grep -q '^CARGO_PROFILE_RELEASE_' "$log" && fail "the feed's profile overrides reach cargo: $(grep CARGO_PROFILE "$log")"
  grep -qx "CARGO_BUILD_TARGET=$triple" "$log" || fail "CARGO_BUILD_TARGET: $(grep CARGO_BUILD_TARGET "$log")"

  if ! out=$("${mkf[@]}" install 2>&1); then
    fail "Makefile ($triple): Package/gatelet/install: $out"
    continue
  fi
  for entry in usr/bin/gatelet-agent:755 usr/bin/gatelet-companion:755 usr/bin/gatelet-update:755 \
    etc/init.d/gatelet:755 etc/init.d/gatelet-update:755 \
    etc/capabilities/gatelet-agent.json:644 lib/upgrade/keep.d/gatelet:644; do
    f=${entry%:*} mode=${entry#*:}
    got=$(stat -c %a "$dest/$f" 2>/dev/null || echo missing)
    [ "$got" = "$mode" ] || fail "install ($triple): /$f is $got, expected mode $mode"
  done
  cmp -s "$dest/etc/init.d/gatelet" "$init" || fail "install: /etc/init.d/gatelet is not $init"
  cmp -s "$dest/etc/init.d/gatelet-update" "$uinit" || fail "install: /etc/init.d/gatelet-update is not $uinit"
  # Every path the init script names in the package is installed, and the keep list covers the
  # configuration and the state.
  for p in /usr/bin /etc/capabilities/gatelet-agent.json; do
    grep -q "$p" "$init" || fail "$init does not use $p"
  done
  grep -q /usr/bin/gatelet-update "$uinit" || fail "$uinit does not use /usr/bin/gatelet-update"
  grep -q gatelet-update "$dest/lib/upgrade/keep.d/gatelet" &&
    fail "keep.d/gatelet keeps the update dir (a sysupgrade would run the old slot over the new image)"
  grep -qx '/etc/gatelet/' "$dest/lib/upgrade/keep.d/gatelet" || fail "keep.d/gatelet does not keep /etc/gatelet/"
  [[ "$(get CONFFILES)" == */etc/gatelet/gateway.env* ]] || fail "conffiles lack /etc/gatelet/gateway.env"
  [ "$failures" -ne "$n0" ] || ok "Makefile ($triple): version, tarball, DEPENDS, offline static cargo build, installed files"
done

# The postinst (opkg install/upgrade) in the fake root: after a self-update (current -> b), the
# slots go, so the next start runs the package's /usr/bin; kept while an update is in progress
# and at image build time (IPKG_INSTROOT).
if out=$(make -s -C openwrt/gatelet TOPDIR="$sdk" BUILD_DIR="$work/unused" \
  OPENWRT_TEST_TRIPLE=aarch64-unknown-linux-musl DEST="$root/tmp/postinst" postinst 2>&1); then
  u=$root/usr/lib/gatelet-update
  slots() { # current -> b, slot a linked, slot b downloaded
    rm -rf "$u"
    mkdir -p "$u/a" "$u/b"
    ln -s /usr/bin/gatelet-agent "$u/a/gatelet-agent"
    echo new >"$u/b/gatelet-agent"
    ln -s b "$u/current"
  }
  postinst() { chroot "$root" /bin/env -i PATH=/bin "$@" /bin/sh /tmp/postinst 2>&1; }
  n0=$failures
  slots
  out=$(postinst) || fail "postinst failed: $out"
  [ -z "$(ls -A "$u")" ] || fail "postinst after a self-update left: $(ls -A "$u")"
  run_init start >/dev/null 2>&1
  [ "$(readlink "$u/current")" = /usr/bin ] || fail "start after the postinst: current -> $(readlink "$u/current")"
  slots
  echo '{}' >"$u/journal.json"
  out=$(postinst)
  if [ "$(readlink "$u/current")" != b ] || [ ! -e "$u/b/gatelet-agent" ]; then
    fail "postinst during an update removed the slots: $out"
  fi
  grep -q 'in progress' <<<"$out" || fail "postinst during an update: no line saying so: $out"
  slots
  postinst IPKG_INSTROOT=/build >/dev/null
  [ "$(readlink "$u/current")" = b ] || fail "postinst with IPKG_INSTROOT touched the slots"
  [ "$failures" -ne "$n0" ] || ok "postinst: an opkg upgrade drops the self-update's slots (current -> /usr/bin at the next start), not during an update or an image build"
else
  fail "Makefile: postinst: $out"
fi

if [ "$failures" -gt 0 ]; then
  echo "openwrt-check: $failures check(s) failed" >&2
  exit 1
fi
echo "openwrt-check: all checks passed"
