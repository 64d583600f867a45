#!/bin/bash
# Build the e2e guest's initramfs: busybox-static, the kernel modules the guest
# needs (decompressed, dependencies first, with their own modules.dep) and
# tests/e2e/guest/init.sh as /init. Part of the initramfs cache key.
#
# usage: build-initramfs.sh KERNEL_TREE KVER OUT
#   KERNEL_TREE: a linux-image .deb unpacked with dpkg-deb -x (depmod -b done)
set -euo pipefail

KDIR=${1:?kernel tree}
KVER=${2:?kernel version}
OUT=${3:?output file}
HERE=$(dirname "$(realpath "$0")")
MODDIR=$KDIR/lib/modules/$KVER

# Modules loaded at boot, in this order (each after its dependencies).
# crc32c is requested by ext4/jbd2 through the crypto API, not by symbol, so
# modules.dep does not list it: load it explicitly before ext4. A name ending
# in "?" may be absent (7.x kernels have crc32c as a library that ext4, jbd2
# and xfs link by symbol: no crc32c-intel, crc32c_generic, libcrc32c).
MODS="configfs netfs 9pnet 9pnet_virtio 9p virtio_blk crc32c-intel? crc32c_generic?
      crc16 mbcache jbd2 ext4 libcrc32c? xfs loop null_blk ublk_drv"
# Modules put in the initramfs (with their dependencies) but not loaded at
# boot: scenarios that need them load them with modprobe in the chroot
# (tests/e2e/lib/ceph.sh: rbd for krbd, nbd for rbd-nbd).
MODS_ON_DEMAND="rbd nbd"

[ -f "$MODDIR/modules.dep" ] || depmod -b "$KDIR" "$KVER"
BUSYBOX=$(command -v busybox) || { echo "build-initramfs: busybox not found" >&2; exit 1; }
! ldd "$BUSYBOX" >/dev/null 2>&1 \
  || { echo "build-initramfs: $BUSYBOX is not static (install busybox-static)" >&2; exit 1; }

ST=$(mktemp -d "${OUT}.stage.XXXXXX")
trap 'rm -rf "$ST"' EXIT
mkdir -p "$ST"/{bin,sbin,proc,sys,dev,tmp,run,mnt,etc,lib/modules/"$KVER"}
cp "$BUSYBOX" "$ST/bin/busybox"
for a in $("$ST/bin/busybox" --list); do
  [ -e "$ST/bin/$a" ] || ln -s busybox "$ST/bin/$a"
done
for a in modprobe insmod rmmod poweroff reboot; do ln -sf ../bin/busybox "$ST/sbin/$a"; done

: > "$ST/etc/modorder"
add_mod() { # $1 = path relative to MODDIR as in modules.dep; $2 = 0: copy only
  local rel=$1 load=${2:-1} deps d
  grep -qxF "${rel%.xz}" "$ST/etc/modorder" && return 0
  [ -e "$ST/lib/modules/$KVER/${rel%.xz}" ] && return 0
  deps=$(grep -E "^${rel}:" "$MODDIR/modules.dep" | cut -d: -f2)
  for d in $deps; do add_mod "$d" "$load"; done
  mkdir -p "$ST/lib/modules/$KVER/$(dirname "$rel")"
  case $rel in
    *.xz)  xz -dc "$MODDIR/$rel" > "$ST/lib/modules/$KVER/${rel%.xz}" ;;
    *.zst) zstd -qdc "$MODDIR/$rel" > "$ST/lib/modules/$KVER/${rel%.zst}" ;;
    *)     cp "$MODDIR/$rel" "$ST/lib/modules/$KVER/$rel" ;;
  esac
  [ "$load" = 0 ] || echo "${rel%.xz}" >> "$ST/etc/modorder"
}
set -f  # the "?" in MODS is not a glob
for m in $MODS; do
  optional=0
  case $m in *\?) optional=1; m=${m%\?} ;; esac
  rel=$(grep -E "/${m}\.ko(\.xz|\.zst)?:" "$MODDIR/modules.dep" | cut -d: -f1 | head -1 || true)
  if [ -z "$rel" ]; then
    # Built into this kernel (or absent): nothing to load.
    [ $optional = 1 ] || grep -q "/${m}.ko" "$MODDIR/modules.builtin" 2>/dev/null \
      || echo "build-initramfs: module $m not found in $KVER" >&2
    continue
  fi
  add_mod "$rel"
done
for m in $MODS_ON_DEMAND; do
  rel=$(grep -E "/${m}\.ko(\.xz|\.zst)?:" "$MODDIR/modules.dep" | cut -d: -f1 | head -1 || true)
  if [ -n "$rel" ]; then add_mod "$rel" 0
  else echo "build-initramfs: on-demand module $m not found in $KVER (modprobe $m will fail)" >&2; fi
done
set +f
sed -i 's/\.zst$//' "$ST/etc/modorder"
cp "$MODDIR"/modules.builtin* "$MODDIR"/modules.order "$ST/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$ST" "$KVER"

install -m 755 "$HERE/../guest/init.sh" "$ST/init"
(cd "$ST" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "e2e: initramfs $OUT ($(du -h "$OUT" | cut -f1)), kernel $KVER, $(wc -l < "$ST/etc/modorder") modules"
