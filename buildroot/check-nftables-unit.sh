#!/usr/bin/env bash
# Checks buildroot/package/gatelet/gatelet-nftables.service, the unit that loads the nftables rules
# on systemd images:
#   - systemd-analyze verify accepts it;
#   - its ExecStart, run twice (boot, then a restart), loads the table `inet gatelet` of
#     kernel-hooks/nftables/gatelet.nft, and its ExecStop removes it: the commands of the unit
#     itself, with the installed path of the rules replaced by the file in this checkout, inside a
#     private network namespace (`unshare -n`; the host's rules are not touched);
#   - gatelet.mk installs the unit, and the file it loads is the one gatelet.mk installs the rules as.
# Needs root, nft (nftables) and systemd-analyze (systemd).
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."

unit=buildroot/package/gatelet/gatelet-nftables.service
mk=buildroot/package/gatelet/gatelet.mk
rules=kernel-hooks/nftables/gatelet.nft
die() {
  echo "check-nftables-unit: FAIL: $*" >&2
  exit 1
}
say() { echo "check-nftables-unit: ok: $*"; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespace, nft)"
command -v nft >/dev/null || die "nft not installed (apt-get install nftables)"

out=$(systemd-analyze verify "$unit" 2>&1) || die "systemd-analyze verify: $out"
[ -z "$out" ] || die "systemd-analyze verify: $out"
say "$unit verifies"

value() { sed -n "s/^$1=//p" "$unit"; }
installed=/etc/nftables.d/gatelet.nft
if ! grep -q "HOOKS_DIR)/nftables/gatelet.nft" "$mk" || ! grep -q "$installed" "$mk"; then
  die "$mk does not install $rules as $installed"
fi
grep -q 'gatelet-nftables.service' "$mk" || die "$mk does not install $unit"
start=$(value ExecStart)
stop=$(value ExecStop)
[[ "$start" == *" $installed" ]] || die "ExecStart does not load $installed: $start"
start=${start/$installed/$PWD/$rules}

# One shell in a fresh network namespace runs the unit's commands: start, start again (a
# restart), list, stop, list. Word splitting of the command lines is what systemd does for these
# simple lines (no quotes in them).
# shellcheck disable=SC2086
out=$(unshare -n bash -c '
  set -e
  '"$start"'
  '"$start"'
  nft list table inet gatelet >/dev/null
  echo loaded
  nft list tables | grep -c "inet gatelet"
  '"$stop"'
  if nft list table inet gatelet >/dev/null 2>&1; then echo still-there; else echo removed; fi
' 2>&1) || die "running the unit's commands failed: $out"
[ "$out" = "loaded
1
removed" ] || die "unexpected result of start, start, stop: $out"
say "ExecStart loads the table (twice: one table), ExecStop removes it"
