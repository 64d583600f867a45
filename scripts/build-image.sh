#!/bin/bash
# Builds the plugin image (ublk-csi:dev by default) offline, with no container
# registry: the base image debian:bookworm-slim is made here with debootstrap
# from the apt mirror this machine is configured with and imported into podman
# (once; later runs reuse it), then `podman build --pull=never` builds the
# Dockerfile. Ends with scripts/packaging/smoke-image.sh (--version, /healthz,
# /readyz, /metrics, clean SIGTERM).
#
#   scripts/build-image.sh [--tag NAME:TAG] [--git-ref REF] [--rebuild-base] [--no-cache]
#                          [--binaries DIR]
#
# --binaries DIR: no compile in the image: the Dockerfile's runtime stage plus
# DIR/csi/ublk-csi and DIR/csi/ublk-csi-ctl of a build made on this (Debian
# bookworm) machine, stripped; the same checks and smoke test. The e2e
# Kubernetes harness uses it so that CI compiles the plugin once.
# --no-cache rebuilds every layer (with --rebuild-base: a fully cold build).
# The build context is the working tree (what you have, committed or not);
# --git-ref REF builds the sources of a commit instead (git archive).
# The image is also tagged NAME:<project version> (the chart's appVersion).
#
# Env: MIRROR overrides the apt mirror; BASE_IMAGE the base tag
# (debian:bookworm-slim). Needs root (apt, debootstrap, podman storage).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=ublk-csi:dev
GIT_REF=
REBUILD_BASE=0
BINARIES=
NO_CACHE=()
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG=$2; shift 2 ;;
    --tag=*) TAG=${1#--tag=}; shift ;;
    --git-ref) GIT_REF=$2; shift 2 ;;
    --git-ref=*) GIT_REF=${1#--git-ref=}; shift ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --no-cache) NO_CACHE=(--no-cache); shift ;;
    --binaries) BINARIES=$2; shift 2 ;;
    --binaries=*) BINARIES=${1#--binaries=}; shift ;;
    *) echo "build-image: unknown argument '$1' (expected --tag NAME:TAG, --git-ref REF, --rebuild-base, --no-cache, --binaries DIR)" >&2; exit 2 ;;
  esac
done

log() { echo "build-image: $*" >&2; }
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

# podman and debootstrap from Debian, only if missing.
need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian mirror apt uses here: the first URI that serves a plain
# "bookworm" suite, from deb822 .sources files or one-line sources.list.
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas are blank-line separated; keep URIs of stanzas whose
    # Suites field contains the word bookworm.
    awk 'BEGIN{RS=""; FS="\n"}
         { uri=""; ok=0
           for (i=1;i<=NF;i++) {
             if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uri=u[1] }
             if ($i ~ /^Suites:/) { n=split($i, s, /[ \t]+/); for (j=2;j<=n;j++) if (s[j]=="bookworm") ok=1 }
           }
           if (ok && uri!="") { print uri; exit } }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1=="deb" { i=2; if ($2 ~ /^\[/) { while (i<=NF && $i !~ /\]$/) i++; i++ }
                     if ($(i+1)=="bookworm") { print $i; exit } }' "$f"
  done
}
MIRROR=${MIRROR:-$(find_mirror | head -n1)}
[ -n "$MIRROR" ] || { log "no apt mirror serving 'bookworm' found in /etc/apt/sources.list{,.d}; set MIRROR=URL"; exit 1; }

SECONDS=0
if [ "$REBUILD_BASE" = 1 ] || ! podman image exists "$BASE_IMAGE"; then
  log "creating $BASE_IMAGE with debootstrap --variant=minbase bookworm from $MIRROR"
  ROOTFS=$(mktemp -d /var/tmp/ublk-csi-rootfs.XXXXXX)
  trap '$SUDO rm -rf "$ROOTFS"' EXIT
  $SUDO debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    log "debootstrap failed; last lines of $ROOTFS.log:"; tail -n 20 "$ROOTFS.log" >&2; exit 1; }
  rm -f "$ROOTFS.log"
  # Slim it like the registry image: no apt lists, caches, docs or man pages.
  $SUDO rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
  $SUDO tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  $SUDO rm -rf "$ROOTFS"; trap - EXIT
  log "base image ready after ${SECONDS}s"
else
  log "reusing $BASE_IMAGE (pass --rebuild-base to make it again)"
fi

CONTEXT=.
if [ -n "$GIT_REF" ]; then
  CONTEXT=$(mktemp -d /var/tmp/ublk-csi-context.XXXXXX)
  trap 'rm -rf "$CONTEXT"' EXIT
  git archive --format=tar "$GIT_REF" | tar -C "$CONTEXT" -x
  log "building the sources of $GIT_REF ($(git rev-parse --short "$GIT_REF"))"
