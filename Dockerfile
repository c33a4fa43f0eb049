# gatelet in a container: the static musl binaries on an empty base (no libc, no shell).
#
# The binaries are built OUTSIDE Docker (zig links musl with the bundled SQLite; no Rust toolchain
# in the image build):
#     bash tests-hw/bench/sizes.sh          # target/{x86_64,aarch64}-unknown-linux-musl/release/
#     docker build -t gatelet .                                          # this machine's arch
#     docker buildx build --platform linux/amd64,linux/arm64 -t gatelet .   # both
#
# One image, two containers sharing a network namespace (the agent relays the management API to
# the companion's loopback listener) and /run/gatelet (the agent's control socket):
#     docker run -d --name gatelet-agent -v gatelet-run:/run/gatelet -v gatelet-agent:/var/lib/gatelet \
#         -v /etc/gatelet:/etc/gatelet:ro --entrypoint /usr/bin/gatelet-agent gatelet \
#         --env /etc/gatelet/gateway.env --state-dir /var/lib/gatelet
#     docker run -d --name gatelet-companion --network container:gatelet-agent \
#         -v gatelet-run:/run/gatelet -v gatelet-state:/var/lib/gatelet -v /etc/gatelet:/etc/gatelet:ro gatelet
# The agent needs the TUN device and CAP_NET_ADMIN (there is no unprivileged userspace mode yet):
# `--user 0 --cap-add NET_ADMIN --device /dev/net/tun` on the agent; the companion runs as is.
# tests-hw/bare-root.sh checks that the binaries start in an empty root like this one (CI has no Docker engine).

# Directory layout, users and the binary of the target architecture; runs on the build machine.
FROM --platform=$BUILDPLATFORM busybox:1.36-musl AS layout
ARG TARGETARCH
COPY target/ /src/target/
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-musl ;; \
      arm64) triple=aarch64-unknown-linux-musl ;; \
      *) echo "no static gatelet build for $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    mkdir -p /rootfs/usr/bin /rootfs/etc/gatelet /rootfs/var/lib/gatelet /rootfs/run/gatelet /rootfs/tmp; \
    for b in gatelet-agent gatelet-companion; do \
      test -x "/src/target/$triple/release/$b" || { echo "build it first: bash tests-hw/bench/sizes.sh" >&2; exit 1; }; \
      cp "/src/target/$triple/release/$b" /rootfs/usr/bin/; \
    done; \
    echo 'gatelet:x:65532:65532:gatelet:/var/lib/gatelet:/nonexistent' >/rootfs/etc/passwd; \
    echo 'gatelet:x:65532:' >/rootfs/etc/group; \
    chown 65532:65532 /rootfs/var/lib/gatelet /rootfs/run/gatelet; \
    chmod 0750 /rootfs/var/lib/gatelet /rootfs/run/gatelet; \
    chmod 1777 /rootfs/tmp

FROM scratch
COPY --from=layout /rootfs/ /
USER 65532:65532
VOLUME ["/var/lib/gatelet", "/run/gatelet"]
# 64 = bad gateway.env: fix the file instead of restarting (docker run --restart on-failure:5).
ENTRYPOINT ["/usr/bin/gatelet-companion"]
CMD ["--env", "/etc/gatelet/gateway.env", "--state-dir", "/var/lib/gatelet"]
