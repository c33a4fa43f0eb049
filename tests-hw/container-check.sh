#!/usr/bin/env bash
# The container deployment, end to end: the image built by deploy/build-image.sh, run as
# deploy/docker-compose.yml says (both containers, host networking, the agent in TUN mode with
# only NET_ADMIN and /dev/net/tun, the companion as uid 65532), then as
# deploy/docker-compose.userspace.yml says (the agent in userspace network stack mode as uid 65532
# with no capability and no device; the companion syncs with the same server on the hub's tunnel
# address through the agent's loopback CONNECT proxy into its stack), against a hub in a namespace
# (the test bed of tests-hw/lib/container-env.sh: hub, gateway namespace with its own dockerd, LAN
# host; namespaces ctr-hub, ctr-gw, ctr-lan).
#
# Checks: a gateway.env of mode 0600 stops the companion (root's file) and the agent (another
# user's file) with exit 64 and says what to do; then,
# with the documented 0640 root:65532, the tunnel handshakes, the config syncs and heartbeats,
# the agent's control socket is group 65532 and the companion reaches it, the HTTP route and the
# L4 route answer from the hub, and Docker reports the HEALTHCHECK healthy; then the same for the
# userspace variant, plus: the agent's uid/gid 65532 and empty capability sets (from /proc), no
# /dev/net/tun open, no gatelet0, its socket 65532:65532 0660. Prints the image size. Before
# all that: the image carries the license texts (/usr/share/doc/gatelet, as in the repository).
#
# Usage: tests-hw/container-check.sh   (root; installs docker.io, docker-compose, wireguard-go,
# wireguard-tools, iproute2, curl with apt-get when missing; builds with deploy/build-image.sh,
# which needs zig and cargo-zigbuild as .ci/run installs them). Cleans up containers, the
# daemon, its data and the namespaces, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CE_NAME=container-check.sh CE_PREFIX=ctr
# shellcheck source=tests-hw/lib/container-env.sh
. tests-hw/lib/container-env.sh
PROJECT=gatelet-check
TAG=gatelet:check

# The compose file of the variant being checked (kernel first, then userspace) and its env file.
COMPOSE_FILE=deploy/docker-compose.yml
ENV_FILE=gateway.env
compose() {
  GATELET_ENV="$RUN/$ENV_FILE" GATELET_IMAGE=$TAG \
    docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"
}
ce_cleanup_hook() {
  compose down -v --timeout 5
  docker rm -f gatelet-check-env
}
ce_setup

ce_namespaces
ce_dockerd

t0=$(date +%s)
bash deploy/build-image.sh --tag "$TAG" | tee "$RUN/build.out"
size=$(sed -n 's/^image size: \([0-9]*\) bytes$/\1/p' "$RUN/build.out")
echo "container-check.sh: image built in $(($(date +%s) - t0))s: $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1e6 }') MB)"
# The license terms travel with the binaries (the image has no shell: read them with docker cp).
docker create --name gatelet-check-doc "$TAG" >/dev/null
image_doc() { docker cp "gatelet-check-doc:/usr/share/doc/gatelet/$1" - | tar -xO; }
docs_ok=true
for f in LICENSE-MIT LICENSE-APACHE; do
  image_doc "$f" | cmp -s - "$f" || { echo "container-check.sh: /usr/share/doc/gatelet/$f differs or is missing" >&2; docs_ok=false; }
done
image_doc THIRD-PARTY-LICENSES.txt.gz | gzip -dc | cmp -s - THIRD-PARTY-LICENSES.txt ||
  { echo "container-check.sh: /usr/share/doc/gatelet/THIRD-PARTY-LICENSES.txt.gz differs or is missing" >&2; docs_ok=false; }
docker rm gatelet-check-doc >/dev/null
if [ "$docs_ok" != true ]; then
  echo "container-check.sh: FAILED: the image does not carry the license texts of the repository" >&2
  exit 1
fi
echo "container-check.sh: OK: the image carries LICENSE-MIT, LICENSE-APACHE and THIRD-PARTY-LICENSES.txt.gz"

ce_hub
ce_gateway_env

# 1. The way it goes wrong today: root-owned 0600. The companion must stop with 64 and say what
# to do, naming the file's owner and mode.
chown 0:0 "$RUN/gateway.env" && chmod 0600 "$RUN/gateway.env"
rc=0
docker run --name gatelet-check-env --user 65532:65532 --network none --read-only \
  --cap-drop ALL --security-opt no-new-privileges:true \
  -v "$RUN/gateway.env:/etc/gatelet/gateway.env:ro" "$TAG" >"$RUN/env-0600.out" 2>&1 || rc=$?
