#!/usr/bin/env bash
# The container deployment's self-update, end to end (issue 14; docs/self-update.md
# "Containers"): deploy/gatelet-container-update.sh against a real registry, on the test bed of
# tests-hw/lib/container-env.sh (namespaces cup-hub, cup-gw with its own dockerd, cup-lan):
#
#   - Debian's docker-registry on the hub's veth address 10.78.0.1:5000 (the gateway's dockerd
#     trusts it as an insecure registry) holds the images: v1 as deploy/build-image.sh builds it,
#     v2 = the same binaries with the version string patched at the same length (so v2 REPORTS
#     v2), and a bad v3 whose companion exits at once (the agent's binary in its place);
#   - a release server (python http.server, 10.78.0.1:8088) serves manifest.json and its
#     minisign signature, made by deploy/release-manifest.sh --image <digest> and signed with a
#     key made here, trusted through GATELET_UPDATE_PUBKEY in gateway.env;
#   - the hub asks for each update as GateControl does: POST /api/self-update through the
#     tunnel; when the flag appears in the companion's state volume, the updater runs (as the path
#     unit or the DSM task would start it), in the gateway's namespace.
#
# Checks, each with the last-pull record, the running image (by digest), Docker's health and the
# heartbeat the fake server receives (last_pull_request_id/ok/at, gateway_version, image_digest):
#   1. v1 -> v2 completes (time from the request to healthy, and bytes pulled, printed);
#   2. a manifest signed by an untrusted key is refused: nothing pulled, v2 still running;
#   3. v2 -> bad v3 is rolled back to v2, last_pull_ok false with the reason;
#   4. the v1 manifest replayed without a target: "already current", nothing pulled;
#   5. v2 -> v1 asked for explicitly (target_version v1): the downgrade completes;
#   6. v1 -> v2 with the updater SIGKILLed while it recreates the services: a rerun ends with a
#      healthy container on v2 (reported ok) or v1 (reported failed, "interrupted").
#
# Usage: tests-hw/container-update-check.sh  (root; installs what container-check.sh does plus
# docker-registry and minisign with apt-get when missing; on a host with systemd the packaged
# docker-registry service is stopped and disabled, this test runs its own; builds the image with
# deploy/build-image.sh). Cleans up containers, daemons, data and namespaces, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CE_NAME=container-update-check.sh CE_PREFIX=cup
# shellcheck source=tests-hw/lib/container-env.sh
. tests-hw/lib/container-env.sh
PROJECT=gatelet-upd
REG=10.78.0.1:5000
REPO=$REG/gatelet
REL_PORT=8088
TRIPLE=x86_64-unknown-linux-musl
HEALTH_TIMEOUT=150
RUNNING=""
compose() {
  GATELET_ENV="$RUN/gateway.env" GATELET_IMAGE=${RUNNING:-gatelet:none} \
    docker-compose -p "$PROJECT" -f deploy/docker-compose.yml "$@"
}
ce_cleanup_hook() { compose down -v --timeout 5; }
say() { echo "container-update-check.sh: $*"; }
fail() {
  echo "container-update-check.sh: FAILED: $*" >&2
  if [ -f "$RUN/updater.log" ]; then echo "--- the updater's log:" >&2; tail -n 25 "$RUN/updater.log" >&2; fi
  exit 1
}

had_registry=true
command -v docker-registry >/dev/null 2>&1 || had_registry=false
ce_setup docker-registry:docker-registry minisign:minisign
if ! $had_registry && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  # The package starts its own registry on :5000 of this machine: not wanted here.
  systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi

ce_namespaces
ce_dockerd --insecure-registry "$REG"
ce_hub

# The registry and the release server in the hub's namespace.
mkdir -p "$RUN/registry" "$RUN/rel"
cat > "$RUN/registry.yml" <<YML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $RUN/registry
http:
  addr: $REG
YML
bg_in_ns "$HUB" "$RUN/registry.log" docker-registry serve "$RUN/registry.yml"
wait_for 20 "the registry answers" in_ns "$GW" curl -sf -m 2 -o /dev/null "http://$REG/v2/"
bg_in_ns "$HUB" "$RUN/release-server.log" python3 -m http.server "$REL_PORT" --bind 10.78.0.1 --directory "$RUN/rel"
wait_for 10 "the release server answers" in_ns "$GW" curl -sf -m 2 -o /dev/null "http://10.78.0.1:$REL_PORT/"