fi
VERSION=$(sed -n 's/^project(ublk_csi VERSION \([0-9.]*\).*/\1/p' "$CONTEXT/CMakeLists.txt")
[ -n "$VERSION" ] || { log "no project version in $CONTEXT/CMakeLists.txt"; exit 1; }

# --isolation=chroot: RUN steps need no OCI runtime or cgroup setup, which this
# machine's cgroup limits refuse.
build_start=$SECONDS
if [ -n "$BINARIES" ]; then
  [ -z "$GIT_REF" ] || { log "--binaries and --git-ref exclude each other"; exit 2; }
  for b in ublk-csi ublk-csi-ctl; do
    [ -x "$BINARIES/csi/$b" ] || { log "--binaries $BINARIES: no executable $BINARIES/csi/$b"; exit 2; }
  done
  BIN_CONTEXT=$(mktemp -d /var/tmp/ublk-csi-bin.XXXXXX)
  trap 'rm -rf "$BIN_CONTEXT"' EXIT
  install -D -s -m 0755 "$BINARIES/csi/ublk-csi" "$BIN_CONTEXT/usr/local/bin/ublk-csi"
  install -D -s -m 0755 "$BINARIES/csi/ublk-csi-ctl" "$BIN_CONTEXT/usr/local/bin/ublk-csi-ctl"
  podman build --pull=never --isolation=chroot "${NO_CACHE[@]}" --build-arg "BASE=$BASE_IMAGE" \
    --target runtime -t ublk-csi-runtime:latest -f "$CONTEXT/Dockerfile" "$CONTEXT" >/dev/null \
    || { log "building the runtime stage failed"; exit 1; }
  # The final stage of the Dockerfile, with the binaries from outside.
  printf '%s\n' 'FROM localhost/ublk-csi-runtime:latest' 'COPY usr/ /usr/' \
    'RUN /usr/local/libexec/ublk-csi/image-check' \
    'LABEL org.opencontainers.image.title="ublk-csi" org.opencontainers.image.description="Kubernetes CSI plugin serving node-local volumes as ublk block devices"' \
    'ENTRYPOINT ["/usr/local/bin/ublk-csi"]' > "$BIN_CONTEXT/Containerfile"
  podman build --pull=never --isolation=chroot -t "$TAG" -t "${TAG%:*}:$VERSION" \
    -f "$BIN_CONTEXT/Containerfile" "$BIN_CONTEXT" >/dev/null || { log "building the image of $BINARIES failed"; exit 1; }
  log "image $TAG (${TAG%:*}:$VERSION) of the binaries in $BINARIES built in $((SECONDS - build_start))s"
  podman image prune -f --filter label=org.opencontainers.image.title=ublk-csi >/dev/null
else
  # Each output line is prefixed with the seconds since this script started, so
  # the log shows what each step costs.
  BUILD_LOG=$(mktemp /var/tmp/ublk-csi-build.XXXXXX.log)
  podman build --pull=never --isolation=chroot "${NO_CACHE[@]}" --build-arg "BASE=$BASE_IMAGE" \
    -t "$TAG" -t "${TAG%:*}:$VERSION" -f "$CONTEXT/Dockerfile" "$CONTEXT" 2>&1 |
    while IFS= read -r line; do printf '[%4ds] %s\n' "$SECONDS" "$line"; done | tee "$BUILD_LOG"
  log "image $TAG (${TAG%:*}:$VERSION) built in $((SECONDS - build_start))s"

  # Disk hygiene: each build leaves the previous final image and its ~1 GB build
  # stage untagged. Tag this build's build stage (the last layer id podman
  # printed before the final stage) so it stays as the layer cache, then drop
  # untagged leftovers of both stages.
  # The final stage is the last one: "[N/N] STEP 1/".
  build_stage=$(awk '/\] --> [0-9a-f]+$/ {id=$NF}
    match($0, /\] \[[0-9]+\/[0-9]+\] STEP 1\//) { split(substr($0, RSTART + 3), a, /[\/\]]/); if (a[1] == a[2]) {print id; exit} }' "$BUILD_LOG")
  rm -f "$BUILD_LOG"
  if [ -n "$build_stage" ]; then
    podman tag "$build_stage" "${TAG%:*}-build-cache:latest"
    podman image prune -f --filter label=org.ublk-csi.stage=build >/dev/null
  fi
  podman image prune -f --filter label=org.opencontainers.image.title=ublk-csi >/dev/null
fi

# Smoke test: the image's plugin answers --version, starts, serves its
# health and metrics endpoints and shuts down cleanly.
scripts/packaging/smoke-image.sh "$TAG"
size=$(podman image inspect --format '{{.Size}}' "$TAG")
log "image $TAG: $((size / 1024 / 1024)) MiB; total ${SECONDS}s"