docker rm -f gatelet-check-env >/dev/null 2>&1
if [ "$rc" -ne 64 ] || ! grep -q "owner 0, group 0, mode 0600.*chgrp 65532 /etc/gatelet/gateway.env && chmod 0640" "$RUN/env-0600.out"; then
  echo "container-check.sh: FAILED: gateway.env 0600: want exit 64 and the chgrp/chmod advice, got exit $rc:" >&2
  cat "$RUN/env-0600.out" >&2
  exit 1
fi
echo "container-check.sh: OK: gateway.env 0600 -> exit 64: $(cat "$RUN/env-0600.out")"
# The agent as compose runs it (uid 0 without CAP_DAC_OVERRIDE), the file as a NAS admin's
# upload leaves it (that user's, 0600): the same exit 64 and advice.
chown 1000:1000 "$RUN/gateway.env"
rc=0
docker run --name gatelet-check-env --user 0:65532 --network none --read-only \
  --cap-drop ALL --security-opt no-new-privileges:true --entrypoint /usr/bin/gatelet-agent \
  -v "$RUN/gateway.env:/etc/gatelet/gateway.env:ro" "$TAG" \
  --env /etc/gatelet/gateway.env --state-dir /tmp/agent >"$RUN/env-agent.out" 2>&1 || rc=$?
docker rm -f gatelet-check-env >/dev/null 2>&1
if [ "$rc" -ne 64 ] || ! grep -q "owner 1000, group 1000, mode 0600.*chgrp 65532 /etc/gatelet/gateway.env && chmod 0640" "$RUN/env-agent.out"; then
  echo "container-check.sh: FAILED: agent, gateway.env 1000:1000 0600: want exit 64 and the advice, got exit $rc:" >&2
  cat "$RUN/env-agent.out" >&2
  exit 1
fi
echo "container-check.sh: OK: agent, gateway.env 1000:1000 0600 -> exit 64 with the same advice"

# 2. As documented: root:65532 0640, both containers from the compose file.
chown 0:65532 "$RUN/gateway.env" && chmod 0640 "$RUN/gateway.env"
compose up -d
wait_for 30 "the tunnel carries a ping (hub -> gateway 10.8.0.2)" in_ns $HUB ping -c1 -W1 10.8.0.2
wait_for 40 "the companion syncs its config over the tunnel and heartbeats" \
  grep -q "POST /api/v1/gateway/heartbeat -> 200" "$RUN/gatecontrol.log"
wait_for 20 "the companion reaches the agent (status --health in the companion container)" \
  compose exec -T companion /usr/bin/gatelet-companion status --health
echo "container-check.sh: OK: $(compose exec -T companion /usr/bin/gatelet-companion status --health)"
sock="$(docker volume inspect -f '{{.Mountpoint}}' "${PROJECT}_gatelet-run")/agent.sock"
if [ "$(stat -c '%u:%g %a' "$sock")" != "0:65532 660" ]; then
  echo "container-check.sh: FAILED: agent.sock is $(stat -c '%u:%g %a' "$sock"), want 0:65532 660" >&2
  exit 1
fi
echo "container-check.sh: OK: agent.sock is owner 0, group 65532, mode 0660"
from_hub_contains() { ip netns exec $HUB sh -c "$1" 2>/dev/null | grep -qF "$2"; }
wait_for 15 "the HTTP route answers from the hub" \
  from_hub_contains "curl -sS -m 5 -H 'Host: files.check' http://10.8.0.2:8080/" "hello from the LAN host"
wait_for 10 "the L4 route answers from the hub" \
  from_hub_contains "curl -sS -m 5 http://10.8.0.2:2222/" "hello from the LAN host"
companion_id=$(compose ps -q companion)
health() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$companion_id")" = healthy ]; }
wait_for 60 "Docker reports the companion's HEALTHCHECK healthy" health

echo "container-check.sh: OK: kernel variant (deploy/docker-compose.yml; agent: uid 0, NET_ADMIN only;"
echo "container-check.sh: OK: companion: uid 65532, no capabilities): tunnel, config sync, heartbeats,"
echo "container-check.sh: OK: HTTP route and L4 route answer from the hub; HEALTHCHECK healthy"
compose down -v --timeout 10 >/dev/null 2>&1
wait_for 15 "the kernel variant's gatelet0 is gone" sh -c "! ip netns exec $GW ip link show gatelet0"

