#!/usr/bin/env bash
# The host-side self-updater of the container deployment (docs/self-update.md, "Containers").
# Started by gatelet-container-update.path when the companion queues a request (POST
# /api/self-update writes pending-update into its state volume), or every minute by a scheduled
# task (Synology DSM). One run answers at most one request, then exits:
#
#  1. reads gateway.env's GATELET_UPDATE_URL and fetches the manifest and <url>.minisig (curl,
#     64 KiB cap, 60 s);
#  2. `gatelet-companion container-plan` from the image that is running (docker run --rm, no
#     network, read-only, no capability, uid 65532): reads the request, VERIFIES the signature
#     against that image's trusted keys (built in + GATELET_UPDATE_PUBKEY) and decides: install
#     the manifest's image BY DIGEST, "already current", or refuse with a reason;
#  3. records the running image (by digest) and the target in its journal, pulls the target by
#     digest, recreates the services on it (docker compose, else docker-compose), and waits (at
#     most GATELET_HEALTH_TIMEOUT, default 300 s) for Docker's HEALTHCHECK healthy AND the
#     companion reporting the new version (`gatelet-companion status --json`) AND the agent's
#     container running the target image;
#  4. otherwise recreates the services on the recorded image (rollback);
#  5. `gatelet-companion container-report` writes <state>/last-pull ({request_id, ok, pulled_at,
#     version, reason, image_digest}), which the heartbeat reports, and removes the flag.
#
# Killed at any point, a rerun (the path unit starts it again while the flag or the journal
# exists; the DSM task within a minute) finds the journal: if the services already run the
# target healthy, it reports success; otherwise it recreates them on the recorded image and
# reports the failure ("interrupted"). So some container always ends up running.
#
# Settings (environment; the systemd unit reads /etc/gatelet/container-update.env):
#   GATELET_COMPOSE_FILE   the compose file (default /etc/gatelet/docker-compose.yml)
#   GATELET_PROJECT        its compose project name (default gatelet)
#   GATELET_ENV            gateway.env on the host (default /etc/gatelet/gateway.env)
#   GATELET_UPDATE_DIR     journal, pinned image, fetched manifest (default
#                          /var/lib/gatelet-container-update; root's, outside the volume the
#                          companion writes)
#   GATELET_HEALTH_TIMEOUT seconds the new image gets to become healthy (default 300)
# The image the services run is pinned in $GATELET_UPDATE_DIR/image and passed to compose as
# GATELET_IMAGE; run compose by hand as
#   GATELET_IMAGE=$(cat /var/lib/gatelet-container-update/image) docker compose -p gatelet -f ... up -d
# Needs: root or the docker group (either is root-equivalent on the host), curl, flock.
# Exit: 0 when nothing is left to do (also after a reported failure); 1 when it could not report.
set -euo pipefail

COMPOSE_FILE=${GATELET_COMPOSE_FILE:-/etc/gatelet/docker-compose.yml}
PROJECT=${GATELET_PROJECT:-gatelet}
ENV_FILE=${GATELET_ENV:-/etc/gatelet/gateway.env}
DIR=${GATELET_UPDATE_DIR:-/var/lib/gatelet-container-update}
HEALTH_TIMEOUT=${GATELET_HEALTH_TIMEOUT:-300}
STATE_VOLUME=${PROJECT}_gatelet-state

log() { echo "gatelet-container-update: $*" >&2; }
die() { log "$*"; exit 1; }

case $HEALTH_TIMEOUT in
  '' | *[!0-9]*) die "GATELET_HEALTH_TIMEOUT must be a number of seconds, not '$HEALTH_TIMEOUT'" ;;
esac
[ -f "$COMPOSE_FILE" ] || die "no compose file $COMPOSE_FILE (set GATELET_COMPOSE_FILE)"
[ -f "$ENV_FILE" ] || die "no gateway.env $ENV_FILE (set GATELET_ENV)"
mkdir -p "$DIR/fetched"
chmod 0755 "$DIR" "$DIR/fetched"

# One run at a time (the DSM task fires every minute; an update takes longer).
exec 9>"$DIR/lock"
if ! flock -n 9; then
  log "another run is in progress"
  exit 0
fi

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  die "neither 'docker compose' nor docker-compose is installed"
fi
# compose REF ARGS...: compose with the services' image set to REF.
compose() {
  local ref=$1
  shift
  GATELET_IMAGE=$ref GATELET_ENV=$ENV_FILE "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"
}

# Writes $DIR/NAME atomically.
put() { printf '%s\n' "$2" >"$DIR/.$1.tmp" && sync "$DIR/.$1.tmp" && mv -f "$DIR/.$1.tmp" "$DIR/$1"; }

