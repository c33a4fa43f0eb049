#!/usr/bin/env bash
# Builds gatelet's arm64 disk image from Debian bookworm packages, without loop devices or root
# filesystem mounts, on an x86_64 Debian 12 machine:
#
#   target/image/gatelet-arm64.img   MBR disk: p1 FAT32 "GATELETBOOT" (Raspberry Pi firmware,
#                                    config.txt, cmdline.txt, vmlinuz, initrd.img, DTBs),
#                                    p2 ext4 "gatelet-root" (Debian's systemd userland, the static
#                                    gatelet binaries, units, sysusers, tmpfiles, kernel hooks)
#
# The same image boots a Raspberry Pi 5, 4 / 400 / CM4 (and 3B/3B+, whose firmware and DTBs are also
# on the boot partition) and `qemu-system-aarch64 -M virt` (kernel and initrd taken from the boot
# partition; image/boot-test.sh). One kernel (Debian's linux-image-arm64, from trixie-backports:
# see KERNEL_SUITE) serves them all.
#
# Usage: bash image/build-image.sh            (as root: the root filesystem keeps file owners)
#   IMAGE_OUT=DIR      output directory (default ${CARGO_TARGET_DIR:-target}/image)
#   IMAGE_NO_BUILD=1   use the static binaries already in target/aarch64-unknown-linux-musl/release
#
# What it does:
#   1. apt (a private apt directory for arm64 under the output dir, the host's apt state is not
#      touched) downloads the packages below and their dependencies from deb.debian.org;
#   2. unpacks them (dpkg-deb, merged /usr) minus the ones only maintainer scripts need (perl,
#      initramfs-tools, debconf): maintainer scripts are NOT run (they are arm64 programs); what they
#      would do that a boot needs is done here: users (systemd-sysusers --root), module
#      dependencies (depmod -b), the library cache (the arm64 ldconfig under qemu-user), enabled
#      units (systemctl --root);
#   3. installs gatelet: /usr/bin/gatelet-{agent,companion,update} (cargo zigbuild, static musl), systemd/
#      units, sysusers and tmpfiles, kernel-hooks/ (modules-load.d, sysctl.d, the nftables file,
#      not loaded: see kernel-hooks/README.md), image/rootfs/ (network, fstab, the gateway.env import);
#   4. builds a busybox initramfs that loads the disk drivers and mounts root=LABEL=gatelet-root;
#   5. makes the filesystems from directories (mkfs.ext4 -d, mkfs.vfat + mcopy) and writes them into
#      a partitioned file (sfdisk on the file, dd).
#
# SSH is off: no SSH server is installed. No login either (root is locked): the device is managed
# through gateway.env and GateControl. Debian's raspi-firmware (non-free-firmware) provides the Pi
# boot files (a Pi 5 boots from its EEPROM bootloader and needs only config.txt, the kernel, the
# initrd and its device tree).
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."
REPO=$PWD

SUITE=bookworm
KERNEL_SUITE=trixie-backports
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
# The userland. Dependencies come along (apt resolves them); no recommends.
PACKAGES=(
  raspi-firmware busybox-static
  systemd systemd-sysv udev dbus systemd-resolved systemd-timesyncd kmod
  base-files base-passwd libc-bin dash bash coreutils util-linux mount procps iproute2 grep sed findutils
  dosfstools fdisk e2fsprogs
)
# Dependencies that only maintainer scripts and kernel install hooks use: not unpacked.
SKIP_PACKAGES=' initramfs-tools initramfs-tools-core klibc-utils libklibc cpio perl perl-base
  perl-modules-5.36 libperl5.36 libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl
  libgdbm6 libgdbm-compat4 usrmerge debconf adduser linux-base dpkg '
