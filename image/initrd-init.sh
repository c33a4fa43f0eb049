#!/bin/busybox sh
# shellcheck shell=dash
# /init of the gatelet image's initramfs (image/build-image.sh fills in @KVER@): loads the disk
# drivers listed in /lib/modules/<kver>/load-order (dependencies first), waits for the root
# filesystem named by root=LABEL=... (or root=/dev/...) on the kernel command line, mounts it and
# hands over to systemd. On failure it says why on the console and drops to a shell.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys

KVER=@KVER@
fail() {
  echo "initrd: $*" >/dev/console
  echo "initrd: dropping to a shell" >/dev/console
  exec sh </dev/console >/dev/console 2>&1
}

for m in $(cat /lib/modules/$KVER/load-order); do
  insmod /lib/modules/$KVER/$m 2>/dev/null || true
done

root=""
ro=rw
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root=${arg#root=} ;;
    ro) ro=ro ;;
  esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"

# rootwait: an SD card or a virtio disk may appear a moment after its driver loads.
dev=""
i=0
while [ $i -lt 300 ]; do
  case "$root" in
    LABEL=* | UUID=*) dev=$(findfs "$root" 2>/dev/null) ;;
    *) [ -b "$root" ] && dev=$root ;;
  esac
  [ -n "$dev" ] && break
  sleep 0.1
  i=$((i + 1))
done
[ -n "$dev" ] || fail "root filesystem $root not found after 30 s"

mount -t ext4 -o $ro "$dev" /root || fail "cannot mount $dev ($root) on /root"
[ -L /root/sbin/init ] || [ -x /root/sbin/init ] || fail "$dev has no /sbin/init"
umount /proc /sys
mount --move /dev /root/dev 2>/dev/null || umount /dev
exec switch_root /root /sbin/init