STATE_DIR=$(docker volume inspect -f '{{.Mountpoint}}' "$STATE_VOLUME" 2>/dev/null) ||
  die "no volume $STATE_VOLUME: is the project '$PROJECT' up (GATELET_PROJECT)?"
FLAG=$STATE_DIR/pending-update

# The image the services run now, by digest where it has one (else its local image ID).
current_ref() {
  if [ -s "$DIR/image" ]; then
    cat "$DIR/image"
    return
  fi
  local cid cfg
  cid=$(compose gatelet:unknown ps -q companion 2>/dev/null || true)
  [ -n "$cid" ] || die "no companion container in project $PROJECT, and no pinned image in $DIR/image"
  cfg=$(docker inspect -f '{{.Config.Image}}' "$cid")
  case $cfg in
    *@sha256:*) echo "$cfg" ;;
    *)
      local rd
      rd=$(docker image inspect -f '{{range .RepoDigests}}{{.}} {{end}}' "$cfg" 2>/dev/null | cut -d' ' -f1)
      if [ -n "$rd" ]; then echo "$rd"; else docker inspect -f '{{.Image}}' "$cid"; fi
      ;;
  esac
}

# The digest reported for REF (sha256:HEX of NAME@sha256:HEX, else the image's first repo
# digest), or nothing.
digest_of() {
  case $1 in
    *@sha256:*) echo "sha256:${1##*@sha256:}" ;;
    *) docker image inspect -f '{{range .RepoDigests}}{{.}} {{end}}' "$1" 2>/dev/null |
         sed -n 's/^[^ ]*@\(sha256:[0-9a-f]\{64\}\).*/\1/p' ;;
  esac
}

# The updater code of IMAGE, with nothing but what it reads.
helper() {
  local image=$1
  shift
  docker run --rm --network none --read-only --cap-drop ALL --security-opt no-new-privileges:true \
    --user 65532:65532 --entrypoint /usr/bin/gatelet-companion \
    -v "$ENV_FILE:/etc/gatelet/gateway.env:ro" -v "$STATE_VOLUME:/var/lib/gatelet" \
    -v "$DIR/fetched:/var/lib/gatelet-container-update:ro" "$image" "$@"
}

# report IMAGE REF ok|REASON [VERSION]: answers the queued request; a missing flag (already
# answered) is fine.
report() {
  local image=$1 ref=$2 outcome=$3 version=${4:-} digest rc=0
  local args=(container-report)
  if [ "$outcome" = ok ]; then args+=(--ok); else args+=(--failed "$outcome"); fi
  [ -z "$version" ] || args+=(--version "$version")
  digest=$(digest_of "$ref")
  [ -z "$digest" ] || args+=(--image-digest "$digest")
  helper "$image" "${args[@]}" || rc=$?
  case $rc in
    0) log "reported: $outcome${version:+ ($version)}${digest:+ $digest}" ;;
    3) log "no request left to answer ($outcome)" ;;
    *) die "could not write last-pull with $image (exit $rc)" ;;
  esac
}

# healthy REF VERSION: Docker's HEALTHCHECK says healthy (the companion answers and reaches the
# agent), the companion reports VERSION, and the agent's container runs REF. (Not the agent's own
# version report: both containers run one image, so the agent running REF by digest is its
# version.) What it saw last is in $SEEN (for the reason of a failure).
SEEN=
healthy() {
  local cid aid status json cv agent
  SEEN="no companion container"
  cid=$(compose "$1" ps -q companion 2>/dev/null) || return 1
  [ -n "$cid" ] || return 1
  status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid" 2>/dev/null) || return 1
  SEEN="Docker health ${status:-none}"
  [ "$status" = healthy ] || return 1
  if ! json=$(docker exec "$cid" /usr/bin/gatelet-companion status --json 2>&1); then
    SEEN="$SEEN; status --json failed: $(tail -n1 <<<"$json")"
    return 1
  fi
  cv=$(sed -n 's/^ *"companion_version": *"\([^"]*\)".*/\1/p;T;q' <<<"$json")
  SEEN="$SEEN; companion ${cv:-?}"
  [ "$cv" = "$2" ] || return 1
  aid=$(compose "$1" ps -q agent 2>/dev/null) || return 1
  agent=$(docker inspect -f '{{.State.Running}} {{.Config.Image}}' "$aid" 2>/dev/null) || agent=none
  SEEN="$SEEN; agent container: $agent"
  [ "$agent" = "true $1" ]
}

# The version the image REF says it is (its gatelet-companion --version).
version_of() {
  docker run --rm --network none --entrypoint /usr/bin/gatelet-companion "$1" --version 2>/dev/null |
    sed -n 's/^gatelet-companion \([0-9A-Za-z.-]*\)$/\1/p'
}