# The release keys: one trusted through gateway.env, one not.
minisign -G -W -p "$RUN/release.pub" -s "$RUN/release.key" -c "container update test key" >/dev/null
minisign -G -W -p "$RUN/other.pub" -s "$RUN/other.key" -c "an untrusted key" >/dev/null
ce_gateway_env
{
  echo "GATELET_UPDATE_URL=http://10.78.0.1:$REL_PORT/manifest.json"
  echo "GATELET_UPDATE_PUBKEY=$(sed -n 2p "$RUN/release.pub")"
} >> "$RUN/gateway.env"
chown 0:65532 "$RUN/gateway.env" && chmod 0640 "$RUN/gateway.env"

# The images. v1: the build; v2 and v3: that build with the version patched (same length).
t0=$(date +%s)
bash deploy/build-image.sh --tag gatelet:upd-build | tee "$RUN/build.out"
say "image built in $(($(date +%s) - t0))s: $(tail -n1 "$RUN/build.out")"
V1=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
bump() { python3 -c 'import sys; a=sys.argv[1].split("."); a[-1]=str(int(a[-1])+int(sys.argv[2])); print(".".join(a))' "$1" "$2"; }
V2=$(bump "$V1" 1) V3=$(bump "$V1" 2)
[ ${#V2} -eq ${#V1} ] && [ ${#V3} -eq ${#V1} ] || fail "versions $V1 $V2 $V3 differ in length"

# make_image VERSION [bad]: builds, pushes, drops the local copy; prints NAME@sha256:DIGEST.
make_image() {
  local v=$1 bad=${2:-} ctx=$RUN/ctx-$1
  mkdir -p "$ctx/target"
  cp Dockerfile "$ctx/"
  cp -a target/docker-rootfs "$ctx/target/"
  if [ "$v" != "$V1" ]; then
    python3 - "$ctx/target/docker-rootfs/base/usr/bin" "$V1" "$v" <<'PY'
import os, sys
d, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
for name in os.listdir(d):
    p = os.path.join(d, name)
    b = open(p, "rb").read()
    if old not in b:
        sys.exit(f"{p}: no {old!r} to patch")
    open(p, "wb").write(b.replace(old, new))
PY
  fi
  if [ "$bad" = bad ]; then
    cp "$ctx/target/docker-rootfs/base/usr/bin/gatelet-agent" "$ctx/target/docker-rootfs/base/usr/bin/gatelet-companion"
  fi
  DOCKER_BUILDKIT=0 docker build -q -t "$REPO:$v" "$ctx" >"$RUN/build-$v.log" 2>&1 ||
    fail "docker build $v: $(tail -n 5 "$RUN/build-$v.log")"
  docker push -q "$REPO:$v" >/dev/null
  local ref
  ref=$(docker image inspect -f '{{index .RepoDigests 0}}' "$REPO:$v")
  docker rmi "$REPO:$v" >/dev/null
  echo "$ref"
}
D1=$(make_image "$V1") D2=$(make_image "$V2") D3=$(make_image "$V3" bad)
say "registry $REG: $V1 $D1, $V2 $D2, $V3 (bad) $D3"
# The running v1 comes from the registry like the others (pulled by digest).
docker rmi gatelet:upd-build >/dev/null
docker pull -q "$D1" >/dev/null

# publish VERSION DIGEST [KEY]: manifest + signature (KEY: release, or other) on the server.
publish() {
  local v=$1 ref=$2 key=${3:-release}
  bash deploy/release-manifest.sh --image "$ref" "$v" "$TRIPLE=$RUN/ctx-$v/target/docker-rootfs/base/usr/bin" \
    > "$RUN/rel/manifest.json"
  rm -f "$RUN/rel/manifest.json.minisig"
  minisign -S -l -s "$RUN/$key.key" -m "$RUN/rel/manifest.json" -t "gatelet $v" >/dev/null
}

RUNNING=$D1
compose up -d
companion_id() { compose ps -q companion; }
healthy_on() { # REF: the companion runs REF and Docker says healthy
  local cid
  cid=$(companion_id) && [ -n "$cid" ] &&
    [ "$(docker inspect -f '{{.Config.Image}} {{.State.Health.Status}}' "$cid")" = "$1 healthy" ]
}
wait_for 120 "v1 runs healthy" healthy_on "$D1"
wait_for 60 "the companion heartbeats" grep -q "POST /api/v1/gateway/heartbeat -> 200" "$RUN/gatecontrol.log"
say "OK: $V1 runs from the registry ($D1), healthy"

STATE=$(docker volume inspect -f '{{.Mountpoint}}' "${PROJECT}_gatelet-state")
TOKEN=$(sed -n 's/^GC_GATEWAY_TOKEN=//p' "$RUN/gateway.env")
API_PORT=$(sed -n 's/^GC_API_PORT=//p' "$RUN/gateway.env")

# request ID TARGET(or null): POST /api/self-update from the hub through the tunnel, as
# GateControl does; retried while the companion answers "cooldown" (60 s after a queued request
# or a successful pull, the reference's rule). Sets T_REQ.
request() {
  local id=$1 target=$2 body reply
  T_REQ=
  [ "$target" = null ] || target="\"$target\""
  body="{\"request_id\":\"$id\",\"target_version\":$target}"
  for _ in $(seq 30); do
    reply=$(in_ns "$HUB" curl -sS -m 10 -X POST -H "X-Gateway-Token: $TOKEN" \
              -H "Content-Type: application/json" -d "$body" "http://10.8.0.2:$API_PORT/api/self-update") ||
      fail "POST /api/self-update ($id): $reply"
    case $reply in
      *'"queued":true'*) T_REQ=$(date +%s.%N); break ;;
      *cooldown*) sleep 5 ;;
      *) fail "POST /api/self-update ($id) answered $reply" ;;
    esac
  done
  [ -n "${T_REQ:-}" ] || fail "$id: still in cooldown after 150 s"
  [ -f "$STATE/pending-update" ] || fail "$id: queued, but no flag in the state volume"
}

