#!/bin/sh
# /init of the e2e guest's initramfs (busybox sh). Part of the initramfs cache
# key: editing this file rebuilds the initramfs on the next run.
#
# It loads the modules listed in /etc/modorder (dependencies first), mounts the
# host's / read-only (9p tag "hostroot") at /mnt/root, the writable per-run share
# (9p tag "e2e") at /mnt/root/run/e2e, optionally a virtio data disk at
# /mnt/root/run/e2e-data, then runs /run/e2e/job.sh chrooted in the host's
# root, writes its exit code to the share and reboots (qemu -no-reboot then exits).
#
# Kernel command line parameters read here:
#   e2e.ublks_max=N   load ublk_drv with ublks_max=N
#   e2e.disk=1        a virtio data disk (/dev/vda) is attached: make ext4 on it
#                     if it has no filesystem yet, mount it at /run/e2e-data
export PATH=/sbin:/usr/sbin:/bin:/usr/bin

say() { echo "e2e-guest: $*"; }
die() {
  say "FATAL: $*"
  # No rc file is written: the host counts this as a failed boot. reboot, not
  # poweroff: qemu runs with -no-reboot, and reboot needs no ACPI.
  reboot -f
  sleep 10
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
# Modules the kernel asks for on demand come from this initramfs (busybox modprobe).
echo /sbin/modprobe > /proc/sys/kernel/modprobe 2>/dev/null

cmdline=$(cat /proc/cmdline)
param() { # $1 = name; prints the value of name=value on the kernel command line
  for w in $cmdline; do
    case $w in "$1"=*) echo "${w#*=}"; return 0;; esac
  done
  return 1
}

KVER=$(uname -r)
ublks_max=$(param e2e.ublks_max || true)
while read -r m; do
  args=""
  case $m in */ublk_drv.ko) [ -n "$ublks_max" ] && args="ublks_max=$ublks_max";; esac
  # shellcheck disable=SC2086
  insmod "/lib/modules/$KVER/$m" $args 2>/dev/null || say "insmod $m failed"
done < /etc/modorder
# Loopback up for every scenario: the plugin's /metrics and /readyz listen on
# 127.0.0.1, and without it a scenario's curl fails with "network unreachable".
ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null || say "cannot bring lo up"

R=/mnt/root
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro hostroot $R \
  || die "cannot mount the host's root (9p tag hostroot)"
for d in dev proc sys; do mount --bind /$d $R/$d || die "bind /$d"; done
mount --bind /dev/pts $R/dev/pts 2>/dev/null
mount --bind /dev/shm $R/dev/shm 2>/dev/null
mkdir -p /mnt/e2e
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=none e2e /mnt/e2e \
  || die "cannot mount the result share (9p tag e2e)"
# Host directories under /tmp, /run or /var/tmp that the job needs (a checkout
# or build dir there) are listed in the share's "keep" file: hold them with a
# bind mount before the guest's tmpfs covers them, and put them back after.
keep_each() { # $1 = hold | restore
  local n=0 p
  [ -f /mnt/e2e/keep ] || return 0
  while IFS= read -r p; do
    [ -n "$p" ] || continue
    if [ "$1" = hold ]; then
      mkdir -p /keep/$n
      mount --bind "$R$p" /keep/$n || say "cannot hold $p"
    else
      mkdir -p "$R$p" && mount --bind /keep/$n "$R$p" || say "cannot restore $p"
    fi
    n=$((n + 1))
  done < /mnt/e2e/keep
}
keep_each hold
mount -t tmpfs -o mode=1777,size=75% tmpfs $R/tmp || die "tmpfs on /tmp"
mount -t tmpfs -o mode=755 tmpfs $R/run || die "tmpfs on /run"
[ -d $R/var/tmp ] && mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp
keep_each restore
# The guest kernel's modules (a subset, with its own modules.dep) replace the
# host's, so modprobe/rmmod in the chroot work for scenarios (e.g. ublks_max).
[ -d $R/lib/modules ] && mount --bind /lib/modules $R/lib/modules
mkdir -p $R/run/e2e $R/run/e2e-data $R/run/lock
mount --bind /mnt/e2e $R/run/e2e || die "bind the result share"

if [ "$(param e2e.disk || true)" = 1 ]; then
  n=0
  while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  [ -b /dev/vda ] || die "e2e.disk=1 but no /dev/vda"
  if ! chroot $R blkid /dev/vda >/dev/null 2>&1; then
    say "data disk is blank: mkfs.ext4"
    chroot $R mkfs.ext4 -q -F /dev/vda || die "mkfs.ext4 /dev/vda"
  fi
  mount -t ext4 /dev/vda $R/run/e2e-data || die "mount /dev/vda"
fi

say "kernel $KVER ready at $(cut -d' ' -f1 /proc/uptime)s"
chroot $R /bin/bash /run/e2e/job.sh </dev/null
rc=$?
say "job exit $rc at $(cut -d' ' -f1 /proc/uptime)s"
echo "$rc" > $R/run/e2e/rc
sync
umount $R/run/e2e-data 2>/dev/null
umount $R/run/e2e 2>/dev/null
umount /mnt/e2e 2>/dev/null
reboot -f
sleep 10
