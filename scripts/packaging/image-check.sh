#!/bin/sh
# Run while building the plugin image (Dockerfile, and build-image.sh
# --binaries): fails the build, not a node, when a runtime library of the
# binaries or a program the plugin runs is missing.
set -e
if ldd /usr/local/bin/ublk-csi /usr/local/bin/ublk-csi-ctl | grep 'not found'; then
  echo "runtime library missing from the image (see above)" >&2
  exit 1
fi
for p in mkfs.ext4 mkfs.xfs resize2fs xfs_growfs mount umount blkid modprobe; do
  command -v "$p" >/dev/null || { echo "program $p missing from the image" >&2; exit 1; }
done
