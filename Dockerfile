# gatelet in a container: the static musl binaries on an empty base (no libc, no shell).
#
# Build with deploy/build-image.sh (it builds the binaries with the repo's own cross build, stages
# target/docker-rootfs/ with /etc/passwd, /etc/group and the directories, then runs the plain
# builder: DOCKER_BUILDKIT=0 docker build). This file only COPYs; it pulls nothing.
#
# Run with deploy/docker-compose.yml: two containers of this image, the agent (TUN mode:
# CAP_NET_ADMIN and /dev/net/tun) and the companion (uid 65532, no capabilities), sharing the
# agent's control socket through a volume on /run/gatelet; or with
# deploy/docker-compose.userspace.yml: the agent in userspace network stack mode as uid 65532 with
# no capability and no device. README.md, "Running in Docker".
FROM scratch
COPY target/docker-rootfs/base/ /
# COPY makes everything root-owned; the state and socket directories belong to the companion's
# uid (a named volume mounted there starts with this owner and mode: 0750, and 0770 for the
# socket directory, where the agent creates its socket as group 65532).
COPY --chown=65532:65532 target/docker-rootfs/state/ /var/lib/gatelet/
COPY --chown=65532:65532 target/docker-rootfs/run/ /run/gatelet/
USER 65532:65532
VOLUME ["/var/lib/gatelet", "/run/gatelet"]
# Healthy = the companion answers on its status socket and reaches the agent's control socket
# (a subcommand of the binary itself: there is no shell or curl in this image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/bin/gatelet-companion", "status", "--health"]
# Exit 64 = bad or unreadable gateway.env: the message says what to fix; restarting cannot.
ENTRYPOINT ["/usr/bin/gatelet-companion"]
CMD ["--env", "/etc/gatelet/gateway.env", "--state-dir", "/var/lib/gatelet"]