# The updater, as the path unit (or the DSM task) starts it: in the gateway's namespace (the
# Docker host's network), against this project.
UPDATER=(env GATELET_COMPOSE_FILE=deploy/docker-compose.yml "GATELET_PROJECT=$PROJECT"
  "GATELET_ENV=$RUN/gateway.env" "GATELET_UPDATE_DIR=$RUN/updater"
  "GATELET_HEALTH_TIMEOUT=$HEALTH_TIMEOUT"
  nsenter --net="/var/run/netns/$GW" bash deploy/gatelet-container-update.sh)
run_updater() {
  local rc=0
  echo "--- $1" >> "$RUN/updater.log"
  timeout 600 "${UPDATER[@]}" >> "$RUN/updater.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$RUN/updater.log" >&2
    fail "$1: the updater exited $rc"
  fi
}

blob_bytes() { # bytes of blobs the registry has served so far
  awk '/GET \/v2\/[^ ]*\/blobs\/sha256:[0-9a-f]* HTTP[^"]*" 200 / { for (i = 1; i <= NF; i++) if ($i == "200") { s += $(i + 1); break } } END { print s + 0 }' "$RUN/registry.log"
}
registry_gets() { grep -c 'GET /v2/' "$RUN/registry.log" || true; }

# expect_last_pull ID OK [VERSION] [DIGEST_REF] [REASON]
expect_last_pull() {
  local id=$1 ok=$2 version=${3:-} ref=${4:-} reason=${5:-} lp
  lp=$(cat "$STATE/last-pull" 2>/dev/null) || fail "$id: no last-pull"
  python3 - "$lp" "$id" "$ok" "$version" "${ref##*@}" "$reason" <<'PY' || fail "$id: last-pull is $lp"
import json, sys
lp = json.loads(sys.argv[1])
_, rid, ok, version, digest, reason = sys.argv[1:]
assert lp["request_id"] == rid, "request_id"
assert lp["ok"] is (ok == "true"), "ok"
assert isinstance(lp["pulled_at"], int), "pulled_at"
if version: assert lp["version"] == version, "version"
if digest: assert lp["image_digest"] == digest, "image_digest"
if reason: assert reason in (lp["reason"] or ""), "reason"
PY
  [ ! -e "$STATE/pending-update" ] || fail "$id: the flag is still there"
}
heartbeat_with() { # ID OK VERSION REF: the fake server saw a heartbeat with these fields
  grep -qF "last_pull \"$1\" $2 " "$RUN/gatecontrol.log" &&
    grep -F "last_pull \"$1\" $2 " "$RUN/gatecontrol.log" | tail -n1 |
      grep -qF "gateway_version \"$3\" image_digest \"${4##*@}\""
}

# 0. Nothing queued: the updater exits at once and changes nothing (as the DSM task runs it every
# minute).
cid0=$(companion_id)
run_updater idle
[ ! -e "$STATE/last-pull" ] && [ "$(companion_id)" = "$cid0" ] || fail "idle: the updater did something"
say "OK: nothing queued: the updater exits, nothing changed"