# Kernel module trees a headless gateway does not load (graphics, sound, cameras, wireless,
# InfiniBand, cluster and network filesystems): about 150 MB of the 300 MB.
PRUNE_MODULES=(
  drivers/gpu drivers/media drivers/infiniband drivers/staging drivers/isdn drivers/net/wireless
  drivers/iio drivers/hid drivers/input drivers/scsi/qla2xxx drivers/scsi/lpfc drivers/scsi/mpt3sas
  sound net/bluetooth net/wireless net/mac80211 net/ceph net/sunrpc
  fs/btrfs fs/xfs fs/ocfs2 fs/gfs2 fs/nfs fs/nfsd fs/ceph fs/smb fs/cifs fs/f2fs fs/jfs fs/ubifs
  fs/ntfs3 fs/reiserfs fs/dlm fs/nilfs2 fs/orangefs fs/afs fs/coda
)
# Modules the initramfs loads (with their dependencies) to reach the root filesystem: virtio disks
# (qemu), the Pi 5 (sdhci-brcmstb), Pi 4 (sdhci-iproc) and Pi 3 (bcm2835 sdhost) SD controllers, the SD card's
# regulators on a Pi 4 (its device tree gives emmc2 a GPIO and a fixed regulator; without them
# the controller's probe waits forever), the reset controller (USB on a Pi 4), ext4 (and the
# crc32c that ext4 asked the crypto API for up to Linux 6.x; later kernels link it: a name ending
# in ? may be missing).
INITRD_MODULES=(virtio_pci virtio_mmio virtio_blk sdhci_brcmstb sdhci_iproc kernel/drivers/mmc/host/bcm2835.ko
  kernel/drivers/regulator/gpio-regulator.ko kernel/drivers/regulator/fixed.ko reset_raspberrypi
  crc32c_generic? ext4)

BOOT_MIB=256
ROOT_LABEL=gatelet-root
BOOT_LABEL=GATELETBOOT

log() { echo "build-image: [$(($(date +%s) - T0))s] $*" >&2; }
T0=$(date +%s)
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (the root filesystem keeps file owners and modes)"