# 3. The userspace variant (deploy/docker-compose.userspace.yml): the agent as 65532 with no
# capability and no device, the tunnel in its smoltcp stack. The same gateway.env: the companion
# reaches the server on the hub's tunnel address (10.8.0.1:3000) through the agent's loopback
# CONNECT proxy into the tunnel; nothing else in the gateway's namespace reaches it (checked).
echo "container-check.sh: userspace variant"
heartbeats_before=$(grep -c "POST /api/v1/gateway/heartbeat -> 200" "$RUN/gatecontrol.log" || true)
COMPOSE_FILE=deploy/docker-compose.userspace.yml ENV_FILE=gateway.env
compose up -d
agent_id=$(compose ps -q agent)
wait_for 20 "the userspace agent runs" sh -c "[ \"\$(docker inspect -f '{{.State.Running}}' $agent_id)\" = true ]"
agent_pid=$(docker inspect -f '{{.State.Pid}}' "$agent_id")
# Supplementary groups: none, or only 65532 (Docker adds the image's /etc/group memberships).
privs=$(awk '/^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb):/ { $1 = $1; print }
             /^Groups:/ { g = ""; for (i = 2; i <= NF; i++) if ($i != 65532) g = g " " $i; print "Groups:" g }' \
        "/proc/$agent_pid/status" | tr '\n' ';')
want="Uid: 65532 65532 65532 65532;Gid: 65532 65532 65532 65532;Groups:;CapInh: 0000000000000000;CapPrm: 0000000000000000;CapEff: 0000000000000000;CapBnd: 0000000000000000;CapAmb: 0000000000000000;"
if [ "$privs" != "$want" ]; then
  echo "container-check.sh: FAILED: the userspace agent (pid $agent_pid) runs with $privs, want $want" >&2
  exit 1
fi
if ls -l "/proc/$agent_pid/fd" 2>/dev/null | grep -q /dev/net/tun || ip netns exec $GW ip link show gatelet0 >/dev/null 2>&1; then
  echo "container-check.sh: FAILED: the userspace agent has /dev/net/tun open or a gatelet0 device exists" >&2
  exit 1
fi
echo "container-check.sh: OK: userspace agent: uid/gid 65532, every capability set empty, no TUN device"
wait_for 30 "the userspace tunnel answers a ping (hub -> gateway 10.8.0.2, the agent's stack)" in_ns $HUB ping -c1 -W1 10.8.0.2
new_heartbeats() {
  [ "$(grep -c "POST /api/v1/gateway/heartbeat -> 200" "$RUN/gatecontrol.log" || true)" -gt "$heartbeats_before" ]
}
wait_for 40 "the companion syncs its config and heartbeats (userspace variant, through the agent's proxy into the tunnel)" \
  new_heartbeats
if in_ns $GW curl -sS -m 3 -o /dev/null http://10.8.0.1:3000/ 2>/dev/null; then
  echo "container-check.sh: FAILED: the gateway's namespace reaches 10.8.0.1:3000 without the agent's proxy" >&2
  exit 1
fi
wait_for 20 "the companion reaches the userspace agent" \
  compose exec -T companion /usr/bin/gatelet-companion status --health
sock="$(docker volume inspect -f '{{.Mountpoint}}' "${PROJECT}_gatelet-run")/agent.sock"
if [ "$(stat -c '%u:%g %a' "$sock")" != "65532:65532 660" ]; then
  echo "container-check.sh: FAILED: userspace agent.sock is $(stat -c '%u:%g %a' "$sock"), want 65532:65532 660" >&2
  exit 1
fi
wait_for 15 "the HTTP route answers from the hub (userspace)" \
  from_hub_contains "curl -sS -m 5 -H 'Host: files.check' http://10.8.0.2:8080/" "hello from the LAN host"
wait_for 10 "the L4 route answers from the hub (userspace)" \
  from_hub_contains "curl -sS -m 5 http://10.8.0.2:2222/" "hello from the LAN host"
companion_id=$(compose ps -q companion)
wait_for 60 "Docker reports the companion's HEALTHCHECK healthy (userspace)" health

echo "container-check.sh: OK: userspace variant (deploy/docker-compose.userspace.yml; agent: uid 65532,"
echo "container-check.sh: OK: no capability, no device): tunnel, config sync and heartbeats via the agent's proxy into the tunnel,"
echo "container-check.sh: OK: HTTP route and L4 route answer from the hub; HEALTHCHECK healthy"
echo "container-check.sh: OK: image $TAG $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1e6 }') MB; target <= 6 MB)"
