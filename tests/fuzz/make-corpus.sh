#!/bin/bash
# Regenerates the seed corpora in tests/fuzz/corpus from the text-format
# messages below (protoc --encode): valid records in every state, one
# request of each CSI type, mountinfo lines and sizes. The fuzzers start from
# these; `make fuzz` never writes into corpus/.
set -euo pipefail
cd "$(dirname "$0")"
proto=../../proto
c=corpus
rm -rf "$c"
mkdir -p "$c/record" "$c/request" "$c/mountinfo" "$c/size"

# enc FILE PREFIX_BYTE MESSAGE TEXT: PREFIX_BYTE (octal) then the encoded message.
enc() {
  local out=$1 prefix=$2 type=$3 text=$4
  # shellcheck disable=SC2059  # the format is the one escape "\NNN"
  { printf "\\$prefix"; printf '%s' "$text" |
      protoc -I"$proto" -I/usr/include --encode="$type" records.proto csi.proto; } >"$out"
}

V=ublk_csi.records.VolumeRecord
S=ublk_csi.records.SnapshotRecord
enc "$c/record/volume-ready" 000 $V 'schema_version: 1 volume_id: "vol-1" name: "pvc-1" state: READY capacity_bytes: 1048576 access_type: MOUNT fs_type: "ext4" backing_file: "volumes/vol-1.img" dev_id: 3 filesystem_created: true staged_path: "/stage/vol-1"'
enc "$c/record/volume-creating" 000 $V 'schema_version: 1 volume_id: "vol-2" name: "pvc-2" state: CREATING capacity_bytes: 1048576 access_type: BLOCK backing_file: "volumes/vol-2.img"'
enc "$c/record/volume-deleting" 000 $V 'schema_version: 1 volume_id: "vol-3" state: DELETING backing_file: "volumes/vol-3.img"'
enc "$c/record/volume-clone" 000 $V 'schema_version: 1 volume_id: "vol-4" name: "c" state: READY capacity_bytes: 4096 source_volume_id: "vol-1" backing_file: "volumes/vol-4.img" mount_flags: "noatime"'
enc "$c/record/snapshot-ready" 001 $S 'schema_version: 1 snapshot_id: "snap-1" name: "s" source_volume_id: "vol-1" size_bytes: 1048576 ready_to_use: true file: "snapshots/snap-1.img"'
enc "$c/record/snapshot-pending" 001 $S 'schema_version: 1 snapshot_id: "snap-2" source_volume_id: "vol-1" ready_to_use: false file: "snapshots/snap-2.img"'

CAP='volume_capabilities { mount { fs_type: "ext4" } access_mode { mode: SINGLE_NODE_WRITER } }'
CAP1='volume_capability { mount { fs_type: "ext4" mount_flags: "noatime" } access_mode { mode: SINGLE_NODE_WRITER } }'
BCAP1='volume_capability { block {} access_mode { mode: SINGLE_NODE_WRITER } }'
req() { enc "$c/request/$1" "$2" "csi.v1.$3" "$4"; }
req create 000 CreateVolumeRequest "name: \"pvc-a\" capacity_range { required_bytes: 1048576 } $CAP parameters { key: \"k\" value: \"v\" }"
req create-from-snapshot 000 CreateVolumeRequest "name: \"pvc-b\" $CAP volume_content_source { snapshot { snapshot_id: \"@snap\" } }"
req create-clone 000 CreateVolumeRequest "name: \"pvc-c\" $CAP volume_content_source { volume { volume_id: \"@vol\" } }"
req delete 001 DeleteVolumeRequest 'volume_id: "@vol"'
req validate 002 ValidateVolumeCapabilitiesRequest "volume_id: \"@vol\" $CAP"
req list 003 ListVolumesRequest 'max_entries: 1 starting_token: "0"'
req capacity 004 GetCapacityRequest "$CAP accessible_topology { segments { key: \"topology.ublk.csi.io/node\" value: \"fuzz-node\" } }"
req expand 005 ControllerExpandVolumeRequest 'volume_id: "@vol" capacity_range { required_bytes: 2097152 }'
req snapshot 006 CreateSnapshotRequest 'name: "snap-a" source_volume_id: "@vol"'
req delete-snapshot 007 DeleteSnapshotRequest 'snapshot_id: "@snap"'
req list-snapshots 010 ListSnapshotsRequest 'source_volume_id: "@vol" max_entries: 2'
req stage 011 NodeStageVolumeRequest "volume_id: \"@vol\" staging_target_path: \"/stage2\" $CAP1"
req unstage 012 NodeUnstageVolumeRequest 'volume_id: "@vol" staging_target_path: "/stage"'
req publish 013 NodePublishVolumeRequest "volume_id: \"@vol\" staging_target_path: \"/stage\" target_path: \"/pods/p1/vol\" readonly: true $CAP1"
req publish-block 013 NodePublishVolumeRequest "volume_id: \"@vol\" staging_target_path: \"/stage\" target_path: \"/pods/p2/dev\" $BCAP1"
req unpublish 014 NodeUnpublishVolumeRequest 'volume_id: "@vol" target_path: "/pods/p1/vol"'
req stats 015 NodeGetVolumeStatsRequest 'volume_id: "@vol" volume_path: "/stage"'
req node-expand 016 NodeExpandVolumeRequest 'volume_id: "@vol" volume_path: "/stage" capacity_range { required_bytes: 2097152 }'
printf '\017' >"$c/request/status"

printf '%s\n' '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw' \
  '36 22 259:0 / /var/lib/kubelet/plugins/x/globalmount rw,noatime - xfs /dev/ublkb0 rw,attr2' \
  '37 36 259:0 /sub /pods/a\040b ro,nosuid master:2 - xfs /dev/ublkb0 rw' >"$c/mountinfo/proc-self"
printf '%s\n' '1 0 0:5 / /dev\134x rw - devtmpfs udev rw' >"$c/mountinfo/escapes"

for s in 1Gi 512Mi 4096 10G 1Ti 0 " 7k "; do printf '%s' "$s" >"$c/size/$(printf '%s' "$s" | tr -d ' ')"; done
echo "corpus: $(find "$c" -type f | wc -l) seed files"
