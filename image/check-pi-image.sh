#!/usr/bin/env bash
# Static checks of the Raspberry Pi side of the gatelet image (no hardware here): the partition
# table, the boot partition's firmware files, config.txt, cmdline.txt, kernel, initrd and device
# trees, both filesystems (fsck, read-only), and that the root filesystem carries what a Pi boot
# needs (the import unit, the fstab entry for the boot partition, no SSH server, the license
# texts), and the Pi 5's
# device trees and drivers (SD, PCIe south bridge, Ethernet). That the root
# filesystem mounts and boots on an emulated board is image/boot-test.sh (the same image).
#
# Usage: bash image/check-pi-image.sh [IMAGE]   (default ${CARGO_TARGET_DIR:-target}/image/gatelet-arm64.img)
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."
IMG=${1:-${CARGO_TARGET_DIR:-target}/image/gatelet-arm64.img}
[ -f "$IMG" ] || { echo "check-pi-image: no image at $IMG (run image/build-image.sh)" >&2; exit 1; }

fails=0
ok() { echo "check-pi-image: ok: $*"; }
bad() { echo "check-pi-image: FAIL: $*" >&2; fails=$((fails + 1)); }

WORK=$(mktemp -d /tmp/gatelet-pi-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export MTOOLS_SKIP_CHECK=1

# --- partition table: MBR (the Pi boot ROM reads MBR only), p1 FAT32 LBA bootable, p2 Linux ------
sfdisk -d "$IMG" | tee "$WORK/table"
grep -q '^label: dos' "$WORK/table" && ok "MBR partition table" || bad "not an MBR (dos) partition table"
p1=$(grep -E '1 : ' "$WORK/table" || true)
p2=$(grep -E '2 : ' "$WORK/table" || true)
[[ "$p1" == *"type=c"*"bootable"* ]] && ok "partition 1: FAT32 (LBA), bootable" || bad "partition 1 is not FAT32 LBA + bootable: $p1"
[[ "$p2" == *"type=83"* ]] && ok "partition 2: Linux" || bad "partition 2 is not a Linux partition: $p2"
[ "$(grep -c ' : start=' "$WORK/table")" -eq 2 ] || bad "expected exactly 2 partitions"
start() { sed -n "s/.*$1 : start= *\([0-9]*\), size= *\([0-9]*\).*/\1/p" "$WORK/table"; }
size() { sed -n "s/.*$1 : start= *\([0-9]*\), size= *\([0-9]*\).*/\2/p" "$WORK/table"; }
B_OFF=$(($(start 1) * 512))
[ $((B_OFF % 1048576)) -eq 0 ] && ok "partition 1 starts at a 1 MiB boundary" || bad "partition 1 is not 1 MiB aligned"

# --- boot partition ----------------------------------------------------------------------------------
dd if="$IMG" of="$WORK/boot.vfat" bs=512 skip="$(start 1)" count="$(size 1)" status=none
fsck.vfat -n "$WORK/boot.vfat" >"$WORK/fsck-boot" 2>&1 && ok "boot filesystem is clean (fsck.vfat -n)" ||
  { cat "$WORK/fsck-boot"; bad "fsck.vfat on the boot partition"; }
label=$(fatlabel "$WORK/boot.vfat" 2>/dev/null | tr -d ' ')
[ "$label" = GATELETBOOT ] && ok "boot label GATELETBOOT (the fstab entry)" || bad "boot label is '$label'"
mdir -b -i "$WORK/boot.vfat" ::/ | sed 's#^::/##' >"$WORK/files"
for f in bootcode.bin start.elf fixup.dat start4.elf fixup4.dat config.txt cmdline.txt vmlinuz initrd.img \
  bcm2712-rpi-5-b.dtb bcm2712d0-rpi-5-b.dtb bcm2711-rpi-4-b.dtb bcm2711-rpi-400.dtb bcm2711-rpi-cm4-io.dtb bcm2837-rpi-3-b.dtb bcm2837-rpi-3-b-plus.dtb \
  README-gatelet.txt; do
  grep -qx "$f" "$WORK/files" && ok "boot partition has $f" || bad "boot partition lacks $f"
done
grep -qx gateway.env "$WORK/files" && bad "the image ships a gateway.env (secrets belong to the user)" || true
mcopy -i "$WORK/boot.vfat" ::config.txt ::cmdline.txt ::vmlinuz ::initrd.img "$WORK/"
for line in arm_64bit=1 enable_uart=1 upstream_kernel=1 kernel=vmlinuz "initramfs initrd.img followkernel"; do
  grep -qx "$line" "$WORK/config.txt" && ok "config.txt: $line" || bad "config.txt lacks '$line'"
done
[ "$(grep -cv '^$' "$WORK/cmdline.txt")" -eq 1 ] && ok "cmdline.txt is one line" || bad "cmdline.txt must be a single line"
for arg in root=LABEL=gatelet-root rw rootwait console=ttyS1,115200; do
  tr ' ' '\n' <"$WORK/cmdline.txt" | grep -qx -- "$arg" && ok "cmdline.txt: $arg" || bad "cmdline.txt lacks $arg"
done
# Debian's arm64 vmlinuz is the plain Image (the Pi firmware and qemu load it as is).
file -b "$WORK/vmlinuz" | grep -q 'Linux kernel ARM64 boot executable Image' &&
  ok "vmlinuz: Linux ARM64 Image" || bad "vmlinuz is not an arm64 Linux Image: $(file -b "$WORK/vmlinuz")"
zcat "$WORK/initrd.img" | cpio -it --quiet 2>/dev/null >"$WORK/initrd.list"
grep -qx init "$WORK/initrd.list" && grep -qx bin/busybox "$WORK/initrd.list" && ok "initrd: /init and busybox" ||
  bad "initrd lacks /init or busybox"
for m in sdhci-brcmstb.ko sdhci-iproc.ko bcm2835.ko gpio-regulator.ko fixed.ko virtio_blk.ko ext4.ko; do
  grep -q "/$m\$" "$WORK/initrd.list" && ok "initrd has $m" || bad "initrd lacks $m"
done

# --- root partition (read with debugfs: no mount, no loop device) ------------------------------------
dd if="$IMG" of="$WORK/root.ext4" bs=512 skip="$(start 2)" count="$(size 2)" status=none
e2fsck -fn "$WORK/root.ext4" >"$WORK/fsck-root" 2>&1 && ok "root filesystem is clean (e2fsck -fn)" ||
  { cat "$WORK/fsck-root"; bad "e2fsck on the root partition"; }
[ "$(e2label "$WORK/root.ext4")" = gatelet-root ] && ok "root label gatelet-root (cmdline.txt root=)" || bad "root label is '$(e2label "$WORK/root.ext4")'"
rootfile() { debugfs -R "cat $1" "$WORK/root.ext4" 2>/dev/null; }
exists() { debugfs -R "stat $1" "$WORK/root.ext4" 2>&1 | grep -q '^Inode:'; }
for f in /usr/bin/gatelet-agent /usr/bin/gatelet-companion /usr/lib/systemd/system/gatelet-agent.service \
  /usr/lib/systemd/system/gatelet-companion.service /usr/lib/systemd/system/gatelet-import-env.service \
  /usr/lib/sysusers.d/gatelet.conf /usr/lib/tmpfiles.d/gatelet.conf /usr/lib/modules-load.d/gatelet.conf \
  /usr/lib/sysctl.d/60-gatelet.conf /etc/systemd/system/multi-user.target.wants/gatelet-agent.service \
  /etc/systemd/system/multi-user.target.wants/gatelet-companion.service \
  /etc/systemd/system/multi-user.target.wants/gatelet-import-env.service \
  /etc/systemd/system/multi-user.target.wants/gatelet-growroot.service /usr/libexec/gatelet/growroot \
  /usr/bin/gatelet-update /usr/lib/systemd/system/gatelet-update.service \
  /usr/lib/systemd/system/gatelet-update.path /etc/systemd/system/paths.target.wants/gatelet-update.path \
  /etc/systemd/system/multi-user.target.wants/gatelet-update.service /var/lib/gatelet-update/current \
  /usr/sbin/sfdisk /usr/bin/resizepart /usr/sbin/resize2fs /usr/sbin/init; do
  exists "$f" && ok "root has $f" || bad "root lacks $f"
done
# The Pi 5's LAN port is the RP1 south bridge's Ethernet (Cadence GEM) behind PCIe: udev loads
# these from the root filesystem.
kmods=$(debugfs -R "ls -p /usr/lib/modules" "$WORK/root.ext4" 2>/dev/null | awk -F/ 'NF > 5 && $6 != "." && $6 != ".." { print $6 }' | head -n 1)
[ -n "$kmods" ] && ok "kernel $kmods" || bad "no kernel modules directory"
for m in misc/rp1/rp1_pci net/ethernet/cadence/macb clk/clk-rp1 pinctrl/pinctrl-rp1 mmc/host/sdhci-brcmstb; do
  if exists "/usr/lib/modules/$kmods/kernel/drivers/$m.ko.xz" || exists "/usr/lib/modules/$kmods/kernel/drivers/$m.ko"; then
    ok "root has the Pi 5 module $m"
  else
    bad "root lacks the Pi 5 module $m"
  fi
done
rootfile /etc/fstab | grep -qE '^LABEL=GATELETBOOT +/boot/firmware +vfat' && ok "fstab mounts the boot partition on /boot/firmware" ||
  bad "fstab has no /boot/firmware entry"
# The license terms travel with the binaries: gatelet's own and every linked crate's.
for f in LICENSE-MIT LICENSE-APACHE; do
  rootfile "/usr/share/doc/gatelet/$f" | cmp -s - "$f" && ok "root has /usr/share/doc/gatelet/$f (as in the repository)" ||
    bad "root lacks /usr/share/doc/gatelet/$f or has another one"
done
rootfile /usr/share/doc/gatelet/THIRD-PARTY-LICENSES.txt.gz | gzip -dc 2>/dev/null | cmp -s - THIRD-PARTY-LICENSES.txt &&
  ok "root has /usr/share/doc/gatelet/THIRD-PARTY-LICENSES.txt.gz (the repository's file, compressed)" ||
  bad "root lacks /usr/share/doc/gatelet/THIRD-PARTY-LICENSES.txt.gz or has another one"
rootfile /etc/systemd/journald.conf.d/gatelet.conf | grep -qx 'Storage=persistent' &&
  ok "the journal persists across reboots (bounded: $(rootfile /etc/systemd/journald.conf.d/gatelet.conf | grep SystemMaxUse))" ||
  bad "the journal is not persistent"
for f in /usr/sbin/sshd /usr/lib/systemd/system/ssh.service /usr/lib/systemd/system/dropbear.service; do
  if exists "$f"; then bad "SSH is on by default: $f is in the image"; fi
done
ok "no SSH server in the image (SSH off by default)"
rootfile /etc/shadow | grep -q '^root:!' && ok "root password locked" || bad "root has a usable password"
[ -z "$(rootfile /etc/machine-id)" ] && ok "empty machine-id (each device makes its own)" || bad "the image ships a machine-id"

echo "check-pi-image: image $(($(stat -c %s "$IMG") / 1048576)) MiB, boot partition $(($(size 1) / 2048)) MiB, root $(($(size 2) / 2048)) MiB"
if [ "$fails" -gt 0 ]; then
  echo "check-pi-image: $fails check(s) FAILED" >&2
  exit 1
fi
echo "check-pi-image: PASS"
