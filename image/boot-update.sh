# Self-update on the emulated board (issue 14), sourced by image/boot-test.sh (uses its $RUN, $HUB,
# in_ns, bg_in_ns, guest, wait_for, log, die). The image is the one users get: it trusts a release
# key made here only because gateway.env says so (GATELET_UPDATE_PUBKEY, the extra key a user adds
# for self-built releases or a key rotation; docs/self-update.md), as a user would configure it.
#
#   update_prepare   before the boot: a minisign key, the next release (the image's own aarch64
#                    binaries with their version bytes patched at the same length, as
#                    tests-hw/src/release.rs does: the new daemons report the new version, which
#                    the health gate requires), its manifest (deploy/release-manifest.sh) signed
#                    with the key, a release server in the hub namespace (python3 http.server on
#                    10.77.0.1, port 0); writes GATELET_UPDATE_URL and GATELET_UPDATE_PUBKEY to
#                    $RUN/update.env, which boot-test.sh adds to the gateway.env it puts onto the
#                    boot partition
#   update_run       the hub asks for the update as GateControl does (POST /api/self-update to
#                    the gateway's management API through the tunnel); checks that
#                    gatelet-update.path started the updater, that current -> b, that both units
#                    run and report the new version, that the updater exited cleanly and that
#                    the fake server's heartbeat carries last_pull_* and gateway_version; prints
#                    the time from the request to the healthy new version and the bytes downloaded
#   update_check_after_reboot   the new version still runs after a reboot, the updater did not
#
# The binaries: $BOOT_TEST_BINARIES, default ${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-musl/release
# (what build-image.sh put into the image; update_run checks the guest's copies are these bytes).
# Bounded: the update gets UPDATE_TIMEOUT seconds (default 600: the updater's own health deadline
# is 300 s, so a failed update is rolled back and reported within it).

UPDATE_TIMEOUT=${UPDATE_TIMEOUT:-600}
UPDATE_TRIPLE=aarch64-unknown-linux-musl
UPDATE_BIN=${BOOT_TEST_BINARIES:-${CARGO_TARGET_DIR:-target}/$UPDATE_TRIPLE/release}
UPDATE_REQUEST_ID=board-update-1