# switch REF VERSION: recreate the services on REF and wait until healthy on VERSION; returns
# 0 when healthy, else 1 with the reason in $WHY.
WHY=
switch() {
  local ref=$1 version=$2 cid exited
  log "recreating the services on $ref"
  if ! compose "$ref" up -d --no-build --remove-orphans >&2; then
    WHY="docker compose up on $ref failed"
    return 1
  fi
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    if healthy "$ref" "$version"; then
      return 0
    fi
    cid=$(compose "$ref" ps -q companion 2>/dev/null || true)
    # A companion that exited for good (its restart policy gave up) will not become healthy.
    if [ -n "$cid" ]; then
      exited=$(docker inspect -f '{{if and (not .State.Running) (not .State.Restarting)}}{{.State.ExitCode}} {{.RestartCount}}{{end}}' "$cid" 2>/dev/null || true)
      if [ -n "$exited" ] && [ "${exited#* }" -ge 5 ]; then
        WHY="$version: the companion exited (status ${exited%% *}) after ${exited#* } restarts"
        return 1
      fi
    fi
    sleep 2
  done
  WHY="$version not healthy within ${HEALTH_TIMEOUT} s ($SEEN)"
  return 1
}

# rollback OLD REASON: back to OLD, pinned, and the failure reported by OLD's own updater code.
rollback() {
  local old=$1 reason=$2 old_version
  old_version=$(version_of "$old")
  if switch "$old" "$old_version"; then
    log "rolled back to $old ($old_version)"
  else
    log "rolled back to $old, which is not healthy either: $WHY"
    reason="$reason; the previous image is not healthy either: $WHY"
  fi
  put image "$old"
  report "$old" "$old" "$reason"
  rm -f "$DIR/journal"
}

# A journal: an earlier run was killed mid-way.
if [ -s "$DIR/journal" ]; then
  read -r j_old j_new j_version <"$DIR/journal" || true
  log "resuming an interrupted update ($j_old -> $j_new)"
  if [ -n "$j_new" ] && healthy "$j_new" "$j_version"; then
    put image "$j_new"
    report "$j_new" "$j_new" ok "$j_version"
    rm -f "$DIR/journal"
  else
    rollback "$j_old" "the update to $j_version was interrupted; rolled back"
  fi
  exit 0
fi

[ -f "$FLAG" ] || exit 0
CURRENT=$(current_ref)
put image "$CURRENT"

# 1. The manifest: the URL from gateway.env (a value on one line; quotes stripped).
url=$(sed -n 's/^[[:space:]]*GATELET_UPDATE_URL[[:space:]]*=[[:space:]]*//p' "$ENV_FILE" | tail -n1 |
      sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/")
rm -rf "$DIR/fetched"
mkdir -p "$DIR/fetched"
chmod 0755 "$DIR/fetched"
if [ -n "$url" ]; then
  for part in "" .minisig; do
    if ! err=$(curl -fsS --proto '=http,https' --max-filesize 65536 -m 60 -o "$DIR/fetched/manifest.json$part" \
                 -- "$url$part" 2>&1); then
      report "$CURRENT" "$CURRENT" "fetching $url$part: ${err:-curl failed}"
      exit 0
    fi
  done
fi
chmod 0644 "$DIR"/fetched/* 2>/dev/null || true

# 2. Verify and decide, with the running image's code and keys.
plan=$(helper "$CURRENT" container-plan --manifest /var/lib/gatelet-container-update/manifest.json \
         --signature /var/lib/gatelet-container-update/manifest.json.minisig) || true
action=$(sed -n 's/^action=//p' <<<"$plan")
case $action in
  none) exit 0 ;;
  current)
    report "$CURRENT" "$CURRENT" ok "$(sed -n 's/^version=//p' <<<"$plan")"
    exit 0 ;;
  refuse)
    report "$CURRENT" "$CURRENT" "$(sed -n 's/^reason=//p' <<<"$plan")"
    exit 0 ;;
  install) ;;
  *) die "gatelet-companion container-plan in $CURRENT answered '$plan' (an image without container-plan cannot update itself: update it by hand once)" ;;
esac
version=$(sed -n 's/^version=//p' <<<"$plan")
target=$(sed -n 's/^image=//p' <<<"$plan")

# 3. Journal first, then pull by digest and switch.
put journal "$CURRENT $target $version"
t0=$SECONDS
log "pulling $target ($version)"
if ! err=$(docker pull -q "$target" 2>&1); then
  rm -f "$DIR/journal"
  report "$CURRENT" "$CURRENT" "pulling $target: $(tail -n1 <<<"$err")"
  exit 0
fi
log "pulled in $((SECONDS - t0)) s"
if switch "$target" "$version"; then
  log "$version healthy $((SECONDS - t0)) s after the pull started"
  put image "$target"
  report "$target" "$target" ok "$version"
  rm -f "$DIR/journal"
else
  log "$WHY: rolling back to $CURRENT"
  rollback "$CURRENT" "$WHY"
fi