# Host tools, installed when missing (idempotent; a fresh CI machine has none of them).
need=()
for p in mtools:mcopy dosfstools:mkfs.vfat fdisk:sfdisk e2fsprogs:mkfs.ext4 kmod:depmod xz-utils:xz \
  qemu-user:qemu-aarch64 systemd:systemd-sysusers python3:python3 cpio:cpio \
  debian-archive-keyring:/usr/share/keyrings/debian-archive-keyring.gpg; do
  tool=${p#*:}
  if [[ "$tool" == /* ]]; then [ -e "$tool" ] && continue; else command -v "$tool" >/dev/null 2>&1 && continue; fi
  need+=("${p%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${IMAGE_OUT:-$TARGET_DIR/image}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- 1. the static binaries ---------------------------------------------------------------------
BIN=$TARGET_DIR/aarch64-unknown-linux-musl/release
if [ -z "${IMAGE_NO_BUILD:-}" ]; then
  log "cargo zigbuild --release --target aarch64-unknown-linux-musl"
  cargo zigbuild --locked --release --target aarch64-unknown-linux-musl \
    -p gatelet-agent --bin gatelet-agent -p gatelet-companion --bin gatelet-companion --bin gatelet-update
fi
for b in gatelet-agent gatelet-companion gatelet-update; do
  [ -f "$BIN/$b" ] || die "$BIN/$b missing (build it: cargo zigbuild --release --target aarch64-unknown-linux-musl)"
done

# --- 2. packages ----------------------------------------------------------------------------------
APT=$OUT/apt
mkdir -p "$APT/etc/apt.conf.d" "$APT/etc/preferences.d" "$APT/state/lists/partial" \
  "$APT/cache/archives/partial"
: >"$APT/state/status"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$APT/etc/sources.list" <<EOF
deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE main non-free-firmware
deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE-updates main non-free-firmware
deb [arch=arm64 signed-by=$KEYRING] $SECURITY $SUITE-security main non-free-firmware
EOF
APT_OPTS=(
  -o "Dir::Etc=$APT/etc" -o "Dir::Etc::SourceList=$APT/etc/sources.list"
  -o "Dir::Etc::SourceParts=$APT/etc/sources.list.d" -o "Dir::Etc::Parts=$APT/etc/apt.conf.d"
  -o "Dir::Etc::PreferencesParts=$APT/etc/preferences.d" -o "Dir::State=$APT/state"
  -o "Dir::State::status=$APT/state/status" -o "Dir::Cache=$APT/cache"
  -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o APT::Install-Recommends=false
)
log "apt-get update ($SUITE arm64, private state in $APT)"
apt-get "${APT_OPTS[@]}" update -q >/dev/null
log "apt-get install --download-only ${PACKAGES[*]}"
# The clean keeps only this build's versions in the cache (a new point release replaces the old).
apt-get "${APT_OPTS[@]}" autoclean -q >/dev/null
apt-get "${APT_OPTS[@]}" install -y -q --download-only "${PACKAGES[@]}" >/dev/null
# The exact set apt resolved (the cache may hold older versions after a point release).
DEBS=()
while read -r name ver; do
  f=$(cd "$APT/cache/archives" && ls "${name}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n 1)
  [ -n "$f" ] || die "apt resolved $name $ver but the cache has no .deb for it"
  DEBS+=("$f")
done < <(apt-get "${APT_OPTS[@]}" install -s -q "${PACKAGES[@]}" 2>/dev/null |
  sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1 \2/p')
[ ${#DEBS[@]} -gt 20 ] || die "apt resolved only ${#DEBS[@]} packages"

# The kernel is Debian's too, from $KERNEL_SUITE (its own private apt state): the first Debian
# kernel with the Raspberry Pi 5 (BCM2712, and the RP1 south bridge whose Ethernet is the Pi 5's LAN
# port). bookworm's 6.1 has no BCM2712 at all; trixie's 6.12 boots a Pi 5 without RP1, so without
# Ethernet. A kernel needs nothing of the userland it runs, so the kernel's three packages (image,
# modules, device trees) are taken alone, without dependency resolution.
KAPT=$OUT/apt-kernel
mkdir -p "$KAPT/etc/apt.conf.d" "$KAPT/etc/preferences.d" "$KAPT/state/lists/partial" \
  "$KAPT/cache/archives/partial"
: >"$KAPT/state/status"
echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $KERNEL_SUITE main" >"$KAPT/etc/sources.list"
KAPT_OPTS=()
for o in "${APT_OPTS[@]}"; do KAPT_OPTS+=("${o//$APT\//$KAPT/}"); done
log "apt-get update ($KERNEL_SUITE arm64, the kernel)"
apt-get "${KAPT_OPTS[@]}" update -q >/dev/null
kimage=$(apt-cache "${KAPT_OPTS[@]}" depends linux-image-arm64 | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
[ -n "$kimage" ] || die "no linux-image-arm64 in $KERNEL_SUITE"
kver=${kimage#linux-image-}
KDEBS=()
for part in binary modules base; do
  (cd "$KAPT/cache/archives" && apt-get "${KAPT_OPTS[@]}" -o APT::Sandbox::User=root download -q "linux-$part-$kver" >/dev/null) ||
    die "cannot download linux-$part-$kver from $KERNEL_SUITE"
  KDEBS+=("$(cd "$KAPT/cache/archives" && ls "linux-${part}-${kver}_"*_arm64.deb | head -n 1)")
done
log "kernel $kver from $KERNEL_SUITE"

ROOT=$OUT/rootfs
BOOT=$OUT/bootfs
rm -rf "$ROOT" "$BOOT" "$OUT/initrd"
mkdir -p "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/usr/lib" "$BOOT"
# Merged /usr, as Debian 12's installers make it; tar keeps these links when it unpacks ./bin etc.
ln -s usr/bin "$ROOT/bin"
ln -s usr/sbin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"
unpacked=()
# Not unpacked at all: documentation (each package's copyright file stays: license terms),
# translations, and the pruned kernel module trees.
EXCLUDES=(--exclude='./usr/share/man/*' --exclude='./usr/share/info/*' --exclude='./usr/share/locale/*'
  --exclude='./usr/share/lintian/*' --exclude='./usr/share/bug/*' --exclude='./usr/share/zoneinfo/right/*')
for d in "${PRUNE_MODULES[@]}"; do
  EXCLUDES+=(--exclude="./lib/modules/*/kernel/$d" --exclude="./usr/lib/modules/*/kernel/$d")
done
for deb in "${DEBS[@]}"; do
  name=${deb%%_*}
  [[ "$SKIP_PACKAGES" == *" $name "* ]] && continue
  dpkg-deb --fsys-tarfile "$APT/cache/archives/$deb" |
    tar -x --keep-directory-symlink "${EXCLUDES[@]}" -C "$ROOT"
  unpacked+=("${deb%.deb}")
done
for deb in "${KDEBS[@]}"; do
  dpkg-deb --fsys-tarfile "$KAPT/cache/archives/$deb" |
    tar -x --keep-directory-symlink "${EXCLUDES[@]}" -C "$ROOT"
  unpacked+=("${deb%.deb}")
done
log "unpacked ${#unpacked[@]} of $((${#DEBS[@]} + ${#KDEBS[@]})) packages"
printf '%s\n' "${unpacked[@]}" >"$OUT/packages.txt"

# /bin/sh (dash's maintainer script makes this link on Debian).
[ -e "$ROOT/usr/bin/sh" ] || ln -s dash "$ROOT/usr/bin/sh"

KVER=$(basename "$(ls -d "$ROOT"/usr/lib/modules/*)")
log "kernel $KVER"

# --- 3. what maintainer scripts would have done ---------------------------------------------------
depmod -b "$ROOT" "$KVER"
find "$ROOT/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete

# /etc/passwd and friends: base-passwd's masters, then sysusers adds what the packages declare.
cp "$ROOT/usr/share/base-passwd/passwd.master" "$ROOT/etc/passwd"
cp "$ROOT/usr/share/base-passwd/group.master" "$ROOT/etc/group"
: >"$ROOT/etc/shadow"
: >"$ROOT/etc/gshadow"
chmod 640 "$ROOT/etc/shadow" "$ROOT/etc/gshadow"
# root: locked password (no login; no SSH server is installed).
sed -i 's/^root:[^:]*:/root:x:/' "$ROOT/etc/passwd"
echo 'root:!*:19000:0:99999:7:::' >"$ROOT/etc/shadow"

install -D -m 0755 "$BIN/gatelet-agent" "$ROOT/usr/bin/gatelet-agent"
install -D -m 0755 "$BIN/gatelet-companion" "$ROOT/usr/bin/gatelet-companion"
install -D -m 0755 "$BIN/gatelet-update" "$ROOT/usr/bin/gatelet-update"
install -D -m 0644 systemd/gatelet-agent.service "$ROOT/usr/lib/systemd/system/gatelet-agent.service"
install -D -m 0644 systemd/gatelet-companion.service "$ROOT/usr/lib/systemd/system/gatelet-companion.service"
for u in gatelet-update.service gatelet-update.path; do
  install -D -m 0644 "systemd/$u" "$ROOT/usr/lib/systemd/system/$u"
done
install -D -m 0644 docs/self-update.md "$ROOT/usr/share/doc/gatelet/self-update.md"
install -D -m 0644 systemd/gatelet.sysusers.conf "$ROOT/usr/lib/sysusers.d/gatelet.conf"
install -D -m 0644 systemd/gatelet.tmpfiles.conf "$ROOT/usr/lib/tmpfiles.d/gatelet.conf"
install -D -m 0644 kernel-hooks/modules-load.d/gatelet.conf "$ROOT/usr/lib/modules-load.d/gatelet.conf"
install -D -m 0644 kernel-hooks/sysctl.d/60-gatelet.conf "$ROOT/usr/lib/sysctl.d/60-gatelet.conf"
install -D -m 0644 kernel-hooks/nftables/gatelet.nft "$ROOT/etc/nftables.d/gatelet.nft"
install -D -m 0644 README.md "$ROOT/usr/share/doc/gatelet/README.md"
# License terms: gatelet's own, and those of every crate linked into the binaries (gzip -9n, as
# Debian policy wants documents over 4 KB).
for f in LICENSE-MIT LICENSE-APACHE; do
  install -D -m 0644 "$f" "$ROOT/usr/share/doc/gatelet/$f"
done
gzip -9n <THIRD-PARTY-LICENSES.txt >"$ROOT/usr/share/doc/gatelet/THIRD-PARTY-LICENSES.txt.gz"
chmod 0644 "$ROOT/usr/share/doc/gatelet/THIRD-PARTY-LICENSES.txt.gz"
# The image's own files (network, fstab, the gateway.env import unit, the test console unit).
cp -a image/rootfs/. "$ROOT/"
chown -R root:root "$ROOT/etc/systemd" "$ROOT/usr/lib/systemd/system" "$ROOT/usr/libexec/gatelet"

systemd-sysusers --root="$ROOT" >/dev/null 2>&1
GATELET_GID=$(awk -F: '$1 == "gatelet" { print $3 }' "$ROOT/etc/group")
[ -n "$GATELET_GID" ] || die "systemd-sysusers did not create the group gatelet"
# /etc/gatelet as tmpfiles.d/gatelet.conf makes it (the image's gid, not the build host's).
install -d -m 0750 -o 0 -g "$GATELET_GID" "$ROOT/etc/gatelet"

echo gatelet >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tgatelet\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
# Empty: systemd makes a machine ID on the first boot and commits it (each device its own; the
# DHCP client ID derives from it).
: >"$ROOT/etc/machine-id"
ln -sf /run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
ln -sf /usr/share/zoneinfo/Etc/UTC "$ROOT/etc/localtime"
mkdir -p "$ROOT/boot/firmware" "$ROOT/var/lib/gatelet"
# The daemons start through /var/lib/gatelet-update/current (tmpfiles.d/gatelet.conf makes it at
# boot too); until the first self-update it names the packaged binaries.
install -d -m 0755 "$ROOT/var/lib/gatelet-update"
ln -sfn /usr/bin "$ROOT/var/lib/gatelet-update/current"

# Enabled units. systemd-firstboot would prompt on the console for a locale and a root password
# on the first boot: masked (the image is configured here).
systemctl --root="$ROOT" enable systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service gatelet-agent.service gatelet-companion.service \
  gatelet-update.path gatelet-update.service \
  gatelet-import-env.service gatelet-growroot.service >/dev/null 2>&1
systemctl --root="$ROOT" mask systemd-firstboot.service >/dev/null 2>&1
systemctl --root="$ROOT" set-default multi-user.target >/dev/null 2>&1

# The arm64 ldconfig (statically linked) under qemu-user writes the library cache.
qemu-aarch64 "$ROOT/usr/sbin/ldconfig" -r "$ROOT"

# --- 4. the initramfs -------------------------------------------------------------------------------
INITRD=$OUT/initrd
mkdir -p "$INITRD"/{bin,dev,proc,sys,root,lib/modules/"$KVER"}
cp "$ROOT/usr/bin/busybox" "$INITRD/bin/busybox"
# The modules in load order (dependencies first), from modules.dep.
python3 - "$ROOT/usr/lib/modules/$KVER" "${INITRD_MODULES[@]}" >"$OUT/initrd-modules.txt" <<'EOF'
import os, sys
base, wanted = sys.argv[1], sys.argv[2:]
deps = {}
for line in open(os.path.join(base, "modules.dep")):
    path, _, rest = line.partition(":")
    deps[path] = rest.split()
def stem(path):
    # Modules are plain (.ko) or compressed (.ko.xz, .ko.zst: Debian 13 and later).
    return os.path.basename(path).split(".ko")[0].replace("-", "_")
by_name = {stem(p): p for p in deps}
builtin = {stem(l.strip()) for l in open(os.path.join(base, "modules.builtin"))}
order, seen = [], set()
def load(path):
    if path in seen:
        return
    seen.add(path)
    for d in reversed(deps[path]):
        load(d)
    order.append(path)
for name in wanted:
    optional = name.endswith("?")
    name = name.rstrip("?")
    if optional and name not in by_name and name not in builtin:
        continue
    if name.endswith(".ko"):
        # A path (a name two modules share): compressed or not.
        path = next((p for p in (name, name + ".xz", name + ".zst") if p in deps), None)
        if path is None:
            sys.exit("initrd module %s: not in modules.dep" % name)
        load(path)
    elif name in by_name:
        load(by_name[name])
    elif name not in builtin:
        sys.exit("initrd module %s: neither a module nor built in" % name)
print("\n".join(order))
EOF
# Compressed modules are unpacked: busybox's insmod takes plain ones (and the initramfs itself is
# compressed as a whole).
: >"$INITRD/lib/modules/$KVER/load-order"
while read -r m; do
  src=$ROOT/usr/lib/modules/$KVER/$m
  case "$m" in
    *.ko.xz) m=${m%.xz}; mkdir -p "$(dirname "$INITRD/lib/modules/$KVER/$m")"; xz -dc "$src" >"$INITRD/lib/modules/$KVER/$m" ;;
    *.ko.zst) m=${m%.zst}; mkdir -p "$(dirname "$INITRD/lib/modules/$KVER/$m")"; zstd -qdc "$src" >"$INITRD/lib/modules/$KVER/$m" ;;
    *) install -D -m 0644 "$src" "$INITRD/lib/modules/$KVER/$m" ;;
  esac
  echo "$m" >>"$INITRD/lib/modules/$KVER/load-order"
done <"$OUT/initrd-modules.txt"
sed "s#@KVER@#$KVER#" image/initrd-init.sh >"$INITRD/init"
chmod 0755 "$INITRD/init"
(cd "$INITRD" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 >"$BOOT/initrd.img"

# --- 5. the boot partition (Raspberry Pi firmware, kernel, initrd) ---------------------------------
# The kernel: /usr/lib/modules/<kver>/vmlinuz since Debian 13 (/boot/vmlinuz-<kver> before).
KIMAGE=$ROOT/usr/lib/modules/$KVER/vmlinuz
[ -f "$KIMAGE" ] || KIMAGE=$ROOT/boot/vmlinuz-$KVER
cp "$KIMAGE" "$BOOT/vmlinuz"
cp "$ROOT"/usr/lib/raspi-firmware/* "$BOOT/"
# Device trees: /usr/lib/modules/<kver>/dtb since Debian 13 (/usr/lib/linux-image-<kver> before).
DTBS=$ROOT/usr/lib/modules/$KVER/dtb/broadcom
[ -d "$DTBS" ] || DTBS=$ROOT/usr/lib/linux-image-$KVER/broadcom
cp "$DTBS"/bcm*.dtb "$BOOT/"
# The Pi 5's firmware asks for bcm2712d0-rpi-5-b.dtb on a D0-stepping board (the Raspberry Pi
# kernel's name); the mainline kernel calls that tree bcm2712-d-rpi-5-b.dtb.
[ ! -f "$BOOT/bcm2712-d-rpi-5-b.dtb" ] || cp "$BOOT/bcm2712-d-rpi-5-b.dtb" "$BOOT/bcm2712d0-rpi-5-b.dtb"
cp image/config.txt "$BOOT/config.txt"
cp image/cmdline.txt "$BOOT/cmdline.txt"
cp image/gateway.env.README.txt "$BOOT/README-gatelet.txt"
# The kernel and firmware are on the boot partition; the root filesystem needs no second copy.
rm -rf "$KIMAGE" "$ROOT"/usr/lib/raspi-firmware/* "$ROOT/usr/lib/linux-image-$KVER" \
  "$ROOT/usr/lib/modules/$KVER/dtb"

# --- 6. filesystems and the disk --------------------------------------------------------------------
# Root: the content plus 256 MiB for the state, logs and upgrades; whole MiB.
root_kib=$(du -s --apparent-size -k "$ROOT" | cut -f1)
ROOT_MIB=$(((root_kib * 12 / 10) / 1024 + 256))
rm -f "$OUT/root.ext4" "$OUT/boot.vfat"
mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$ROOT" -E root_owner=0:0 "$OUT/root.ext4" "${ROOT_MIB}M"
mkfs.vfat -F 32 -n "$BOOT_LABEL" -C "$OUT/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i "$OUT/boot.vfat" "$BOOT"/* ::/

IMG=$OUT/gatelet-arm64.img
rm -f "$IMG"
truncate -s $(((1 + BOOT_MIB + ROOT_MIB) * 1024 * 1024)) "$IMG"
sfdisk -q "$IMG" <<EOF
label: dos
start=1MiB, size=${BOOT_MIB}MiB, type=c, bootable
start=$((1 + BOOT_MIB))MiB, size=${ROOT_MIB}MiB, type=83
EOF
dd if="$OUT/boot.vfat" of="$IMG" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$OUT/root.ext4" of="$IMG" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc,sparse status=none
rm -f "$OUT/root.ext4" "$OUT/boot.vfat"

size=$(stat -c %s "$IMG")
used=$(du -k "$IMG" | cut -f1)
xz_note=""
log "done in $(($(date +%s) - T0))s: $IMG"
log "image size: $((size / 1048576)) MiB (boot ${BOOT_MIB} MiB + root ${ROOT_MIB} MiB; $((used / 1024)) MiB allocated)$xz_note"
echo "$IMG"
