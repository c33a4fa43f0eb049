#!/bin/sh
# Buildroot post-build script of the gatelet BR2_EXTERNAL tree.
#   BR2_ROOTFS_POST_BUILD_SCRIPT="... $(BR2_EXTERNAL_GATELET_PATH)/board/gatelet/post-build.sh"
# Buildroot calls it with the target directory as $1 (and BR2_CONFIG in the environment).
#
# 1. Checks that both daemons are installed in the target.
# 2. Applies the board configuration (board-configs/<board>/board.toml; the board comes from
#    GATELET_BOARD or BR2_PACKAGE_GATELET_BOARD): installs it as /etc/gatelet/board.toml, writes
#    the memory caps (MemoryMax, MemoryHigh) as systemd drop-ins and sets the tunnel interface of
#    the nftables rules. A board asking for netif_mode "netstack" is refused: the agent has no
#    userspace mode yet, and dropping its capabilities would only stop it from starting.
# 3. Makes nftables load /etc/nftables.d/*.nft when the image has an /etc/nftables.conf.
# Idempotent: running it twice gives the same tree.
set -eu

TARGET_DIR=${1:?usage: post-build.sh TARGET_DIR}
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../../.." && pwd)

die() {
	echo "gatelet post-build: $*" >&2
	exit 1
}

for b in gatelet-agent gatelet-companion; do
	[ -x "$TARGET_DIR/usr/bin/$b" ] || die "$TARGET_DIR/usr/bin/$b missing: enable BR2_PACKAGE_GATELET"
done

board=${GATELET_BOARD:-}
if [ -z "$board" ] && [ -n "${BR2_CONFIG:-}" ] && [ -f "$BR2_CONFIG" ]; then
	board=$(sed -n 's/^BR2_PACKAGE_GATELET_BOARD="\(.*\)"$/\1/p' "$BR2_CONFIG")
fi

# toml_get FILE SECTION KEY: the value of a `key = "value"` or `key = number` line of [SECTION].
toml_get() {
	awk -v want="$2" -v key="$3" '
		/^[[:space:]]*\[/ { gsub(/[][[:space:]]/, ""); section = $0; next }
		section == want && $1 == key && $2 == "=" {
			v = $0; sub(/^[^=]*=[[:space:]]*/, "", v); sub(/[[:space:]]+#.*$/, "", v)
			gsub(/^"|"$/, "", v); print v; exit
		}' "$1"
}

if [ -n "$board" ]; then
	toml="$checkout/board-configs/$board/board.toml"
	[ -f "$toml" ] || die "board '$board': $toml does not exist (see board-configs/)"
	install -D -m 0644 "$toml" "$TARGET_DIR/etc/gatelet/board.toml"

	agent_max=$(toml_get "$toml" memory agent_max)
	agent_high=$(toml_get "$toml" memory agent_high)
	companion_max=$(toml_get "$toml" memory companion_max)
	companion_high=$(toml_get "$toml" memory companion_high)
	mode=$(toml_get "$toml" defaults netif_mode)
	case "${mode:-tun}" in
	tun) ;;
	*) die "board '$board': netif_mode \"$mode\" does not exist; the agent only runs in \"tun\" mode (CAP_NET_ADMIN)" ;;
	esac
	tunnel_if=$(toml_get "$toml" interfaces tunnel)

	dropins="$TARGET_DIR/etc/systemd/system"
	mkdir -p "$dropins/gatelet-agent.service.d" "$dropins/gatelet-companion.service.d"
	{
		echo "# Written by buildroot/board/gatelet/post-build.sh from board-configs/$board/board.toml"
		echo "[Service]"
		[ -z "$agent_max" ] || echo "MemoryMax=$agent_max"
		[ -z "$agent_high" ] || echo "MemoryHigh=$agent_high"
	} >"$dropins/gatelet-agent.service.d/50-board.conf"
	{
		echo "# Written by buildroot/board/gatelet/post-build.sh from board-configs/$board/board.toml"
		echo "[Service]"
		[ -z "$companion_max" ] || echo "MemoryMax=$companion_max"
		[ -z "$companion_high" ] || echo "MemoryHigh=$companion_high"
	} >"$dropins/gatelet-companion.service.d/50-board.conf"

	nft="$TARGET_DIR/etc/nftables.d/gatelet.nft"
	if [ -n "$tunnel_if" ] && [ -f "$nft" ]; then
		sed -i "s/^define TUNNEL_IF = .*/define TUNNEL_IF = \"$tunnel_if\"/" "$nft"
	fi
	echo "gatelet post-build: board $board applied (agent $agent_max, companion $companion_max, mode ${mode:-tun}, tunnel ${tunnel_if:-default})"
fi

conf="$TARGET_DIR/etc/nftables.conf"
if [ -f "$conf" ] && ! grep -q '/etc/nftables.d/' "$conf"; then
	printf '\n# gatelet (and other packages) ship their tables here\ninclude "/etc/nftables.d/*.nft"\n' >>"$conf"
fi
