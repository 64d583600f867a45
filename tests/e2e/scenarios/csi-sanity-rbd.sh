# csi-sanity-rbd (on demand, issue 21): the CSI conformance suite against
# the RBD backend: scenarios/csi-sanity.sh in its RBD mode (see there), the
# plugin with --rbd on the single-node Ceph of lib/ceph.sh, the suite with
# the StorageClass parameters and the cephx key as request secrets. Same
# bar as for file volumes: 0 failed specs, the plugin alive, nothing left
# (volumes, devices, mounts, data-dir files, images in the pool).
# e2e-timeout: 1500
# e2e-disk: 8G
# e2e-requires: csi/ublk-csi csi/ublk-csi-ctl
# e2e-prepare: lib/prepare-csi-sanity.sh
export CSI_SANITY_RBD=1
CEPH_OSD_SIZE=${CEPH_OSD_SIZE:-6G}
. "$SRC_DIR/tests/e2e/scenarios/csi-sanity.sh"
