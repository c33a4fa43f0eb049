#!/usr/bin/env bash
# Writes a self-update release manifest (docs/self-update.md) for built binaries to stdout.
#
#   bash deploy/release-manifest.sh [--image NAME@sha256:DIGEST] VERSION TRIPLE=DIR [TRIPLE=DIR ...] > manifest.json
#
# --image: the release's container image by digest (`docker inspect -f '{{index .RepoDigests 0}}'`
# after the push), which deploy/gatelet-container-update.sh pulls; manifests without it still
# serve flashed boxes, and updaters older than the field ignore it.
#
# Each DIR holds gatelet-agent and gatelet-companion for TRIPLE (e.g.
# aarch64-unknown-linux-musl=target/aarch64-unknown-linux-musl/release). Their URLs are written
# relative to the manifest, as TRIPLE/<name>: publish each DIR's two files under TRIPLE/ next to
# manifest.json. Then sign it (minisign's legacy mode, which gatelet verifies):
#
#   minisign -S -l -s gatelet-release.key -m manifest.json -t "gatelet VERSION"
set -euo pipefail
image=
if [ "${1:-}" = --image ]; then
    image=${2:-}
    shift 2 || true
    if ! [[ $image =~ ^[A-Za-z0-9_][A-Za-z0-9._/:-]*@sha256:[0-9a-f]{64}$ ]]; then
        echo "release-manifest: --image must be NAME@sha256:<64 hex digits>, not '$image'" >&2
        exit 64
    fi
fi
if [ $# -lt 2 ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
fi
version=$1
shift
if ! [[ $version =~ ^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]]; then
    echo "release-manifest: $version is not MAJOR.MINOR.PATCH[-pre]" >&2
    exit 64
fi
printf '{\n  "schema": 1,\n  "version": "%s",\n' "${version#v}"
if [ -n "$image" ]; then
    printf '  "image": "%s",\n' "$image"
fi
printf '  "targets": {'
sep=
for arg in "$@"; do
    triple=${arg%%=*}
    dir=${arg#*=}
    if [ "$triple" = "$arg" ] || ! [[ $triple =~ ^[a-z0-9_]+(-[a-z0-9_]+)+$ ]]; then
        echo "release-manifest: expected TRIPLE=DIR, got $arg" >&2
        exit 64
    fi
    printf '%s\n    "%s": {' "$sep" "$triple"
    bsep=
    for name in gatelet-agent gatelet-companion; do
        file=$dir/$name
        if [ ! -f "$file" ]; then
            echo "release-manifest: $file missing" >&2
            exit 66
        fi
        size=$(stat -c %s "$file")
        sum=$(sha256sum "$file" | cut -d' ' -f1)
        printf '%s\n      "%s": {"url": "%s/%s", "size": %s, "sha256": "%s"}' \
            "$bsep" "$name" "$triple" "$name" "$size" "$sum"
        bsep=,
    done
    printf '\n    }'
    sep=,
done
printf '\n  }\n}\n'