update_prepare() {
  command -v minisign >/dev/null || die "minisign missing (apt-get install minisign)"
  local b
  for b in gatelet-agent gatelet-companion; do
    [ -f "$UPDATE_BIN/$b" ] || die "$UPDATE_BIN/$b missing (the image's binaries; set BOOT_TEST_BINARIES)"
  done
  UPDATE_OLD=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' Cargo.toml | head -n 1)
  local head=${UPDATE_OLD%.*} last=${UPDATE_OLD##*.}
  UPDATE_NEW=$head.$((last + 1))
  [ ${#UPDATE_NEW} -eq ${#UPDATE_OLD} ] || die "$UPDATE_OLD -> $UPDATE_NEW changes length (the patch needs the same length)"

  local rel=$RUN/release
  mkdir -p "$rel/$UPDATE_TRIPLE"
  for b in gatelet-agent gatelet-companion; do
    python3 - "$UPDATE_BIN/$b" "$rel/$UPDATE_TRIPLE/$b" "$UPDATE_OLD" "$UPDATE_NEW" <<'EOF' || die "patching $b"
import sys
src, dst, old, new = sys.argv[1:]
data = open(src, "rb").read()
n = data.count(old.encode())
if n == 0:
    sys.exit("no %s in %s" % (old, src))
open(dst, "wb").write(data.replace(old.encode(), new.encode()))
print("%s: %d occurrences of %s patched to %s" % (src, n, old, new))
EOF
    chmod 0755 "$rel/$UPDATE_TRIPLE/$b"
  done
  bash deploy/release-manifest.sh "$UPDATE_NEW" "$UPDATE_TRIPLE=$rel/$UPDATE_TRIPLE" >"$rel/manifest.json"
  minisign -G -f -W -p "$RUN/release.pub" -s "$RUN/release.sec" >/dev/null
  minisign -S -l -s "$RUN/release.sec" -m "$rel/manifest.json" -t "gatelet $UPDATE_NEW" >/dev/null
  UPDATE_BYTES=$(($(stat -c %s "$rel/$UPDATE_TRIPLE/gatelet-agent") + $(stat -c %s "$rel/$UPDATE_TRIPLE/gatelet-companion")))

  # The release server on the hub's side of the board's WAN (where a release host would be:
  # not through the tunnel), port 0.
  bg_in_ns $HUB "$RUN/release-server.log" python3 -u -m http.server --bind 10.77.0.1 --directory "$rel" 0
  local end=$(($(date +%s) + 15))
  UPDATE_PORT=""
  while [ -z "$UPDATE_PORT" ]; do
    UPDATE_PORT=$(sed -n 's/^Serving HTTP on [^ ]* port \([0-9]*\) .*/\1/p' "$RUN/release-server.log" 2>/dev/null | head -n 1 || true)
    [ -n "$UPDATE_PORT" ] && break
    [ "$(date +%s)" -lt "$end" ] || die "the release server did not listen within 15s"
    sleep 0.2
  done
  {
    echo "GATELET_UPDATE_URL=http://10.77.0.1:$UPDATE_PORT/manifest.json"
    echo "GATELET_UPDATE_PUBKEY=$(sed -n 2p "$RUN/release.pub")"
  } >"$RUN/update.env"
  log "self-update: release $UPDATE_NEW ($UPDATE_BYTES bytes of binaries) on http://10.77.0.1:$UPDATE_PORT/, signed by a key made now (GATELET_UPDATE_PUBKEY in gateway.env)"
}

# "AGENT COMPANION" versions the guest's daemons report (status socket).
guest_versions() {
  guest gatelet-companion status --json | tr -d '\r' | python3 -c '
import json, sys
r = json.load(sys.stdin)
print((r.get("snapshot", {}).get("agent") or {}).get("agent_version", "?"), r.get("companion_version") or "?")'
}

updater_inactive() { [ "$(guest systemctl is-active gatelet-update.service | tr -d '\r')" = inactive ]; }

update_run() {
  local b sum want
  for b in gatelet-agent gatelet-companion; do
    sum=$(guest sha256sum /usr/bin/$b | tr -d '\r' | cut -d' ' -f1)
    want=$(sha256sum "$UPDATE_BIN/$b" | cut -d' ' -f1)
    [ "$sum" = "$want" ] || die "the guest's /usr/bin/$b is not $UPDATE_BIN/$b (the release must be the image's own binaries)"
  done
  [ "$(guest_versions)" = "$UPDATE_OLD $UPDATE_OLD" ] || die "before the update the daemons report $(guest_versions), not $UPDATE_OLD"
  [ "$(guest readlink /var/lib/gatelet-update/current | tr -d '\r')" = /usr/bin ] ||
    die "before the first update current is not -> /usr/bin"

  local token port body answer
  token=$(sed -n 's/^GC_GATEWAY_TOKEN=//p' companion/tests/data/gateway-env.txt)
  port=$(sed -n 's/^GC_API_PORT=//p' companion/tests/data/gateway-env.txt)
  body="{\"request_id\":\"$UPDATE_REQUEST_ID\",\"target_version\":\"$UPDATE_NEW\"}"
  log "self-update: POST /api/self-update $body from the hub through the tunnel"
  local t0
  t0=$(date +%s.%N)
  answer=$(in_ns $HUB curl -sS -m 20 -X POST -H "X-Gateway-Token: $token" -H 'Content-Type: application/json' \
    --data "$body" "http://10.8.0.2:$port/api/self-update") || die "POST /api/self-update failed"
  [[ "$answer" == *'"queued":true'* ]] || die "POST /api/self-update answered $answer"

  # Done when the updater wrote last-pull for this request (after the health gate passed or
  # the rollback); polled over the console.
  local end=$(($(date +%s) + UPDATE_TIMEOUT)) lp=""
  until [[ "$lp" == *"\"$UPDATE_REQUEST_ID\""* ]]; do
    [ "$(date +%s)" -lt "$end" ] || die "no last-pull for $UPDATE_REQUEST_ID within ${UPDATE_TIMEOUT}s"
    sleep 1
    lp=$(GUEST_TIMEOUT=20 guest cat /var/lib/gatelet/last-pull 2>/dev/null | tr -d '\r') || lp=""
  done
  local t1 secs
  t1=$(date +%s.%N)
  secs=$(python3 -c "print('%.1f' % ($t1 - $t0))")
  echo "    last-pull: $lp"
  [[ "$lp" == *'"ok":true'* ]] || die "the update failed: $lp"
  # The updater exits right after the report; the unit must end inactive and successful.
  wait_for 60 "gatelet-update.service ends" updater_inactive
  local st
  st=$(guest systemctl show -p Result -p ExecMainStatus -p NRestarts gatelet-update.service | tr -d '\r' | tr '\n' ' ')
  [[ "$st" == *"Result=success"* && "$st" == *"ExecMainStatus=0"* ]] || die "gatelet-update.service: $st"
  [ "$(guest readlink /var/lib/gatelet-update/current | tr -d '\r')" = b ] ||
    die "current is $(guest readlink /var/lib/gatelet-update/current), not b"
  both_active || die "after the update gatelet-agent and gatelet-companion are not both active"
  local v
  v=$(guest_versions)
  [ "$v" = "$UPDATE_NEW $UPDATE_NEW" ] || die "after the update the daemons report $v, not $UPDATE_NEW"
  guest test ! -e /var/lib/gatelet-update/journal.json >/dev/null || die "the journal is still there after the report"
  guest test ! -e /var/lib/gatelet/pending-update >/dev/null || die "the flag is still there after the report"
  local updater_log bytes
  updater_log=$(guest "journalctl -b --no-pager -o short-monotonic -u gatelet-update" | tr -d '\r')
  echo "$updater_log" | tail -n 25 | sed 's/^/    /'
  # Under systemd the updater logs structured journal entries: the count is the field F_BYTES
  # (tracing-journald's prefix).
  bytes=$(guest "journalctl -b --no-pager -o verbose -u gatelet-update.service MESSAGE='updater done'" |
    tr -d '\r' | sed -n 's/^ *F_BYTES=\([0-9]*\)$/\1/p' | tail -n 1)
  [ "${bytes:-0}" -eq "$UPDATE_BYTES" ] || die "the updater downloaded ${bytes:-?} bytes, the release has $UPDATE_BYTES"
  # The guest's own clock: the path unit starting the updater to the updater's "update done".
  local guest_span
  guest_span=$(echo "$updater_log" | awk '
    { t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t) }
    /Starting gatelet-update.service/ { s = t }
    /gatelet-update\[[0-9]+\]: update done/ { d = t }
    END { if (s != "" && d != "") printf "%.1f", d - s; else print "?" }')
  wait_for 90 "a heartbeat with last_pull $UPDATE_REQUEST_ID true and gateway_version $UPDATE_NEW" \
    grep -q "last_pull \"$UPDATE_REQUEST_ID\" true [0-9]* gateway_version \"$UPDATE_NEW\"" "$RUN/gatecontrol.log"
  log "ok: self-update $UPDATE_OLD -> $UPDATE_NEW on the board: POST to healthy new version (last-pull ok) ${secs}s (host clock, TCG; updater start to "update done" ${guest_span}s on the guest clock), $bytes bytes downloaded; current -> b; both units report $UPDATE_NEW; the server's heartbeat: $(grep -m1 "last_pull \"$UPDATE_REQUEST_ID\" true" "$RUN/gatecontrol.log" | sed 's/^ *//')"
  wait_for 60 "the HTTP route answers on the new version" http_route
  log "ok: the HTTP route answers on the new version"
}

update_check_after_reboot() {
  local v
  v=$(guest_versions)
  [ "$v" = "$UPDATE_NEW $UPDATE_NEW" ] || die "after the reboot the daemons report $v, not $UPDATE_NEW"
  [ "$(guest readlink /var/lib/gatelet-update/current | tr -d '\r')" = b ] || die "after the reboot current is not b"
  # Nothing queued, no journal: the updater's conditions keep it from starting at boot.
  guest "systemctl show -p ConditionResult gatelet-update.service" | tr -d '\r' | grep -qx 'ConditionResult=no' ||
    die "gatelet-update.service ran on the boot after the update"
  log "ok: after the reboot the board still runs $UPDATE_NEW from slot b; the updater did not start"
}