# 1. v1 -> v2.
publish "$V2" "$D2"
bytes0=$(blob_bytes)
request r-up "$V2"
run_updater r-up
t_up=$(python3 -c "import time; print(f'{time.time() - $T_REQ:.1f}')")
bytes_up=$(($(blob_bytes) - bytes0))
RUNNING=$D2
healthy_on "$D2" || fail "r-up: the companion does not run $D2 healthy"
expect_last_pull r-up true "$V2" "$D2"
wait_for 60 "a heartbeat with last_pull r-up true, gateway_version $V2 and the image digest" heartbeat_with r-up true "$V2" "$D2"
say "OK: $V1 -> $V2: request to healthy $V2 ${t_up} s (health check interval 30 s), $bytes_up bytes pulled"
say "OK: heartbeat: $(grep -F 'last_pull "r-up" true' "$RUN/gatecontrol.log" | tail -n1 | sed 's/^ *//')"

# 2. An untrusted signature: refused before any pull.
publish "$V3" "$D3" other
gets0=$(registry_gets) cid0=$(companion_id)
request r-badsig "$V3"
run_updater r-badsig
expect_last_pull r-badsig false "" "$D2" "not a trusted release key"
[ "$(registry_gets)" = "$gets0" ] || fail "r-badsig: the registry was asked for something"
[ "$(companion_id)" = "$cid0" ] && healthy_on "$D2" || fail "r-badsig: the running container changed"
wait_for 60 "a heartbeat with last_pull r-badsig false" heartbeat_with r-badsig false "$V2" "$D2"
say "OK: untrusted signature refused, nothing pulled: $(sed -n 's/.*"reason":"\([^"]*\)".*/\1/p' "$STATE/last-pull")"

# 3. The bad v3: rolled back to v2.
publish "$V3" "$D3"
request r-bad "$V3"
run_updater r-bad
t_bad=$(python3 -c "import time; print(f'{time.time() - $T_REQ:.1f}')")
healthy_on "$D2" || fail "r-bad: not back on $D2"
expect_last_pull r-bad false "" "$D2" "$V3"
wait_for 60 "a heartbeat with last_pull r-bad false" heartbeat_with r-bad false "$V2" "$D2"
say "OK: bad $V3 rolled back to $V2 in ${t_bad} s: $(sed -n 's/.*"reason":"\([^"]*\)".*/\1/p' "$STATE/last-pull")"

# 4. The v1 manifest replayed, no target: already current, nothing pulled.
publish "$V1" "$D1"
gets0=$(registry_gets)
request r-replay null
run_updater r-replay
expect_last_pull r-replay true "$V2" "$D2"
[ "$(registry_gets)" = "$gets0" ] && healthy_on "$D2" || fail "r-replay: pulled or switched"
say "OK: an older manifest without a target: already current on $V2, nothing pulled"

# 5. The downgrade, asked for: v2 -> v1.
request r-down "$V1"
run_updater r-down
RUNNING=$D1
healthy_on "$D1" || fail "r-down: not on $D1"
expect_last_pull r-down true "$V1" "$D1"
wait_for 60 "a heartbeat with last_pull r-down true" heartbeat_with r-down true "$V1" "$D1"
say "OK: $V2 -> $V1 when asked for $V1 (target_version): done"

# 6. Killed while recreating the services, then run again.
publish "$V2" "$D2"
request r-kill "$V2"
echo "--- r-kill (killed)" >> "$RUN/updater.log"
setsid "${UPDATER[@]}" >> "$RUN/updater.log" 2>&1 &
upid=$!
wait_for 120 "the updater recreates the services" grep -q "recreating the services on $D2" "$RUN/updater.log"
sleep 3
kill -9 -- "-$upid" 2>/dev/null || true
wait "$upid" 2>/dev/null || true
[ -s "$RUN/updater/journal" ] || fail "r-kill: no journal after the kill"
say "killed the updater while it recreated the services (journal: $(cat "$RUN/updater/journal"))"
run_updater r-kill-rerun
lp=$(cat "$STATE/last-pull")
case $lp in
  *'"ok":true'*) RUNNING=$D2; expect_last_pull r-kill true "$V2" "$D2" ;;
  *) RUNNING=$D1; expect_last_pull r-kill false "" "$D1" "interrupted" ;;
esac
wait_for 60 "a healthy companion after the rerun" healthy_on "$RUNNING"
[ ! -e "$RUN/updater/journal" ] || fail "r-kill: the journal is still there"
say "OK: killed mid-way, the rerun ended on $RUNNING, healthy: $lp"
say "OK: all container self-update checks passed"
