#!/bin/bash
# Host-side step of the csi-sanity scenario ("# e2e-prepare:", see
# e2e_prepare in host.sh): finds the csi-sanity binary, puts it where the
# guest sees it (under the work dir, which defaults to the build dir) and
# writes `export CSI_SANITY=...` to SHARE/env. The binary is a test tool: it
# is never part of the project's tree.
#
# usage: prepare-csi-sanity.sh SHARE   (E2E_SRC_DIR, E2E_WORK_DIR set)
#   CSI_SANITY=/path/to/csi-sanity     use this binary (copied to the work dir)
#   CSI_SANITY_TARBALL=FILE            else unpack bin/csi-sanity from FILE;
#       default: csi-sanity-v5.4.0-linux-amd64.tar.xz in ../shared/k8s beside
#       the project root (or beside the main checkout, in a git worktree),
#       checked against the SHA256SUMS next to it when there
#   CSI_SANITY_ACCESS_TYPES, CSI_SANITY_TIMEOUT  passed on to the scenario
# Exit 0: ready; 77: no binary (SKIP, reason in SHARE/skip_reason); 2: a
# binary was named or found but is unusable (FAIL).
set -uo pipefail

share=${1:?usage: prepare-csi-sanity.sh SHARE}
: "${E2E_SRC_DIR:?}" "${E2E_WORK_DIR:?}"
want_version=v5.4.0
tools=$E2E_WORK_DIR/e2e-tools

die() { echo "prepare-csi-sanity: $*" >&2; exit 2; }
skip() { echo "$*" > "$share/skip_reason"; echo "prepare-csi-sanity: SKIP: $*"; exit 77; }

# The guest sees the host's / except its own tmpfs and kernel dirs.
case $tools/ in
  /tmp/*|/run/*|/var/tmp/*|/dev/*|/proc/*|/sys/*)
    die "$tools is hidden in the guest (it has its own /tmp, /run, /var/tmp); set E2E_WORK_DIR elsewhere" ;;
esac
mkdir -p "$tools" || die "cannot create $tools"

if [ -n "${CSI_SANITY:-}" ]; then
  [ -f "$CSI_SANITY" ] && [ -x "$CSI_SANITY" ] || die "CSI_SANITY=$CSI_SANITY is not an executable file"
  dir=$tools/csi-sanity-given
  mkdir -p "$dir" && cp -f "$CSI_SANITY" "$dir/csi-sanity.new" && mv -f "$dir/csi-sanity.new" "$dir/csi-sanity" \
    || die "cannot copy $CSI_SANITY to $dir"
  bin=$dir/csi-sanity
else
  name=csi-sanity-$want_version-linux-amd64.tar.xz
  tarball=${CSI_SANITY_TARBALL:-}
  if [ -z "$tarball" ]; then
    # Beside the project root; in a git worktree also beside the main checkout.
    tarball=$E2E_SRC_DIR/../shared/k8s/$name
    if [ ! -f "$tarball" ] && common=$(git -C "$E2E_SRC_DIR" rev-parse --path-format=absolute --git-common-dir 2>/dev/null); then
      [ -f "$(dirname "$common")/../shared/k8s/$name" ] && tarball=$(dirname "$common")/../shared/k8s/$name
    fi
  fi
  [ -f "$tarball" ] || skip "no csi-sanity: set CSI_SANITY=/path/to/csi-sanity or CSI_SANITY_TARBALL=FILE ($tarball does not exist)"
  tarball=$(realpath "$tarball")
  sums=$(dirname "$tarball")/SHA256SUMS
  if [ -f "$sums" ] && grep -q " $(basename "$tarball")\$" "$sums"; then
    (cd "$(dirname "$tarball")" && grep " $(basename "$tarball")\$" SHA256SUMS | sha256sum -c --quiet -) \
      || die "$tarball does not match its line in $sums"
  fi
  sum=$(sha256sum "$tarball" | cut -c1-16)
  dir=$tools/csi-sanity-$sum
  # Two kernels' runs may prepare at once (E2E_PARALLEL): unpack under a lock,
  # once per tarball content.
  exec 9> "$tools/.lock"
  flock 9
  if [ ! -x "$dir/bin/csi-sanity" ]; then
    tmp=$(mktemp -d "$tools/unpack.XXXXXX") || die "mktemp in $tools"
    tar -xJf "$tarball" -C "$tmp" bin/csi-sanity || { rm -rf "$tmp"; die "tar -xJf $tarball bin/csi-sanity failed"; }
    rm -rf "$dir" && mv "$tmp" "$dir" || die "cannot move the unpacked tool to $dir"
    # Only the current tarball's copy is kept.
    find "$tools" -maxdepth 1 -name 'csi-sanity-*' ! -path "$dir" ! -name csi-sanity-given -exec rm -rf {} +
    echo "prepare-csi-sanity: unpacked $tarball into $dir"
  fi
  flock -u 9
  bin=$dir/bin/csi-sanity
fi

version=$("$bin" -version 2>&1 | sed -n 's/^Version = //p')
[ -n "$version" ] || die "$bin -version printed no version: is it csi-sanity?"
[ "$version" = "$want_version" ] || echo "prepare-csi-sanity: note: $bin is $version, the scenario was written for $want_version"
{
  printf 'export CSI_SANITY=%q CSI_SANITY_VERSION=%q\n' "$bin" "$version"
  # The host's environment does not reach the guest: pass the scenario's knobs.
  [ -n "${CSI_SANITY_ACCESS_TYPES:-}" ] && printf 'export CSI_SANITY_ACCESS_TYPES=%q\n' "$CSI_SANITY_ACCESS_TYPES"
  [ -n "${CSI_SANITY_TIMEOUT:-}" ] && printf 'export CSI_SANITY_TIMEOUT=%q\n' "$CSI_SANITY_TIMEOUT"
} > "$share/env"
echo "prepare-csi-sanity: CSI_SANITY=$bin ($version)"
